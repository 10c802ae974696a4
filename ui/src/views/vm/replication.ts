// A VM's disks and their replicated volumes, and a volume's adjustable settings as the
// form shows them. Pure: no request here.
//
// A disk on replicated storage has the volume ID `<storage>:vm-<vmid>-disk-<n>`
// (docs/storage.md): the part after the colon is the replicated volume's name. The
// settings come from GET /nodes/{node}/volumes/{volume}/config in the engine's units
// (bytes/s, bytes, seconds) and go back to PUT /nodes/{node}/volumes/{volume} in the
// API's (KiB/s, KiB, 1/10 s), as the API's SETTINGS table converts them.

/** A disk of the VM's configuration: its key (scsi0), storage and volume name. */
export interface VmDisk {
  key: string;
  storage: string;
  volume: string;
}

const DISK_KEY = /^(ide|sata|scsi|virtio|efidisk|tpmstate|unused)\d+$/;

/** The VM's disks (CD-ROMs and empty drives left out), in the configuration's order. */
export function vmDisks(config: Record<string, unknown>): VmDisk[] {
  const out: VmDisk[] = [];
  for (const [key, raw] of Object.entries(config)) {
    if (!DISK_KEY.test(key) || typeof raw !== "string") continue;
    const parts = raw.split(",");
    if (parts.includes("media=cdrom")) continue;
    const volid = parts[0];
    const colon = volid.indexOf(":");
    if (colon < 1 || volid === "none") continue;
    out.push({ key, storage: volid.slice(0, colon), volume: volid.slice(colon + 1) });
  }
  return out;
}

export type SettingKind = "enum" | "bool" | "int";

/** One adjustable setting: the API's parameter, the engine's key and the factor from
 * the API's unit to the engine's. */
export interface Setting {
  param: string;
  key: string;
  kind: SettingKind;
  factor: number;
  options?: readonly string[];
}

// the digests of binome.storage.replica.core.csum.ALGORITHMS
export const ALGORITHMS = ["crc32", "md5", "sha1", "sha256", "sha512", "blake2b", "blake2s",
  "sha3_256"] as const;

export const SETTINGS: readonly Setting[] = [
  { param: "protocol", key: "protocol", kind: "enum", factor: 1, options: ["A", "B", "C"] },
  { param: "allow-two-primaries", key: "allow_two_primaries", kind: "bool", factor: 1 },
  { param: "resync-rate", key: "resync_rate", kind: "int", factor: 1024 },
  { param: "c-plan-ahead", key: "c_plan_ahead", kind: "int", factor: 0.1 },
  { param: "c-fill-target", key: "c_fill_target", kind: "int", factor: 1024 },
  { param: "c-delay-target", key: "c_delay_target", kind: "int", factor: 0.1 },
  { param: "c-max-rate", key: "c_max_rate", kind: "int", factor: 1024 },
  { param: "c-min-rate", key: "c_min_rate", kind: "int", factor: 1024 },
  { param: "verify-alg", key: "verify_alg", kind: "enum", factor: 1, options: ALGORITHMS },
  { param: "csums-alg", key: "csums_alg", kind: "enum", factor: 1, options: ["none", ...ALGORITHMS] },
];

/** The form's values (API units, as strings) from the engine's settings. */
export function formValues(settings: Record<string, unknown>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const s of SETTINGS) {
    const v = settings[s.key];
    if (v === undefined || v === null) continue;
    if (s.kind === "bool") out[s.param] = v ? "1" : "0";
    else if (s.kind === "int") out[s.param] = String(Math.round(Number(v) / s.factor));
    else if (s.key === "csums_alg") out[s.param] = v ? String(v) : "none";
    else out[s.param] = String(v);
  }
  return out;
}

/** The parameters the form changed (only those: the PUT changes nothing else). */
export function changedParams(before: Record<string, string>, after: Record<string, string>
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const s of SETTINGS) {
    const v = after[s.param];
    if (v !== undefined && v !== before[s.param]) out[s.param] = v.trim();
  }
  return out;
}
