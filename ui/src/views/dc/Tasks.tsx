// Datacenter → Tasks (#/dc/tasks): the cluster's task history with PVE's filters, read
// from every node's GET /nodes/{node}/tasks (or one node's): type, user, VM ID, status
// (OK, errors, running), since/until; paged, newest first; a task opens its log in the
// task viewer. A bad field is said at the form and nothing is sent. A lazy chunk.
import { useState } from "preact/hooks";
import { getPage, type Page, type Params } from "../../api";
import { usePoll } from "../../poll";
import { t } from "../../strings";
import type { Resource, Task } from "../../types";
import { DcTabs } from "../DcViews";
import { TaskViewer } from "../forms";
import { Pager, TaskTable } from "../node/NodeLogs";
import { pageCount } from "../node/syslog";
import { NO_FILTER, mergeTasks, taskQuery, type TaskForm } from "./tasks";

const SIZE = 50;
const STATUSES = ["", "ok", "error", "running"];

/** Every asked node's page, merged (`params.nodes`: the nodes, comma-separated). */
async function readTasks(_path: string, params?: Params): Promise<Page<Task[]>> {
  const { nodes, skip, ...rest } = params ?? {};
  const answers = await Promise.all(String(nodes).split(",").filter(Boolean).map((n) =>
    getPage<Task[]>(`/nodes/${encodeURIComponent(n)}/tasks`, rest)));
  return mergeTasks(answers.map((a) => ({ data: a.data ?? [], total: a.total })), Number(skip), SIZE);
}

export function DcTasks(props: { resources: Resource[] }) {
  const nodes = props.resources.filter((r) => r.type === "node").map((r) => r.node ?? "")
    .filter(Boolean).sort();
  const [draft, setDraft] = useState<TaskForm>(NO_FILTER);
  const [form, setForm] = useState<TaskForm>(NO_FILTER);
  const [bad, setBad] = useState<keyof TaskForm | null>(null);
  const [page, setPage] = useState(0);
  const [open, setOpen] = useState<string | null>(null);
  const query = taskQuery(form, page, SIZE, nodes);
  const ok = "nodes" in query && query.nodes.length > 0;
  const { data, error } = usePoll<Page<Task[]>>(ok ? "dc-tasks" : null, 3000,
    ok ? { ...query.params, nodes: query.nodes.join(","), skip: query.skip } : undefined, readTasks);
  const apply = (e: Event) => {
    e.preventDefault();
    const c = taskQuery(draft, 0, SIZE, nodes);
    setBad("error" in c ? c.error : null);
    if ("error" in c) return;
    setForm(draft);
    setPage(0);
  };
  const field = (k: keyof TaskForm, extra: Record<string, string> = {}) => (
    <label>{t(`dctasks.${k}` as "dctasks.type")}
      <input id={`dctasks-${k}`} value={draft[k]} aria-invalid={bad === k} {...extra}
        onInput={(e) => setDraft({ ...draft, [k]: e.currentTarget.value })} /></label>
  );
  const tasks = data?.data ?? [];
  return (
    <div class="view" id="view-dc-tasks">
      <DcTabs current="tasks" />
      <form class="toolbar syslog-form" id="dctasks-form" onSubmit={apply}>
        <label>{t("dctasks.node")}
          <select id="dctasks-node" value={draft.node}
            onChange={(e) => setDraft({ ...draft, node: e.currentTarget.value })}>
            <option value="">{t("storage.allnodes")}</option>
            {nodes.map((n) => <option key={n} value={n}>{n}</option>)}
          </select></label>
        {field("type", { placeholder: "qmstart" })}
        {field("user", { placeholder: "root@pam" })}
        {field("vmid", { inputMode: "numeric", size: "8" })}
        <label>{t("dctasks.status")}
          <select id="dctasks-status" value={draft.status}
            onChange={(e) => setDraft({ ...draft, status: e.currentTarget.value })}>
            {STATUSES.map((s) => <option key={s} value={s}>{t(`dctasks.status.${s || "all"}` as "dctasks.status.all")}</option>)}
          </select></label>
        {field("since", { placeholder: "YYYY-MM-DD HH:MM" })}
        {field("until", { placeholder: "YYYY-MM-DD HH:MM" })}
        <button type="submit" id="dctasks-apply">{t("dctasks.apply")}</button>
      </form>
      {bad && <p class="error" id="dctasks-bad">{t("dctasks.bad", { field: t(`dctasks.${bad}` as "dctasks.since") })}</p>}
      {error && <p class="error">{t("common.error", { message: error.message })}</p>}
      <div class="toolbar">
        <Pager id="dctasks-pager" page={page} pages={pageCount(data?.total, SIZE)} onPage={setPage} />
        <span class="help" id="dctasks-count">{t("dctasks.count", { total: data?.total ?? 0 })}</span>
      </div>
      {open && <TaskViewer key={open} upid={open} onClose={() => setOpen(null)} />}
      <TaskTable id="dctasks-table" withNode tasks={tasks} loaded={!!data} onOpen={setOpen} />
    </div>
  );
}
