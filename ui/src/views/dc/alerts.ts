// The datacenter summary's active alerts, worked out from what the summary already reads
// (quorum, the nodes of /cluster/resources, the HA manager's status, every node's
// replicated volumes): what is wrong now, not what once was (the cluster log keeps that).
// Pure logic: tests/unit/ui runs it under Node.js.
import { needsResolution, type Volume } from "./volumes";

export interface AlertInput {
  quorate?: boolean;
  nodes: { node?: string; status?: string }[];
  ha: { type: string; id: string; node?: string; sid?: string; state?: string; mode?: string;
        disarm?: string }[];
  volumes: Volume[] | null;
}

/** One alert: a severity, a string key of the UI's table and its arguments. */
export interface Alert { id: string; level: "bad" | "warn"; key: string; args: Record<string, string | number> }

// the HA service states that mean a guest is not where it should be
const HA_BAD = new Set(["error", "fence", "recovery"]);

export function activeAlerts(input: AlertInput): Alert[] {
  const out: Alert[] = [];
  if (input.quorate === false) out.push({ id: "quorum", level: "bad", key: "alert.noquorum", args: {} });
  for (const n of input.nodes) {
    if (n.node && n.status !== "online") {
      out.push({ id: `node:${n.node}`, level: "bad", key: "alert.node.offline",
                 args: { node: n.node, status: n.status ?? "unknown" } });
    }
  }
  for (const e of input.ha) {
    if (e.type === "master" && e.disarm) {
      out.push({ id: "ha:disarmed", level: "warn", key: "alert.ha.disarmed", args: { mode: e.disarm } });
    } else if (e.type === "lrm" && (e.state === "maintenance" || e.mode === "maintenance")) {
      out.push({ id: `maint:${e.node}`, level: "warn", key: "alert.node.maintenance", args: { node: e.node ?? "" } });
    } else if (e.type === "service" && e.state && HA_BAD.has(e.state)) {
      out.push({ id: `ha:${e.sid}`, level: "bad", key: "alert.ha.service",
                 args: { sid: e.sid ?? e.id, state: e.state, node: e.node ?? "" } });
    }
  }
  for (const v of input.volumes ?? []) {
    if (needsResolution(v)) {
      out.push({ id: `vol:${v.name}`, level: "bad", key: "alert.vol.splitbrain", args: { name: v.name } });
      continue;
    }
    const bad = v.copies.find((c) => c.disk !== "UpToDate");
    if (v.sync) {
      out.push({ id: `vol:${v.name}`, level: "warn", key: "alert.vol.resync",
                 args: { name: v.name, to: v.sync.to, done: Math.round(v.sync.progress.done ?? 0) } });
    } else if (bad) {
      out.push({ id: `vol:${v.name}`, level: "bad", key: "alert.vol.degraded",
                 args: { name: v.name, node: bad.node, disk: bad.disk } });
    }
  }
  return out;
}

/** The volumes' health in numbers: all, both copies UpToDate, resyncing, needing care. */
export function volumeHealth(volumes: Volume[]): { total: number; healthy: number; syncing: number; bad: number } {
  let healthy = 0, syncing = 0, bad = 0;
  for (const v of volumes) {
    if (needsResolution(v)) bad++;
    else if (v.sync) syncing++;
    else if (v.copies.length > 1 && v.copies.every((c) => c.disk === "UpToDate")) healthy++;
    else bad++;
  }
  return { total: volumes.length, healthy, syncing, bad };
}
