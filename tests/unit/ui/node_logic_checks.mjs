// The checks of test_node_logic.py, run by Node.js next to the bundled module.
import assert from "node:assert/strict";
import { bulkParams, details, members, sortIfaces, wallClock } from "./network.js";

const ifaces = [
  { iface: "eth10", type: "eth" }, { iface: "eth2", type: "eth", mtu: 9000 },
  { iface: "vmbr0", type: "bridge", bridge_ports: "eth2", bridge_stp: "off", bridge_vlan_aware: 1 },
  { iface: "bond0", type: "bond", slaves: "eth10 eth11", bond_mode: "802.3ad" },
  { iface: "bond0.42", type: "vlan", "vlan-id": 42, "vlan-raw-device": "bond0" },
  { iface: "wg0", type: "unknown" },
];
// bridges, bonds, VLANs, then NICs (natural order: eth2 before eth10), then the rest
assert.deepEqual(sortIfaces(ifaces).map((i) => i.iface), ["vmbr0", "bond0", "bond0.42", "eth2", "eth10", "wg0"]);
assert.equal(ifaces.length, 6); // not sorted in place
assert.deepEqual(ifaces.map(members), ["", "", "eth2", "eth10 eth11", "bond0", ""]);
assert.deepEqual(details(ifaces[2]), [["node.net.stp", { stp: "off" }], ["node.net.vlanaware", {}]]);
assert.deepEqual(details(ifaces[4]), [["node.net.vlan", { id: 42, dev: "bond0" }]]);
assert.deepEqual(details(ifaces[3]), [["node.net.bond", { mode: "802.3ad" }]]);
assert.deepEqual(details(ifaces[1]), [["node.net.mtu", { mtu: 9000 }]]);

const f = { force: false, vms: "", timeout: "180", target: "" };
assert.deepEqual(bulkParams("startall", f), { params: {} });
assert.deepEqual(bulkParams("startall", { ...f, force: true, vms: " 100, 101;102 " }),
  { params: { force: 1, vms: "100,101,102" } });
assert.deepEqual(bulkParams("startall", { ...f, vms: "100,99" }), { error: "vms" });
assert.deepEqual(bulkParams("startall", { ...f, vms: "10a" }), { error: "vms" });
// force means nothing to a stop; the timeout does
assert.deepEqual(bulkParams("stopall", { ...f, force: true }), { params: { timeout: 180 } });
assert.deepEqual(bulkParams("stopall", { ...f, timeout: "" }), { params: {} });
assert.deepEqual(bulkParams("stopall", { ...f, timeout: "-1" }), { error: "timeout" });
assert.deepEqual(bulkParams("stopall", { ...f, timeout: "7201" }), { error: "timeout" });
assert.deepEqual(bulkParams("migrateall", f), { error: "target" });
assert.deepEqual(bulkParams("migrateall", { ...f, target: "n2", vms: "105" }),
  { params: { vms: "105", target: "n2" } });

assert.equal(wallClock(undefined), "");
assert.equal(wallClock(1796614780), "2026-12-07 03:39:40");
console.log("ok");
