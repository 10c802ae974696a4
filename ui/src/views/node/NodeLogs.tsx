// A node's Syslog tab (PVE's GET /nodes/{node}/syslog, paged with start/limit and its
// `total`, since/until, one service or both; a live follow through GET
// /nodes/{node}/journal and its cursors, as `binome log --follow` does) and its Tasks
// tab (GET /nodes/{node}/tasks, paged), which a VM's task history reuses (vmid). Both
// are read by the API on that node; the search filter applies to the lines shown.
import { useEffect, useState } from "preact/hooks";
import { ApiError, get, getPage, type Page } from "../../api";
import { usePoll } from "../../poll";
import { t } from "../../strings";
import * as fmt from "../../format";
import type { Task } from "../../types";
import { TaskViewer } from "../forms";
import { appendLines, lastPage, matches, pageCount, parseJournal, syslogParams,
  type SyslogForm } from "./syslog";

const path = (node: string, rest: string) => `/nodes/${encodeURIComponent(node)}/${rest}`;
const SIZES = [50, 100, 500];
const FOLLOW_MAX = 2000;          // lines kept while following
const FOLLOW_MS = 1000;

interface SyslogLine { n: number; t: string }

/** A task history table (a node's, or the datacenter's with `withNode`): start (opens
 * the task), end, user, description, status; running and failed rows marked. */
export function TaskTable(props: { tasks: Task[]; loaded: boolean; onOpen: (upid: string) => void;
                                   id?: string; withNode?: boolean }) {
  const { tasks, withNode } = props;
  const columns = withNode ? 6 : 5;
  return (
    <div class="table-wrap">
      <table id={props.id} class="task-history">
        <thead><tr>
          <th>{t("col.start")}</th><th>{t("col.end")}</th>{withNode && <th>{t("col.node")}</th>}
          <th>{t("col.user")}</th><th>{t("col.description")}</th><th>{t("col.status")}</th>
        </tr></thead>
        <tbody>
          {props.loaded && tasks.length === 0 && <tr><td colSpan={columns}>{t("tasks.none")}</td></tr>}
          {tasks.map((task) => (
            <tr key={task.upid} data-upid={task.upid} data-type={task.type}
              class={!task.endtime ? "running" : task.status === "OK" ? "" : "failed"}>
              <td><a href="#" class="task-open" onClick={(e) => { e.preventDefault(); props.onOpen(task.upid); }}>
                {fmt.time(task.starttime)}</a></td>
              <td>{task.endtime ? fmt.time(task.endtime) : ""}</td>
              {withNode && <td>{task.node}</td>}
              <td>{task.user}</td>
              <td>{task.type}{task.id ? ` ${task.id}` : ""}</td>
              <td>{task.endtime ? task.status : t("tasks.running")}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

export function Pager(props: { id: string; page: number; pages: number; onPage: (p: number) => void }) {
  const { page, pages } = props;
  return (
    <span class="pager" id={props.id}>
      <button type="button" class="pager-first" disabled={page <= 0} onClick={() => props.onPage(0)}>{t("pager.first")}</button>
      <button type="button" class="pager-prev" disabled={page <= 0} onClick={() => props.onPage(page - 1)}>{t("pager.prev")}</button>
      <span class="pager-at" aria-live="polite">{t("pager.at", { page: page + 1, pages })}</span>
      <button type="button" class="pager-next" disabled={page >= pages - 1} onClick={() => props.onPage(page + 1)}>{t("pager.next")}</button>
      <button type="button" class="pager-last" disabled={page >= pages - 1} onClick={() => props.onPage(pages - 1)}>{t("pager.last")}</button>
    </span>
  );
}

/** The journal followed live: the last `size` lines, then every new one, until unmounted. */
function useFollow(node: string, size: number, on: boolean): { lines: string[]; error: string | null } {
  const [lines, setLines] = useState<string[]>([]);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    setLines([]);
    setError(null);
    if (!on) return;
    let alive = true;
    let timer: number | undefined;
    let cursor: string | undefined;
    const run = async () => {
      try {
        const answer = await get<string[]>(path(node, "journal"),
          cursor ? { startcursor: cursor } : { lastentries: size });
        if (!alive) return;
        const got = parseJournal(answer);
        cursor = got.last ?? cursor;       // nothing new: the API hands our cursor back
        setLines((shown) => appendLines(shown, got.lines, FOLLOW_MAX));
        setError(null);
      } catch (e) {
        if (alive) setError(e instanceof ApiError ? e.message : String(e));
      }
      if (alive) timer = window.setTimeout(run, FOLLOW_MS);
    };
    run();
    return () => { alive = false; window.clearTimeout(timer); };
  }, [node, size, on]);
  return { lines, error };
}

export function NodeSyslog(props: { node: string }) {
  const [size, setSize] = useState(50);
  const [page, setPage] = useState<number | null>(null);     // null: the newest lines
  const [draft, setDraft] = useState<SyslogForm>({ since: "", until: "", service: "" });
  const [form, setForm] = useState<SyslogForm>(draft);
  const [bad, setBad] = useState<keyof SyslogForm | null>(null);
  const [filter, setFilter] = useState("");
  const [follow, setFollow] = useState(false);
  const checked = syslogParams(page ?? 0, size, form);
  const params = "params" in checked ? checked.params : null;
  const paged = usePoll<Page<SyslogLine[]>>(follow || !params ? null : path(props.node, "syslog"),
    5000, params ?? undefined, getPage);
  const followed = useFollow(props.node, size, follow);
  const total = paged.data?.total;
  // opened on the newest page, once the total is known (PVE's view scrolls to the end)
  useEffect(() => {
    if (page === null && total !== undefined && lastPage(total, size) > 0) setPage(lastPage(total, size));
  }, [page, total, size]);
  const apply = (e: Event) => {
    e.preventDefault();
    const c = syslogParams(0, size, draft);
    setBad("error" in c ? c.error : null);
    if ("error" in c) return;
    setForm(draft);
    setPage(null);
  };
  const all = follow ? followed.lines : (paged.data?.data ?? []).map((l) => l.t);
  const shown = filter ? all.filter((l) => matches(l, filter)) : all;
  const error = follow ? followed.error : paged.error?.message;
  return (
    <section id="node-syslog" aria-label={t("node.tab.syslog")}>
      <form class="toolbar syslog-form" id="syslog-form" onSubmit={apply}>
        <label>{t("node.log.since")}
          <input id="syslog-since" value={draft.since} placeholder="YYYY-MM-DD HH:MM:SS" disabled={follow}
            aria-invalid={bad === "since"} onInput={(e) => setDraft({ ...draft, since: e.currentTarget.value })} /></label>
        <label>{t("node.log.until")}
          <input id="syslog-until" value={draft.until} placeholder="YYYY-MM-DD HH:MM:SS" disabled={follow}
            aria-invalid={bad === "until"} onInput={(e) => setDraft({ ...draft, until: e.currentTarget.value })} /></label>
        <label>{t("node.log.service")}
          <select id="syslog-service" value={draft.service} disabled={follow}
            onChange={(e) => setDraft({ ...draft, service: e.currentTarget.value })}>
            <option value="">{t("node.log.service.all")}</option>
            <option value="binomed">binomed</option>
            <option value="etcd">etcd</option>
          </select></label>
        <label>{t("node.log.size")}
          <select id="syslog-size" value={String(size)}
            onChange={(e) => { setSize(Number(e.currentTarget.value)); setPage(null); }}>
            {SIZES.map((s) => <option key={s} value={String(s)}>{s}</option>)}
          </select></label>
        <button type="submit" id="syslog-apply" disabled={follow}>{t("node.log.apply")}</button>
        <label class="check"><input type="checkbox" id="syslog-follow" checked={follow}
          onChange={(e) => setFollow(e.currentTarget.checked)} />{t("node.log.follow")}</label>
        <label>{t("node.log.filter")}
          <input id="syslog-filter" type="search" value={filter}
            onInput={(e) => setFilter(e.currentTarget.value)} /></label>
      </form>
      {bad && <p class="error" id="syslog-bad">{t("node.log.bad", { field: t(`node.log.${bad}` as "node.log.since") })}</p>}
      {error && <p class="error">{t("common.error", { message: error })}</p>}
      {!follow && <Pager id="syslog-pager" page={page ?? 0} pages={pageCount(total, size)} onPage={setPage} />}
      <p class="help" id="syslog-count">{follow
        ? t("node.log.following", { shown: shown.length, total: all.length })
        : t("node.log.count", { shown: shown.length, total: total ?? 0 })}</p>
      <pre class="task-log syslog" id="syslog-lines" tabIndex={0} data-tabstop="always" role="log"
        aria-label={t("node.tab.syslog")} data-mode={follow ? "follow" : "page"}
        ref={(el) => { if (el && follow) el.scrollTop = el.scrollHeight; }}>
        {shown.join("\n")}</pre>
    </section>
  );
}

/** A node's task list (or one VM's, with `vmid`), paged, newest first; a task opens its log. */
export function TaskHistory(props: { node: string; vmid?: number; id: string }) {
  const [page, setPage] = useState(0);
  const [errors, setErrors] = useState(false);
  const [open, setOpen] = useState<string | null>(null);
  const size = 50;
  const params: Record<string, string | number> = { start: page * size, limit: size, source: "all" };
  if (errors) params.errors = 1;
  if (props.vmid !== undefined) params.vmid = props.vmid;
  const { data, error } = usePoll<Page<Task[]>>(path(props.node, "tasks"), 3000, params, getPage);
  const tasks = data?.data ?? [];
  return (
    <section id={props.id} aria-label={t("node.tab.tasks")}>
      <div class="toolbar">
        <label class="check"><input type="checkbox" class="tasks-errors" checked={errors}
          onChange={(e) => { setErrors(e.currentTarget.checked); setPage(0); }} />{t("node.tasks.errors")}</label>
        <Pager id={`${props.id}-pager`} page={page} pages={pageCount(data?.total, size)} onPage={setPage} />
      </div>
      {error && <p class="error">{t("common.error", { message: error.message })}</p>}
      {open && <TaskViewer key={open} upid={open} onClose={() => setOpen(null)} />}
      <TaskTable tasks={tasks} loaded={!!data} onOpen={setOpen} />
    </section>
  );
}
