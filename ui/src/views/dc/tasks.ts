// The pure logic of Datacenter → Tasks (tests/unit/ui runs it under Node.js): the filter
// form checked before anything is sent and turned into the parameters of PVE's GET
// /nodes/{node}/tasks (typefilter, userfilter, vmid, errors, source, since/until as
// epoch seconds), and one page of the whole cluster's tasks merged from every node's
// list (each node asked for its newest (page+1)*size: the page is within them).

/** A date or date-time as the syslog takes it: `YYYY-MM-DD[ HH:MM[:SS]]` (local time). */
const DATE_TIME = /^(\d{4})-(\d{2})-(\d{2})(?: (\d{2}):(\d{2})(?::(\d{2}))?)?$/;

export interface TaskForm {
  node: string; type: string; user: string; vmid: string; status: string; since: string; until: string;
}
export const NO_FILTER: TaskForm = { node: "", type: "", user: "", vmid: "", status: "", since: "", until: "" };

export interface TaskQuery {
  /** the nodes to ask (every node when the form names none) */
  nodes: string[];
  params: Record<string, string | number>;
  /** how many of the merged list to skip (the page's start) */
  skip: number;
}

/** A date-time field as epoch seconds (local time); undefined when empty, null when bad. */
export function epoch(text: string): number | undefined | null {
  const v = text.trim().replace("T", " ");
  if (!v) return undefined;
  const m = DATE_TIME.exec(v);
  if (!m) return null;
  const [y, mo, d, h, mi, s] = m.slice(1).map((x) => Number(x ?? 0));
  const date = new Date(y, mo - 1, d, h, mi, s);
  if (date.getMonth() !== mo - 1 || date.getDate() !== d || h > 23 || mi > 59 || s > 59) return null;
  return Math.floor(date.getTime() / 1000);
}

/** The query of one page (0-based), or the field that is wrong (nothing is sent then). */
export function taskQuery(form: TaskForm, page: number, size: number, allNodes: string[]
): TaskQuery | { error: keyof TaskForm } {
  const params: Record<string, string | number> = { source: "all" };
  if (form.type.trim()) params.typefilter = form.type.trim();
  if (form.user.trim()) params.userfilter = form.user.trim();
  if (form.vmid.trim()) {
    if (!/^\d+$/.test(form.vmid.trim()) || Number(form.vmid) < 1) return { error: "vmid" };
    params.vmid = Number(form.vmid);
  }
  if (form.status === "error") params.errors = 1;
  else if (form.status === "running") params.source = "active";
  else if (form.status === "ok") params.statusfilter = "ok";
  for (const k of ["since", "until"] as const) {
    const v = epoch(form[k]);
    if (v === null) return { error: k };
    if (v !== undefined) params[k] = v;
  }
  if (params.since !== undefined && params.until !== undefined && params.since > params.until) {
    return { error: "until" };
  }
  const nodes = form.node ? [form.node] : allNodes;
  if (nodes.length === 1) return { nodes, params: { ...params, start: page * size, limit: size }, skip: 0 };
  return { nodes, params: { ...params, start: 0, limit: (page + 1) * size }, skip: page * size };
}

export interface ListedTask { upid: string; starttime: number; node?: string }

/** One page from the nodes' answers: newest first, `total` the sum of their totals. */
export function mergeTasks<T extends ListedTask>(answers: { data: T[]; total?: number }[], skip: number,
                                                 size: number): { data: T[]; total: number } {
  const all = answers.flatMap((a) => a.data)
    .sort((a, b) => b.starttime - a.starttime || (a.upid < b.upid ? 1 : a.upid > b.upid ? -1 : 0));
  return { data: all.slice(skip, skip + size),
           total: answers.reduce((n, a) => n + (a.total ?? a.data.length), 0) };
}
