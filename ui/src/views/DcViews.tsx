// The datacenter's other pages: the cluster log (/cluster/log), high availability
// (status, resources with add and remove, groups: /cluster/ha/...) and the storage
// definitions (/storage). Each polls what it shows.
import { useState } from "preact/hooks";
import { ApiError, request, post } from "../api";
import { href, type DcView } from "../route";
import { usePoll } from "../poll";
import { t } from "../strings";
import * as fmt from "../format";
import type { HaStatusEntry, Resource } from "../types";
import { Dialog } from "./Confirm";
import { usePerms } from "./access/perms";

const TABS: (DcView | "summary")[] = ["summary", "log", "ha", "storage", "backup", "notifications"];

/** The datacenter's tab bar (summary, log, HA, storage). */
export function DcTabs(props: { current: DcView | "summary" | "access" }) {
  return (
    <nav class="tabs" role="tablist" aria-label={t("dc.summary")}>
      {TABS.map((v) => (
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

interface HaResource { sid: string; state: string; group?: string; max_restart?: number; max_relocate?: number; comment?: string }
interface HaGroup { group: string; nodes: string; restricted?: number; nofailback?: number }

export function HaView(props: { resources: Resource[] }) {
  const status = usePoll<HaStatusEntry[]>("/cluster/ha/status/current", 2000);
  const res = usePoll<HaResource[]>("/cluster/ha/resources", 2000);
  const groups = usePoll<HaGroup[]>("/cluster/ha/groups", 5000);
  const [adding, setAdding] = useState(false);
  const [addVm, setAddVm] = useState("");
  const [addState, setAddState] = useState("started");
  const [addGroup, setAddGroup] = useState("");
  const [removing, setRemoving] = useState<string | null>(null);
  const [message, setMessage] = useState<{ text: string; error: boolean } | null>(null);
  const [errors, setErrors] = useState<Record<string, string>>({});
  const can = usePerms();
  const write = can("/", "Sys.Console", "HA.Modify");
  const managed = new Set((res.data ?? []).map((r) => r.sid));
  const candidates = props.resources.filter((r) => r.type === "qemu" && !managed.has(`vm:${r.vmid}`))
    .sort((a, b) => (a.vmid ?? 0) - (b.vmid ?? 0));

  const fail = (e: unknown) => {
    const err = e as ApiError;
    setErrors(err.errors ?? {});
    setMessage({ text: t("common.error", { message: err.message }), error: true });
  };
  const add = async () => {
    try {
      await post("/cluster/ha/resources", { sid: `vm:${addVm}`, state: addState,
                                           group: addGroup || undefined });
      setAdding(false);
      setErrors({});
      setMessage({ text: t("ha.added", { sid: `vm:${addVm}` }), error: false });
      res.refresh();
    } catch (e) { fail(e); }
  };
  const remove = async () => {
    const sid = removing;
    setRemoving(null);
    if (!sid) return;
    try {
      await request("DELETE", `/cluster/ha/resources/${encodeURIComponent(sid)}`);
      setMessage({ text: t("ha.removed", { sid }), error: false });
      res.refresh();
    } catch (e) { fail(e); }
  };

  return (
    <div class="view" id="view-dc-ha">
      <DcTabs current="ha" />
      {message && <p class={message.error ? "error" : "notice"} role="status" id="ha-message">{message.text}</p>}
      <section class="card">
        <h2>{t("ha.status")}</h2>
        <ul id="ha-status-list">
          {(status.data ?? []).map((e) => <li key={e.id} data-type={e.type}>{e.status}</li>)}
        </ul>
      </section>
      <section>
        <h2>{t("ha.resources")}</h2>
        <div class="toolbar">
          {write && <button id="ha-add" onClick={() => {
            setAddVm(String(candidates[0]?.vmid ?? "")); setErrors({}); setAdding(true);
          }}>{t("ha.add")}</button>}
        </div>
        <div class="table-wrap">
          <table id="ha-resource-table">
            <thead><tr><th>{t("ha.sid")}</th><th>{t("ha.state")}</th><th>{t("ha.group")}</th>
              <th>{t("ha.maxrestart")}</th><th>{t("ha.maxrelocate")}</th><th /></tr></thead>
            <tbody>
              {(res.data ?? []).map((r) => (
                <tr key={r.sid} data-sid={r.sid}>
                  <td>{r.sid}</td><td>{r.state}</td><td>{r.group ?? ""}</td>
                  <td>{r.max_restart}</td><td>{r.max_relocate}</td>
                  <td>{write && <button class="ha-remove" onClick={() => setRemoving(r.sid)}>{t("ha.remove")}</button>}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>
      <section>
        <h2>{t("ha.groups")}</h2>
        <div class="table-wrap">
          <table id="ha-group-table">
            <thead><tr><th>{t("ha.group")}</th><th>{t("ha.nodes")}</th>
              <th>{t("ha.restricted")}</th><th>{t("ha.nofailback")}</th></tr></thead>
            <tbody>
              {(groups.data ?? []).map((g) => (
                <tr key={g.group}><td>{g.group}</td><td>{g.nodes}</td>
                  <td>{g.restricted ? "✓" : ""}</td><td>{g.nofailback ? "✓" : ""}</td></tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>
      {adding && (
        <Dialog title={t("ha.add")} okLabel={t("ha.add")} okDisabled={!addVm}
          onOk={add} onCancel={() => setAdding(false)}>
          <label>{t("ha.vm")}
            <select id="ha-add-vm" value={addVm} onChange={(e) => setAddVm(e.currentTarget.value)}>
              {candidates.map((v) => <option key={v.vmid} value={v.vmid}>{v.vmid} ({v.name})</option>)}
            </select>
            {errors.sid && <span class="error">{errors.sid}</span>}
          </label>
          <label>{t("ha.state")}
            <select id="ha-add-state" value={addState} onChange={(e) => setAddState(e.currentTarget.value)}>
              {["started", "stopped", "disabled", "ignored"].map((s) => <option key={s} value={s}>{s}</option>)}
            </select>
            {errors.state && <span class="error">{errors.state}</span>}
          </label>
          <label>{t("ha.group")}
            <select value={addGroup} onChange={(e) => setAddGroup(e.currentTarget.value)}>
              <option value="">{t("common.none")}</option>
              {(groups.data ?? []).map((g) => <option key={g.group} value={g.group}>{g.group}</option>)}
            </select>
            {errors.group && <span class="error">{errors.group}</span>}
          </label>
        </Dialog>
      )}
      {removing && (
        <Dialog title={t("ha.remove")} danger onOk={remove} onCancel={() => setRemoving(null)}>
          <p>{t("ha.confirm.remove", { sid: removing })}</p>
        </Dialog>
      )}
    </div>
  );
}

interface StorageDef { storage: string; type: string; content?: string; path?: string; shared?: number; nodes?: string; disable?: number }

export function StorageList() {
  const { data, error } = usePoll<StorageDef[]>("/storage", 5000);
  return (
    <div class="view" id="view-dc-storage">
      <DcTabs current="storage" />
      {error && <p class="error">{t("common.error", { message: error.message })}</p>}
      <div class="table-wrap">
        <table id="dc-storage-table">
          <thead><tr><th>{t("col.name")}</th><th>{t("storage.type")}</th><th>{t("storage.content")}</th>
            <th>{t("storage.path")}</th><th>{t("storage.shared")}</th><th>{t("storage.nodes")}</th>
            <th>{t("storage.enabled")}</th></tr></thead>
          <tbody>
            {(data ?? []).map((s) => (
              <tr key={s.storage} data-storage={s.storage}>
                <td>{s.storage}</td><td>{s.type}</td><td>{s.content}</td><td>{s.path ?? ""}</td>
                <td>{s.shared ? "✓" : ""}</td><td>{s.nodes ?? t("storage.allnodes")}</td>
                <td>{s.disable ? "" : "✓"}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </div>
  );
}
