// The checks of test_dc_logic.py's task filter test, run by Node.js next to the bundled module.
import assert from "node:assert/strict";
import { NO_FILTER, epoch, mergeTasks, taskQuery } from "./tasks.js";

const nodes = ["n1", "n2"];
// no filter: every node asked for the newest (page+1)*size, the page cut from the merge
assert.deepEqual(taskQuery(NO_FILTER, 0, 50, nodes),
  { nodes, params: { source: "all", start: 0, limit: 50 }, skip: 0 });
assert.deepEqual(taskQuery(NO_FILTER, 2, 50, nodes),
  { nodes, params: { source: "all", start: 0, limit: 150 }, skip: 100 });
// one node: PVE's own paging
assert.deepEqual(taskQuery({ ...NO_FILTER, node: "n2" }, 2, 50, nodes),
  { nodes: ["n2"], params: { source: "all", start: 100, limit: 50 }, skip: 0 });
// the filters as PVE names them
const q = taskQuery({ ...NO_FILTER, node: "n1", type: " qmstart ", user: "admin@pve", vmid: "100",
                      status: "error" }, 0, 50, nodes);
assert.deepEqual(q.params, { source: "all", typefilter: "qmstart", userfilter: "admin@pve", vmid: 100,
                             errors: 1, start: 0, limit: 50 });
assert.equal(taskQuery({ ...NO_FILTER, status: "running" }, 0, 50, ["n1"]).params.source, "active");
assert.equal(taskQuery({ ...NO_FILTER, status: "ok" }, 0, 50, ["n1"]).params.statusfilter, "ok");
// bad fields refused before sending
assert.deepEqual(taskQuery({ ...NO_FILTER, vmid: "x1" }, 0, 50, nodes), { error: "vmid" });
assert.deepEqual(taskQuery({ ...NO_FILTER, vmid: "0" }, 0, 50, nodes), { error: "vmid" });
assert.deepEqual(taskQuery({ ...NO_FILTER, since: "yesterday" }, 0, 50, nodes), { error: "since" });
assert.deepEqual(taskQuery({ ...NO_FILTER, until: "2026-02-30" }, 0, 50, nodes), { error: "until" });
assert.deepEqual(taskQuery({ ...NO_FILTER, since: "2026-12-07 11:00", until: "2026-12-07 10:00" }, 0, 50, nodes),
  { error: "until" });
// since/until: local time as epoch seconds
assert.equal(epoch(""), undefined);
assert.equal(epoch("2026-12-07T10:00"), new Date(2026, 11, 7, 10, 0, 0).getTime() / 1000);
assert.equal(epoch("2026-12-07"), new Date(2026, 11, 7).getTime() / 1000);
assert.equal(epoch("2026-12-07 10:00:61"), null);
const r = taskQuery({ ...NO_FILTER, since: "2026-12-07", until: "2026-12-08" }, 0, 50, ["n1"]);
assert.equal(r.params.until - r.params.since, 86400);

// the merge: newest first across nodes, the page cut, the totals summed
const task = (node, t) => ({ upid: `UPID:${node}:${t}`, starttime: t, node });
const a = { data: [task("n1", 50), task("n1", 30), task("n1", 10)], total: 7 };
const b = { data: [task("n2", 40), task("n2", 20)], total: 2 };
assert.deepEqual(mergeTasks([a, b], 0, 2), { data: [task("n1", 50), task("n2", 40)], total: 9 });
assert.deepEqual(mergeTasks([a, b], 2, 2).data.map((x) => x.starttime), [30, 20]);
assert.deepEqual(mergeTasks([a, b], 4, 2).data.map((x) => x.starttime), [10]);
assert.deepEqual(mergeTasks([{ data: [] }], 0, 50), { data: [], total: 0 });
console.log("ok");
