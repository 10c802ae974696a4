// The replicated volumes as the page shows them: every node's list
// (GET /nodes/{node}/volumes: the node's own state of each of its volumes and what it
// sees of the peer) merged into one entry per volume with its two copies, and the plan of
// a split brain's resolution by hand, DRBD's (docs/operator-guide.md section 16): on the
// victim `secondary` (if Primary) then `connect discard-my-data=1`, on the survivor
// `connect` (if it is StandAlone). Pure: no request here.

export interface SyncProgress {
  source: boolean; total_kib: number; left_kib: number; done: number; speed_kib: number;
  eta_s: number | null; verify: boolean; found: number; stalled: boolean;
}

export interface VerifyResult {
  finished: boolean; stopped: boolean; lost: boolean; verified_kib: number; found_blocks: number;
  found_kib: number; time: number;
}

export interface SplitBrainRecord {
  state: "detected" | "resolved"; policy: string; time: number; resolved_time?: number;
  primaries?: string[]; nodes?: string[]; reporter?: string; survivor?: string; victim?: string;
}

export interface VolumeStatus {
  name: string; size: number; node?: string; peer_node?: string;
  role: string; peer_role: string; cstate: string; disk: string; peer_disk: string;
  suspended?: boolean; out_of_sync_kib?: number; open_count?: number; gi?: string | null;
  paused?: { user: boolean; peer: boolean };
  verify?: VerifyResult | null;
  split_brain?: SplitBrainRecord | null;
  peer?: { sync?: SyncProgress; last_error?: string | null } | null;
  vmid?: number | null; storage?: string | null; desired_primary?: string | null; deleting?: boolean;
}

/** One copy of a volume: its node's own report, or what the peer says of it. */
export interface Copy {
  node: string;
  own: boolean;              // the node answered for itself
  role: string;
  disk: string;
  cstate?: string;
  outOfSyncKib?: number;
  openCount?: number;
  gi?: string | null;
  suspended?: boolean;
}

export interface Volume {
  name: string;
  size: number;
  vmid?: number | null;
  storage?: string | null;
  copies: Copy[];
  /** the node's status, by node, for those that answered */
  statuses: Record<string, VolumeStatus>;
  sync: { from: string; to: string; progress: SyncProgress; paused: boolean } | null;
  splitBrain: SplitBrainRecord | null;
  /** the last online verify a node ran, with that node */
  verify: { node: string; result: VerifyResult } | null;
}

// DRBD's connection states from Connected on (binome's ConnState >= Connected)
const LINKED = new Set(["Connected", "StartingSyncS", "StartingSyncT", "WFBitMapS", "WFBitMapT",
  "WFSyncUUID", "SyncSource", "SyncTarget", "VerifyS", "VerifyT", "PausedSyncS", "PausedSyncT",
  "Ahead", "Behind"]);

/** The copy's node is connected to its peer (in sync, resyncing or verifying). */
export function isConnected(cstate: string | undefined): boolean {
  return cstate !== undefined && LINKED.has(cstate);
}

/** Merge the nodes' lists (node -> its volumes) into one entry per volume. */
export function mergeVolumes(lists: Record<string, VolumeStatus[]>): Volume[] {
  const byName = new Map<string, Record<string, VolumeStatus>>();
  for (const [node, list] of Object.entries(lists)) {
    for (const st of list) {
      const seen = byName.get(st.name) ?? {};
      seen[st.node ?? node] = st;
      byName.set(st.name, seen);
    }
  }
  return [...byName.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([name, statuses]) => {
    const nodes = new Set<string>();
    for (const [node, st] of Object.entries(statuses)) {
      nodes.add(node);
      if (st.peer_node) nodes.add(st.peer_node);
    }
    const copies: Copy[] = [...nodes].sort().map((node) => {
      const own = statuses[node];
      if (own) {
        return { node, own: true, role: own.role, disk: own.disk, cstate: own.cstate,
                 outOfSyncKib: own.out_of_sync_kib, openCount: own.open_count, gi: own.gi,
                 suspended: own.suspended };
      }
      const peer = Object.values(statuses).find((s) => s.peer_node === node);
      return { node, own: false, role: peer?.peer_role ?? "Unknown", disk: peer?.peer_disk ?? "DUnknown" };
    });
    const any = Object.values(statuses)[0];
    let sync: Volume["sync"] = null;
    for (const [node, st] of Object.entries(statuses)) {
      const p = st.peer?.sync;
      if (p && st.peer_node) {
        sync = { from: p.source ? node : st.peer_node, to: p.source ? st.peer_node : node, progress: p,
                 paused: !!(st.paused?.user || st.paused?.peer) };
        if (p.source) break;        // the source's view of the resync, when both tell
      }
    }
    let verify: Volume["verify"] = null;
    for (const [node, st] of Object.entries(statuses)) {
      if (st.verify && (!verify || st.verify.time > verify.result.time)) verify = { node, result: st.verify };
    }
    return { name, size: any.size, vmid: any.vmid, storage: any.storage, copies, statuses, sync,
             splitBrain: latestSplitBrain(Object.values(statuses)), verify };
  });
}

/** The most recent split-brain record any node holds (an unresolved one first). */
export function latestSplitBrain(statuses: VolumeStatus[]): SplitBrainRecord | null {
  const records = statuses.map((s) => s.split_brain).filter((r): r is SplitBrainRecord => !!r);
  if (!records.length) return null;
  const at = (r: SplitBrainRecord) => Math.max(r.time, r.resolved_time ?? 0);
  const unresolved = records.filter((r) => r.state === "detected");
  const pool = unresolved.length ? unresolved : records;
  return pool.reduce((best, r) => (at(r) > at(best) ? r : best));
}

/** The volume is in a split brain the administrator has to resolve: recorded unresolved,
 * and a copy still StandAlone (connected copies have nothing left to resolve). */
export function needsResolution(v: Volume): boolean {
  return v.splitBrain?.state === "detected" && v.copies.some((c) => c.cstate === "StandAlone");
}

export interface Step {
  key: "secondary" | "discard" | "connect";
  node: string;
  action: "secondary" | "connect";
  params: Record<string, boolean>;
}

export type Plan = { steps: Step[] } | { refused: "offline"; nodes: string[] }
  | { refused: "inuse"; node: string; count: number };

/** What resolving with `survivor` keeping its data takes, or why it must not be done now. */
export function resolutionPlan(v: Volume, survivor: string): Plan {
  const victimCopy = v.copies.find((c) => c.node !== survivor);
  const survivorCopy = v.copies.find((c) => c.node === survivor);
  if (!victimCopy || !survivorCopy) return { refused: "offline", nodes: [] };
  const silent = [survivorCopy, victimCopy].filter((c) => !c.own).map((c) => c.node);
  if (silent.length) return { refused: "offline", nodes: silent };
  // a Primary that a guest has open cannot be demoted under it: never take its disk away
  if (victimCopy.role === "Primary" && (victimCopy.openCount ?? 0) > 0) {
    return { refused: "inuse", node: victimCopy.node, count: victimCopy.openCount ?? 0 };
  }
  const victim = victimCopy.node;
  const steps: Step[] = [];
  if (victimCopy.role === "Primary") steps.push({ key: "secondary", node: victim, action: "secondary", params: {} });
  steps.push({ key: "discard", node: victim, action: "connect", params: { "discard-my-data": true } });
  if (survivorCopy.cstate === "StandAlone") {
    steps.push({ key: "connect", node: survivor, action: "connect", params: {} });
  }
  return { steps };
}
