// The storage pages' pure logic (run under Node.js by tests/unit/ui/test_storage_logic.py):
// the parameters a storage form sends (POST /storage to add, PUT /storage/{id} to change:
// only what changed, emptied options in `delete`, with the digest read; a binome-backup
// storage's server options and its write-only token secret and encryption key), the
// upload's multipart order (text fields first, the file last: what binome streams), which
// volumes the content view lets one delete, the prune dialog's `prune-backups` string and
// which maintenance (prune, verify, GC) a storage offers.

export interface StorageDef {
  storage: string; type: string; content?: string; path?: string; shared?: number;
  nodes?: string; disable?: number; digest?: string;
  // binome-backup: the server's options; `encryption-key` is the key's fingerprint only
  server?: string; port?: number; datastore?: string; username?: string; fingerprint?: string;
  "encryption-key"?: string;
}

/** What the add/edit form holds (all text, as the inputs do). */
export interface StorageForm {
  storage: string; type: string; path: string; content: string[]; nodes: string;
  shared: boolean; disable: boolean;
  // binome-backup only; password and key are write-only (empty: unchanged / none)
  server: string; port: string; datastore: string; username: string; password: string;
  fingerprint: string;
  /** "": no encryption, "autogen": a new key made by binome, "paste": `key` holds a key file */
  keyMode: "" | "autogen" | "paste"; key: string;
}

export const BACKUP_SERVER = "binome-backup";
const SERVER_OPTIONS = ["server", "port", "datastore", "username", "fingerprint"] as const;

export const CONTENT_TYPES = ["images", "iso", "backup", "snippets", "vztmpl"];

const NO_SERVER = { server: "", port: "", datastore: "", username: "", password: "",
                    fingerprint: "", keyMode: "" as const, key: "" };

export function formOf(def: StorageDef | null): StorageForm {
  if (!def) return { storage: "", type: "dir", path: "", content: ["images", "iso"], nodes: "",
                     shared: false, disable: false, ...NO_SERVER };
  return { storage: def.storage, type: def.type, path: def.path ?? "",
           content: (def.content ?? "").split(",").filter((c) => c), nodes: def.nodes ?? "",
           shared: !!def.shared, disable: !!def.disable, ...NO_SERVER,
           server: def.server ?? "", port: def.port === undefined ? "" : String(def.port),
           datastore: def.datastore ?? "", username: def.username ?? "",
           fingerprint: def.fingerprint ?? "" };
}

type Params = Record<string, string | number | undefined>;

/** POST /storage's parameters for a new storage. */
export function createParams(f: StorageForm): Params {
  const p: Params = { storage: f.storage.trim(), type: f.type, content: f.content.join(",") };
  if (f.path.trim()) p.path = f.path.trim();
  if (f.nodes.trim()) p.nodes = f.nodes.trim();
  if (f.shared) p.shared = 1;
  if (f.disable) p.disable = 1;
  if (f.type === BACKUP_SERVER) {
    for (const k of SERVER_OPTIONS) if (f[k].trim()) p[k] = f[k].trim();
    if (f.password) p.password = f.password;
    if (f.keyMode === "autogen") p["encryption-key"] = "autogen";
    else if (f.keyMode === "paste" && f.key.trim()) p["encryption-key"] = f.key.trim();
  }
  return p;
}

/** PUT /storage/{id}'s parameters: what differs from `old`, emptied options deleted;
 * null when nothing changed. Type and path are fixed (PVE): never sent. */
export function updateParams(old: StorageDef, f: StorageForm): Params | null {
  const before = formOf(old);
  const p: Params = {};
  const del: string[] = [];
  const content = f.content.join(",");
  if (content !== before.content.join(",")) p.content = content;
  const nodes = f.nodes.trim();
  if (nodes !== before.nodes) {
    if (nodes) p.nodes = nodes; else del.push("nodes");
  }
  for (const k of ["shared", "disable"] as const) {
    if (f[k] !== before[k]) {
      if (f[k]) p[k] = 1; else del.push(k);
    }
  }
  if (old.type === BACKUP_SERVER) {
    for (const k of SERVER_OPTIONS) {
      const v = f[k].trim();
      if (v === before[k]) continue;
      if (v) p[k] = v; else if (k === "port") del.push(k);   // the others are required
      else p[k] = "";
    }
    if (f.password) p.password = f.password;
  }
  if (!Object.keys(p).length && !del.length) return null;
  if (del.length) p.delete = del.join(",");
  if (old.digest) p.digest = old.digest;
  return p;
}

/** The upload's multipart fields in the order binome reads them: the text fields, then
 * the file (PVE's own UI sends them so too). */
export function uploadFields(content: string, checksum: string, algorithm: string
                             ): [string, string][] {
  const out: [string, string][] = [["content", content]];
  if (checksum.trim() && algorithm) {
    out.push(["checksum", checksum.trim()], ["checksum-algorithm", algorithm]);
  }
  return out;
}

/** An upload's progress as a percentage (0-100), from the browser's progress event. */
export function percent(loaded: number, total: number): number {
  if (!total || total <= 0) return 0;
  return Math.min(100, Math.floor((loaded * 100) / total));
}

export interface Volume { volid: string; content: string; size?: number; format?: string; vmid?: number; ctime?: number }

/** Why the content view does not offer to delete a volume (PVE's UI: a guest's image is
 * removed from the guest's hardware); null: it may be deleted. */
export function deleteBlocker(v: Volume, vmids: Set<number>): string | null {
  if (v.content === "images" && v.vmid !== undefined && vmids.has(v.vmid)) return "guest";
  return null;
}

/** The retention counts of the prune dialog, in PVE's order. */
export const KEEP_OPTIONS = ["keep-last", "keep-hourly", "keep-daily", "keep-weekly",
                             "keep-monthly", "keep-yearly"] as const;
export type KeepForm = Record<(typeof KEEP_OPTIONS)[number], string>;

export function emptyKeep(): KeepForm {
  return Object.fromEntries(KEEP_OPTIONS.map((k) => [k, ""])) as KeepForm;
}

/** The `prune-backups` property string of the filled-in counts (as typed: the API checks
 * them and names a bad one in its `prune-backups` error); none filled: keep-all=1, as
 * PVE's dialog does (everything kept). */
export function pruneBackups(k: KeepForm): string {
  const parts = KEEP_OPTIONS.filter((o) => k[o].trim() !== "").map((o) => `${o}=${k[o].trim()}`);
  return parts.length ? parts.join(",") : "keep-all=1";
}

/** The parameters of GET (the dry run) and DELETE (the prune) .../prunebackups. */
export function pruneParams(k: KeepForm, vmid: string): Params {
  const p: Params = { "prune-backups": pruneBackups(k), type: "qemu" };
  if (vmid.trim()) p.vmid = vmid.trim();
  return p;
}

export interface PruneMark { volid: string; vmid?: number; ctime?: number; mark: string; type?: string }

/** How many of the dry run's backups a prune removes. */
export function removedCount(marks: PruneMark[]): number {
  return marks.filter((m) => m.mark === "remove").length;
}

/** Which maintenance a storage offers (what the API does on it): prune, verify and GC
 * need its backup datastore, which `dir` storages with `backup` content and binome-backup
 * storages have. */
export function backupMaintenance(type: string | undefined, content: string | undefined): boolean {
  const backups = (content ?? "").split(",").includes("backup");
  return backups && (type === "dir" || type === BACKUP_SERVER);
}
