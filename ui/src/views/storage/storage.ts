// The storage pages' pure logic (run under Node.js by tests/unit/ui/test_storage_logic.py):
// the parameters a storage form sends (POST /storage to add, PUT /storage/{id} to change:
// only what changed, emptied options in `delete`, with the digest read), the upload's
// multipart order (text fields first, the file last: what binome streams), and which
// volumes the content view lets one delete.

export interface StorageDef {
  storage: string; type: string; content?: string; path?: string; shared?: number;
  nodes?: string; disable?: number; digest?: string;
}

/** What the add/edit form holds (all text, as the inputs do). */
export interface StorageForm {
  storage: string; type: string; path: string; content: string[]; nodes: string;
  shared: boolean; disable: boolean;
}

export const CONTENT_TYPES = ["images", "iso", "backup", "snippets", "vztmpl"];

export function formOf(def: StorageDef | null): StorageForm {
  if (!def) return { storage: "", type: "dir", path: "", content: ["images", "iso"], nodes: "",
                     shared: false, disable: false };
  return { storage: def.storage, type: def.type, path: def.path ?? "",
           content: (def.content ?? "").split(",").filter((c) => c), nodes: def.nodes ?? "",
           shared: !!def.shared, disable: !!def.disable };
}

type Params = Record<string, string | number | undefined>;

/** POST /storage's parameters for a new storage. */
export function createParams(f: StorageForm): Params {
  const p: Params = { storage: f.storage.trim(), type: f.type, content: f.content.join(",") };
  if (f.path.trim()) p.path = f.path.trim();
  if (f.nodes.trim()) p.nodes = f.nodes.trim();
  if (f.shared) p.shared = 1;
  if (f.disable) p.disable = 1;
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
