// The checks of test_dc_logic.py's alerts test, run by Node.js next to the bundled module.
import assert from "node:assert/strict";
import { activeAlerts, volumeHealth } from "./alerts.js";

const up = (node, disk = "UpToDate", cstate = "Connected") => ({ node, own: true, role: "Secondary", disk, cstate });
const vol = (name, copies, extra = {}) => ({ name, size: 1, copies, statuses: {}, sync: null,
  splitBrain: null, verify: null, ...extra });
const healthy = vol("vm-100-disk-0", [up("n1"), up("n2")]);
const syncing = vol("vm-101-disk-0", [up("n1"), up("n2", "Inconsistent", "SyncTarget")],
  { sync: { from: "n1", to: "n2", progress: { done: 42.4 }, paused: false } });
const degraded = vol("vm-102-disk-0", [up("n1", "UpToDate", "StandAlone"), { node: "n2", own: false, role: "Unknown", disk: "DUnknown" }]);
const split = vol("vm-103-disk-0", [up("n1", "UpToDate", "StandAlone"), up("n2", "UpToDate", "StandAlone")],
  { splitBrain: { state: "detected", time: 1 } });
// a split brain already resolved (both connected again) is no alert
const resolved = vol("vm-104-disk-0", [up("n1"), up("n2")], { splitBrain: { state: "detected", time: 1 } });

const none = activeAlerts({ quorate: true, nodes: [{ node: "n1", status: "online" }], ha: [], volumes: [healthy, resolved] });
assert.deepEqual(none, []);
// quorum unknown (not loaded, or not readable): no alert
assert.deepEqual(activeAlerts({ nodes: [], ha: [], volumes: null }), []);

const all = activeAlerts({
  quorate: false,
  nodes: [{ node: "n1", status: "online" }, { node: "n2", status: "offline" }],
  ha: [
    { type: "quorum", id: "quorum", status: "OK" },
    { type: "master", id: "master", node: "n1", disarm: "freeze" },
    { type: "lrm", id: "lrm:n1", node: "n1", state: "active", mode: "active" },
    { type: "lrm", id: "lrm:n2", node: "n2", state: "maintenance" },
    { type: "service", id: "service:vm:100", sid: "vm:100", node: "n2", state: "recovery" },
    { type: "service", id: "service:vm:101", sid: "vm:101", node: "n1", state: "started" },
  ],
  volumes: [healthy, syncing, degraded, split],
});
assert.deepEqual(all.map((a) => [a.id, a.level, a.key]), [
  ["quorum", "bad", "alert.noquorum"],
  ["node:n2", "bad", "alert.node.offline"],
  ["ha:disarmed", "warn", "alert.ha.disarmed"],
  ["maint:n2", "warn", "alert.node.maintenance"],
  ["ha:vm:100", "bad", "alert.ha.service"],
  ["vol:vm-101-disk-0", "warn", "alert.vol.resync"],
  ["vol:vm-102-disk-0", "bad", "alert.vol.degraded"],
  ["vol:vm-103-disk-0", "bad", "alert.vol.splitbrain"],
]);
assert.deepEqual(all[1].args, { node: "n2", status: "offline" });
assert.deepEqual(all[4].args, { sid: "vm:100", state: "recovery", node: "n2" });
assert.deepEqual(all[5].args, { name: "vm-101-disk-0", to: "n2", done: 42 });
assert.deepEqual(all[6].args, { name: "vm-102-disk-0", node: "n2", disk: "DUnknown" });

assert.deepEqual(volumeHealth([healthy, syncing, degraded, split, resolved]),
  { total: 5, healthy: 2, syncing: 1, bad: 2 });
assert.deepEqual(volumeHealth([]), { total: 0, healthy: 0, syncing: 0, bad: 0 });
console.log("ok");
