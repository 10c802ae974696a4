// Pure logic of a node's Network and System tabs and bulk actions (tested under Node.js
// by tests/unit/ui/test_node_logic.py): rows of PVE's /nodes/{node}/network entries,
// the parameters of a bulk action, the time zone's wall clock.

/** One entry of GET /nodes/{node}/network, PVE's field names. */
export interface NetIface {
  iface: string;
  type: string;
  active?: number;
  method?: string;
  method6?: string;
  cidr?: string;
  cidr6?: string;
  gateway?: string;
  gateway6?: string;
  bridge_ports?: string;
  bridge_stp?: string;
  bridge_vlan_aware?: number;
  slaves?: string;
  bond_mode?: string;
  "vlan-id"?: number;
  "vlan-raw-device"?: string;
  mtu?: number;
  priority?: number;
}

// PVE's network view lists bridges and bonds before the NICs they hold
const TYPE_ORDER: Record<string, number> = { bridge: 0, OVSBridge: 0, bond: 1, OVSBond: 1,
  vlan: 2, eth: 3, alias: 4, unknown: 5 };

export function sortIfaces(list: NetIface[]): NetIface[] {
  return [...list].sort((a, b) => (TYPE_ORDER[a.type] ?? 9) - (TYPE_ORDER[b.type] ?? 9)
    || a.iface.localeCompare(b.iface, undefined, { numeric: true }));
}

/** What holds together: a bridge's ports, a bond's slaves, a VLAN's device. */
export function members(i: NetIface): string {
  if (i.bridge_ports !== undefined) return i.bridge_ports;
  if (i.slaves !== undefined) return i.slaves;
  if (i["vlan-raw-device"]) return i["vlan-raw-device"];
  return "";
}

/** The short facts of a row beside the addresses: [string key, its arguments]. */
export function details(i: NetIface): [string, Record<string, string | number>][] {
  const out: [string, Record<string, string | number>][] = [];
  if (i.type === "vlan" && i["vlan-id"] !== undefined)
    out.push(["node.net.vlan", { id: i["vlan-id"], dev: i["vlan-raw-device"] ?? "?" }]);
  if (i.bond_mode) out.push(["node.net.bond", { mode: i.bond_mode }]);
  if (i.bridge_stp) out.push(["node.net.stp", { stp: i.bridge_stp }]);
  if (i.bridge_vlan_aware) out.push(["node.net.vlanaware", {}]);
  if (i.mtu) out.push(["node.net.mtu", { mtu: i.mtu }]);
  return out;
}

export type BulkAction = "startall" | "stopall" | "migrateall";

export interface BulkForm {
  force: boolean;
  vms: string;
  timeout: string;
  target: string;
}

/** The POST parameters of a bulk action, or the field that is wrong (checked as the
 * server checks it, so a wrong entry is said before anything is sent). */
export function bulkParams(action: BulkAction, f: BulkForm):
    { params: Record<string, string | number> } | { error: "vms" | "timeout" | "target" } {
  const params: Record<string, string | number> = {};
  const vms = f.vms.split(/[\s,;]+/).filter((x) => x);
  if (vms.some((v) => !/^\d+$/.test(v) || Number(v) < 100)) return { error: "vms" };
  if (vms.length) params.vms = vms.join(",");
  if (action === "startall" && f.force) params.force = 1;
  if (action === "stopall" && f.timeout.trim()) {
    if (!/^\d+$/.test(f.timeout.trim()) || Number(f.timeout) > 7200) return { error: "timeout" };
    params.timeout = Number(f.timeout);
  }
  if (action === "migrateall") {
    if (!f.target) return { error: "target" };
    params.target = f.target;
  }
  return { params };
}

/** PVE's `localtime` is the local wall clock written as if it were UTC: shown as is. */
export function wallClock(seconds: number | undefined): string {
  if (seconds === undefined) return "";
  return new Date(seconds * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "");
}
