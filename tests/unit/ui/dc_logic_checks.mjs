// The checks of test_dc_logic.py, run by Node.js next to the bundled modules.
import assert from "node:assert/strict";
import { isConnected, mergeVolumes, needsResolution, resolutionPlan, latestSplitBrain } from "./volumes.js";
import { series, yRange, percentFormat, duration } from "./availability.js";
import { vmDisks, formValues, changedParams } from "./replication.js";

const st = (node, peer, o = {}) => ({ name: "v1", size: 8 << 20, node, peer_node: peer, role: "Secondary",
  peer_role: "Secondary", cstate: "Connected", disk: "UpToDate", peer_disk: "UpToDate",
  out_of_sync_kib: 0, open_count: 0, vmid: 100, ...o });

// in sync: two copies, each its own report
let [v] = mergeVolumes({ n1: [st("n1", "n2", { role: "Primary", peer_role: "Secondary" })],
                         n2: [st("n2", "n1", { role: "Secondary", peer_role: "Primary" })] });
assert.deepEqual(v.copies.map((c) => [c.node, c.own, c.role]), [["n1", true, "Primary"], ["n2", true, "Secondary"]]);
assert.equal(v.sync, null);
assert.equal(v.splitBrain, null);
assert.equal(needsResolution(v), false);

// n2 silent: its copy as n1 reports it, and no resolution without it
[v] = mergeVolumes({ n1: [st("n1", "n2", { role: "Primary", cstate: "StandAlone", peer_role: "Unknown",
  peer_disk: "DUnknown", split_brain: { state: "detected", policy: "p", time: 5 } })] });
assert.deepEqual(v.copies[1], { node: "n2", own: false, role: "Unknown", disk: "DUnknown" });
assert.equal(needsResolution(v), true);
assert.deepEqual(resolutionPlan(v, "n1"), { refused: "offline", nodes: ["n2"] });

// a split brain: both StandAlone, n1 Primary with the guest's disk open
const sb = { state: "detected", policy: "after-sb-1pri disconnect", time: 100, primaries: ["n1"] };
const split = (o1, o2) => mergeVolumes({
  n1: [st("n1", "n2", { role: "Primary", cstate: "StandAlone", peer_role: "Unknown", peer_disk: "DUnknown",
                        out_of_sync_kib: 8, split_brain: sb, ...o1 })],
  n2: [st("n2", "n1", { cstate: "StandAlone", peer_role: "Unknown", peer_disk: "DUnknown",
                        out_of_sync_kib: 12, split_brain: sb, ...o2 })] })[0];
v = split({ open_count: 1 }, {});
assert.equal(needsResolution(v), true);
// keep n1: n2 (Secondary) discards its changes, then n1 connects
assert.deepEqual(resolutionPlan(v, "n1"), { steps: [
  { key: "discard", node: "n2", action: "connect", params: { "discard-my-data": true } },
  { key: "connect", node: "n1", action: "connect", params: {} }] });
// keep n2: n1 is Primary with an open client: refused, nothing is demoted under a guest
assert.deepEqual(resolutionPlan(v, "n2"), { refused: "inuse", node: "n1", count: 1 });
// n1 Primary but closed: demoted first
v = split({}, {});
assert.deepEqual(resolutionPlan(v, "n2").steps.map((s) => [s.key, s.node]),
                 [["secondary", "n1"], ["discard", "n1"], ["connect", "n2"]]);
// the survivor already trying to connect: no connect step for it
v = split({}, { cstate: "Connecting" });
assert.deepEqual(resolutionPlan(v, "n2").steps.map((s) => s.key), ["secondary", "discard"]);
// a record still "detected" while both are connected again: nothing to resolve
v = split({ cstate: "Connected" }, { cstate: "Connected" });
assert.equal(needsResolution(v), false);
// the unresolved record wins over a later resolved one
assert.equal(latestSplitBrain([
  st("n1", "n2", { split_brain: { state: "resolved", policy: "x", time: 1, resolved_time: 900 } }),
  st("n2", "n1", { split_brain: sb })]).state, "detected");

// a resync: from the source's view, n1 -> n2
[v] = mergeVolumes({
  n1: [st("n1", "n2", { cstate: "SyncSource", peer_disk: "Inconsistent",
                        peer: { sync: { source: true, done: 40, left_kib: 60, total_kib: 100 } } })],
  n2: [st("n2", "n1", { cstate: "SyncTarget", disk: "Inconsistent",
                        peer: { sync: { source: false, done: 39, left_kib: 61, total_kib: 100 } } })] });
assert.deepEqual([v.sync.from, v.sync.to, v.sync.progress.done], ["n1", "n2", 40]);

// the last verify: the newest of the nodes' results, with its node
[v] = mergeVolumes({ n1: [st("n1", "n2", { verify: { time: 10, found_blocks: 2 } })],
                     n2: [st("n2", "n1", { verify: { time: 20, found_blocks: 0 } })] });
assert.deepEqual([v.verify.node, v.verify.result.found_blocks], ["n2", 0]);
assert.deepEqual(["Connected", "SyncTarget", "PausedSyncS", "StandAlone", "WFConnection", undefined]
  .map(isConnected), [true, true, true, false, false, false]);

// availability: a day monitored from 00:00, a 36 s outage in hour 1, 10 min planned in hour 2
const rep = { sid: "vm:100", since: 0, until: 86400, monitored: 3 * 3600, planned_downtime: 600,
  downtime: 36, availability: null, class: "", outages: 1, longest: 36, mttr: 36,
  outage_list: [{ start: 3600, end: 3636, duration: 36, cause: "fencing" }],
  planned_list: [{ start: 7200, end: 7800, duration: 600, cause: "admin-stop" }], period: "day", state: "started" };
const s = series(rep, 3600, 3 * 3600);
assert.deepEqual(s.x, [0, 3600, 7200]);
assert.deepEqual(s.bucket, [100, 99, 100]);
assert.equal(s.cumulative[2], 100 * (1 - 36 / (3 * 3600 - 600)));
// only part of the day monitored: the hours before the first record are gaps
const late = series({ ...rep, monitored: 3600, outage_list: [], planned_list: [] }, 3600, 3 * 3600);
assert.deepEqual(late.bucket, [null, null, 100]);
// an ongoing outage ends at the server's now, even if this clock is behind
const ongoing = series({ ...rep, monitored: 4000, outage_list: [{ start: 3900, end: 4000, duration: 100,
  cause: "recovery", ongoing: 1 }], planned_list: [] }, 3600, 3950);
assert.deepEqual(ongoing.x, [0, 3600]);
assert.equal(ongoing.bucket[1], 100 * (1 - 100 / 400));
// the axis reaches down to the target, the labels have the decimals to tell values apart
assert.deepEqual(yRange([100, 100], 99.9).map((x) => +x.toFixed(2)), [99.87, 100.01]);
assert.equal(percentFormat(yRange([99.99], undefined))(99.995), "99.9950 %");
assert.equal(duration(8.7), "8.7 s");
assert.equal(duration(2678), "44 min 38 s");

// a VM's disks: CD-ROMs, empty drives and other keys left out, the volume after the colon
assert.deepEqual(vmDisks({ name: "x", virtio0: "repl:vm-100-disk-0,size=8M", ide2: "local:iso/a.iso,media=cdrom",
  scsi1: "local:100/vm-100-disk-1.qcow2,size=1G", sata0: "none,media=cdrom", unused0: "repl:vm-100-disk-2",
  net0: "virtio=AA:BB:CC:DD:EE:FF,bridge=vmbr0", efidisk0: "local:100/vm-100-disk-3.raw,efitype=4m" }), [
  { key: "virtio0", storage: "repl", volume: "vm-100-disk-0" },
  { key: "scsi1", storage: "local", volume: "100/vm-100-disk-1.qcow2" },
  { key: "unused0", storage: "repl", volume: "vm-100-disk-2" },
  { key: "efidisk0", storage: "local", volume: "100/vm-100-disk-3.raw" }]);
// the engine's units (bytes/s, bytes, seconds) to the API's (KiB/s, KiB, 1/10 s)
const form = formValues({ resync_rate: 2048 * 1024, c_plan_ahead: 2.0, c_fill_target: 0, c_delay_target: 1.0,
  c_max_rate: 100 << 20, c_min_rate: 0, allow_two_primaries: false, protocol: "C", verify_alg: "sha256",
  csums_alg: "" });
assert.deepEqual(form, { "protocol": "C", "allow-two-primaries": "0", "resync-rate": "2048", "c-plan-ahead": "20",
  "c-fill-target": "0", "c-delay-target": "10", "c-max-rate": "102400", "c-min-rate": "0",
  "verify-alg": "sha256", "csums-alg": "none" });
// only what changed is sent
assert.deepEqual(changedParams(form, form), {});
assert.deepEqual(changedParams(form, { ...form, "resync-rate": " 4096 ", "csums-alg": "crc32" }),
  { "resync-rate": "4096", "csums-alg": "crc32" });
console.log("ok");
