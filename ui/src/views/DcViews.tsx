// The datacenter's tab bar and its small read-only page, the cluster log (/cluster/log),
// polled. The task history (dc/Tasks), the HA, availability and replicated volume pages are lazy chunks (dc/), the
// storage definitions too (storage/).
import { href, type DcView } from "../route";
import { usePoll } from "../poll";
import { t } from "../strings";
import * as fmt from "../format";
import { useKnownPerms } from "./access/perms";

const TABS: (DcView | "summary")[] = ["summary", "log", "tasks", "ha", "availability", "storage", "volumes",
  "backup", "notifications", "acme", "mappings", "options"];

type Perms = NonNullable<ReturnType<typeof useKnownPerms>>;
/** Who may read each page's data (the API's own checks; a page opened anyway says so). */
const NEEDS: Partial<Record<DcView, (p: Perms) => boolean>> = {
  ha: (p) => p.can("/", "Sys.Audit", "HA.Audit"),
  availability: (p) => p.can("/", "Sys.Audit", "HA.Audit"),
  storage: (p) => ["Datastore.Audit", "Datastore.AllocateSpace", "Datastore.Allocate"].some(p.anywhere),
  volumes: (p) => p.can("/", "Volume.Audit"),
  backup: (p) => p.can("/", "Sys.Audit"),
  notifications: (p) => p.can("/mapping/notifications", "Mapping.Modify", "Mapping.Audit", "Mapping.Use"),
  options: (p) => p.can("/", "Sys.Audit"),
};

/** The datacenter's tab bar: the pages the caller may read (all, until that is known). */
export function DcTabs(props: { current: DcView | "summary" | "access" }) {
  const perms = useKnownPerms();
  const shown = TABS.filter((v) => v === "summary" || v === props.current || !perms || (NEEDS[v]?.(perms) ?? true));
  return (
    <nav class="tabs" role="tablist" aria-label={t("dc.summary")}>
      {shown.map((v) => (
        <a key={v} role="tab" id={`dc-tab-${v}`} aria-selected={props.current === v}
          href={v === "summary" ? href({ kind: "dc" }) : href({ kind: "dcview", view: v })}>
          {t(`dc.tab.${v}` as "dc.tab.log")}</a>
      ))}
      <a role="tab" id="dc-tab-access" aria-selected={props.current === "access"}
        href={href({ kind: "access", view: "users" })}>{t("access.title")}</a>
    </nav>
  );
}

interface LogEntry { uid?: number; time: number; node?: string; tag?: string; msg: string; pri?: number; user?: string }

export function ClusterLog() {
  const { data, error } = usePoll<LogEntry[]>("/cluster/log", 3000, { max: 200 });
  return (
    <div class="view" id="view-dc-log">
      <DcTabs current="log" />
      {error && <p class="error">{t("common.error", { message: error.message })}</p>}
      <div class="table-wrap">
        <table id="dc-log-table">
          <thead><tr><th>{t("col.time")}</th><th>{t("col.node")}</th><th>{t("col.tag")}</th>
            <th>{t("col.user")}</th><th>{t("col.message")}</th></tr></thead>
          <tbody>
            {(data ?? []).map((e, i) => (
              <tr key={e.uid ?? i} class={e.pri !== undefined && e.pri <= 3 ? "bad" : ""}>
                <td>{fmt.time(e.time)}</td><td>{e.node}</td><td>{e.tag}</td><td>{e.user}</td><td>{e.msg}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </div>
  );
}
