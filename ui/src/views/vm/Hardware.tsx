// The VM's Hardware tab, as PVE's: memory, processors, disks, network devices, the
// cloud-init drive, EFI disk and TPM state, unused volumes. It reads GET .../pending (the
// config with the values waiting for the next start; those are shown in their own style)
// and edits with PUT .../config (memory, processors, NICs, detach: the API's
// per-parameter errors come back at once), POST .../config for a new disk and PUT
// .../resize for a bigger one (both run as tasks, shown in the task viewer); a CD/DVD
// drive added or changed with PUT .../config: an ISO image of the node's ISO storages
// (GET /nodes/{node}/storage?content=iso, then each one's content), or no media; a disk
// moved to another storage with POST .../move_disk (format, delete the source, bandwidth
// limit; a task, shown in the task viewer).
import { useState } from "preact/hooks";
import { get } from "../../api";
import { usePoll } from "../../poll";
import { t } from "../../strings";
import { Dialog } from "../Confirm";
import { Field, OtherErrors, OutcomeMessage, TaskArea, useOutcome } from "../forms";

interface PendingEntry { key: string; value?: string | number; pending?: string | number; delete?: number }

const BUSES = ["virtio", "scsi", "sata", "ide"];
const DISK_KEY = /^(virtio|scsi|sata|ide)\d+$/;
const NIC_MODELS = ["virtio", "e1000", "rtl8139", "vmxnet3"];
const MOVE_FORMATS = ["raw", "qcow2", "vmdk"];

type Kind = "memory" | "processors" | "disk" | "cdrom" | "cloudinit" | "efidisk" | "tpm" | "net"
  | "unused" | "other";

function kindOf(key: string, value: string): Kind {
  if (key === "memory") return "memory";
  if (key === "sockets" || key === "cores") return "processors";
  if (DISK_KEY.test(key)) {
    if (/cloudinit/.test(value)) return "cloudinit";
    return /media=cdrom/.test(value) ? "cdrom" : "disk";
  }
  if (key === "efidisk0") return "efidisk";
  if (key === "tpmstate0") return "tpm";
  if (/^net\d+$/.test(key)) return "net";
  if (/^unused\d+$/.test(key)) return "unused";
  return "other";
}

/** A property string as key/value pairs; the first bare word (a volume, a NIC model=MAC)
 * under its own name. */
export function parseProps(value: string): Record<string, string> {
  const out: Record<string, string> = {};
  value.split(",").forEach((part, i) => {
    const eq = part.indexOf("=");
    if (eq < 0) out[i === 0 ? "_" : part] = part;
    else out[part.slice(0, eq)] = part.slice(eq + 1);
  });
  return out;
}

type Editing =
  | { kind: "memory" } | { kind: "processors" } | { kind: "net"; key: string | null }
  | { kind: "adddisk" } | { kind: "resize"; key: string } | { kind: "remove"; key: string }
  | { kind: "cdrom"; key: string | null } | { kind: "move"; key: string };

export function Hardware(props: { base: string; node: string; vmid: number }) {
  const pending = usePoll<PendingEntry[]>(`${props.base}/pending`, 2000);
  const outcome = useOutcome(() => pending.refresh());
  const [editing, setEditing] = useState<Editing | null>(null);
  const [form, setForm] = useState<Record<string, string>>({});
  const [storages, setStorages] = useState<string[]>([]);
  const [isos, setIsos] = useState<string[] | null>(null);
  const entries = pending.data ?? [];
  const byKey = new Map(entries.map((e) => [e.key, e]));
  const current = (key: string) => String(byKey.get(key)?.pending ?? byKey.get(key)?.value ?? "");
  const set = (k: string) => (e: Event) =>
    setForm((f) => ({ ...f, [k]: (e.currentTarget as HTMLInputElement).value }));

  const open = (what: Editing) => {
    outcome.clear();
    if (what.kind === "memory") setForm({ memory: current("memory") || "512" });
    if (what.kind === "processors") {
      setForm({ sockets: current("sockets") || "1", cores: current("cores") || "1" });
    }
    if (what.kind === "net") {
      const p = parseProps(what.key ? current(what.key) : "virtio,bridge=vmbr0");
      const model = NIC_MODELS.find((m) => m in p) ?? "virtio";
      const firstFree = [...Array(32).keys()].find((i) => !byKey.has(`net${i}`)) ?? 0;
      setForm({ key: what.key ?? `net${firstFree}`, model, mac: p[model] ?? "", bridge: p.bridge ?? "vmbr0",
                tag: p.tag ?? "", firewall: p.firewall ?? "0", link_down: p.link_down ?? "0" });
    }
    if (what.kind === "adddisk") {
      setForm({ bus: "virtio", index: "", storage: "", size: "1" });
      get<{ storage: string; active?: number }[]>(
        `/nodes/${encodeURIComponent(props.node)}/storage`, { content: "images" })
        .then((list) => {
          const names = list.filter((s) => s.active !== 0).map((s) => s.storage);
          setStorages(names);
          setForm((f) => ({ ...f, storage: f.storage || names[0] || "" }));
        }, () => setStorages([]));
    }
    if (what.kind === "resize") setForm({ size: "+1G" });
    if (what.kind === "move") {
      // the other storages of the node that hold disk images
      const from = parseProps(current(what.key))._?.split(":")[0] ?? "";
      setForm({ storage: "", format: "", delete: "0", bwlimit: "" });
      setStorages([]);
      get<{ storage: string; active?: number }[]>(
        `/nodes/${encodeURIComponent(props.node)}/storage`, { content: "images" })
        .then((list) => {
          const names = list.filter((s) => s.active !== 0 && s.storage !== from).map((s) => s.storage);
          setStorages(names);
          setForm((f) => ({ ...f, storage: f.storage || names[0] || "" }));
        }, () => setStorages([]));
    }
    if (what.kind === "cdrom") {
      const file = what.key ? parseProps(current(what.key))._ ?? "none" : "none";
      const free = ["ide2", "ide0", "ide1", "ide3", "sata0", "sata1", "sata2", "sata3"]
        .find((k) => !byKey.has(k)) ?? "ide2";
      setForm({ key: what.key ?? free, iso: file === "cdrom" ? "none" : file });
      setIsos(null);
      const node = encodeURIComponent(props.node);
      get<{ storage: string; active?: number }[]>(`/nodes/${node}/storage`, { content: "iso" })
        .then((list) => Promise.all(list.filter((x) => x.active !== 0).map((x) =>
          get<{ volid: string }[]>(`/nodes/${node}/storage/${encodeURIComponent(x.storage)}/content`,
            { content: "iso" }).catch(() => []))))
        .then((all) => setIsos(all.flat().map((v) => v.volid).sort()), () => setIsos([]));
    }
    setEditing(what);
  };

  const save = async () => {
    if (!editing) return;
    let ok = false;
    const config = `${props.base}/config`;
    switch (editing.kind) {
      case "memory":
        ok = await outcome.send("PUT", config, { memory: form.memory }, t("hw.saved"));
        break;
      case "processors":
        ok = await outcome.send("PUT", config, { sockets: form.sockets, cores: form.cores }, t("hw.saved"));
        break;
      case "net": {
        const parts = [form.mac ? `${form.model}=${form.mac}` : form.model, `bridge=${form.bridge}`];
        if (form.tag) parts.push(`tag=${form.tag}`);
        if (form.firewall === "1") parts.push("firewall=1");
        if (form.link_down === "1") parts.push("link_down=1");
        ok = await outcome.send("PUT", config, { [form.key]: parts.join(",") }, t("hw.saved"));
        // the API names the property string's key: show its error on the bridge field
        break;
      }
      case "adddisk": {
        const index = form.index !== "" ? form.index
          : String([...Array(31).keys()].find((i) => !byKey.has(`${form.bus}${i}`)) ?? 0);
        ok = await outcome.send("POST", config, { [`${form.bus}${index}`]: `${form.storage}:${form.size}` });
        break;
      }
      case "resize":
        ok = await outcome.send("PUT", `${props.base}/resize`, { disk: editing.key, size: form.size });
        break;
      case "remove":
        ok = await outcome.send("PUT", config, { delete: editing.key }, t("hw.removed", { key: editing.key }));
        break;
      case "cdrom":
        ok = await outcome.send("PUT", config, { [form.key]: `${form.iso || "none"},media=cdrom` }, t("hw.saved"));
        break;
      case "move":
        ok = await outcome.send("POST", `${props.base}/move_disk`, {
          disk: editing.key, storage: form.storage, format: form.format || undefined,
          delete: form.delete === "1", bwlimit: form.bwlimit.trim() || undefined });
        break;
    }
    if (ok) setEditing(null);
  };

  // PVE's Processors row: sockets and cores in one, their defaults (1) when unset
  const cpuPart = (key: string) => byKey.get(key) ?? { key, value: 1 };
  const sockets = cpuPart("sockets");
  const cores = cpuPart("cores");
  const processors: PendingEntry = {
    key: "cores", value: t("hw.processors.value", { sockets: sockets.value ?? 1, cores: cores.value ?? 1 }),
    pending: sockets.pending !== undefined || cores.pending !== undefined
      ? t("hw.processors.value", { sockets: sockets.pending ?? sockets.value ?? 1,
                                     cores: cores.pending ?? cores.value ?? 1 }) : undefined,
  };
  const listed = [...entries.filter((e) => e.key !== "sockets" && e.key !== "cores"), processors];
  const rows = listed.filter((e) => kindOf(e.key, String(e.value ?? e.pending ?? "")) !== "other")
    .sort((a, b) => order(a.key) - order(b.key) || a.key.localeCompare(b.key, undefined, { numeric: true }));
  const errors = outcome.errors;
  const netKey = editing?.kind === "net" ? form.key : "";

  return (
    <section class="card" id="vm-hardware" aria-label={t("vm.tab.hardware")}>
      <div class="toolbar" role="toolbar">
        <button id="hw-add-disk" onClick={() => open({ kind: "adddisk" })}>{t("hw.adddisk")}</button>
        <button id="hw-add-net" onClick={() => open({ kind: "net", key: null })}>{t("hw.addnet")}</button>
        <button id="hw-add-cdrom" onClick={() => open({ kind: "cdrom", key: null })}>{t("hw.addcdrom")}</button>
      </div>
      <OutcomeMessage outcome={outcome} id="hw-message" />
      {!editing && <OtherErrors errors={errors} shown={[]} />}
      {pending.error && <p class="error">{t("common.error", { message: pending.error.message })}</p>}
      <div class="table-wrap">
        <table id="hw-table">
          <thead><tr><th>{t("hw.device")}</th><th>{t("hw.value")}</th><th /></tr></thead>
          <tbody>
            {rows.map((e) => {
              const value = String(e.value ?? "");
              const kind = kindOf(e.key, String(e.value ?? e.pending ?? ""));
              const changed = e.pending !== undefined || e.delete;
              return (
                <tr key={e.key} data-key={e.key} class={changed ? "pending" : ""}>
                  <td>{t(`hw.kind.${kind}` as "hw.kind.disk")} ({e.key})</td>
                  <td>
                    <span class={e.delete ? "pending-delete" : ""}>{value}</span>
                    {e.pending !== undefined && (
                      <span class="pending-value" title={t("hw.pending")}>{" → "}{String(e.pending)}</span>)}
                    {e.delete ? <span class="pending-value"> ({t("hw.pending.delete")})</span> : null}
                  </td>
                  <td class="row-actions">
                    {kind === "memory" && <button class="hw-edit" onClick={() => open({ kind: "memory" })}>{t("hw.edit")}</button>}
                    {kind === "processors" && e.key === "cores" && <button class="hw-edit" onClick={() => open({ kind: "processors" })}>{t("hw.edit")}</button>}
                    {kind === "net" && <button class="hw-edit" onClick={() => open({ kind: "net", key: e.key })}>{t("hw.edit")}</button>}
                    {kind === "cdrom" && <button class="hw-edit" onClick={() => open({ kind: "cdrom", key: e.key })}>{t("hw.edit")}</button>}
                    {kind === "disk" && <button class="hw-resize" onClick={() => open({ kind: "resize", key: e.key })}>{t("hw.resize")}</button>}
                    {(kind === "disk" || kind === "unused") && <button class="hw-move" onClick={() => open({ kind: "move", key: e.key })}>{t("hw.move")}</button>}
                    {["disk", "cdrom", "cloudinit", "net", "unused", "efidisk", "tpm"].includes(kind) && (
                      <button class="hw-remove" onClick={() => open({ kind: "remove", key: e.key })}>
                        {kind === "disk" ? t("hw.detach") : t("hw.remove")}</button>)}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
      {editing?.kind === "memory" && (
        <Dialog title={t("hw.memory.title")} onOk={save} okDisabled={outcome.busy} onCancel={() => setEditing(null)}>
          <Field label={t("create.memory.mib")} param="memory" errors={errors}>
            <input id="hw-memory" inputMode="numeric" value={form.memory} onInput={set("memory")} />
          </Field>
          <OtherErrors errors={errors} shown={["memory"]} />
        </Dialog>
      )}
      {editing?.kind === "processors" && (
        <Dialog title={t("hw.processors.title")} onOk={save} okDisabled={outcome.busy} onCancel={() => setEditing(null)}>
          <Field label={t("create.sockets")} param="sockets" errors={errors}>
            <input id="hw-sockets" inputMode="numeric" value={form.sockets} onInput={set("sockets")} />
          </Field>
          <Field label={t("create.cores")} param="cores" errors={errors}>
            <input id="hw-cores" inputMode="numeric" value={form.cores} onInput={set("cores")} />
          </Field>
          <OtherErrors errors={errors} shown={["sockets", "cores"]} />
        </Dialog>
      )}
      {editing?.kind === "net" && (
        <Dialog title={t("hw.net.title", { key: form.key })} onOk={save} okDisabled={outcome.busy} onCancel={() => setEditing(null)}>
          <Field label={t("create.model")} param={`${netKey}-model`} errors={errors}>
            <select id="hw-net-model" value={form.model} onChange={set("model")}>
              {NIC_MODELS.map((m) => <option key={m} value={m}>{m}</option>)}</select>
          </Field>
          <Field label={t("create.bridge")} param={netKey} errors={errors}>
            <input id="hw-net-bridge" value={form.bridge} onInput={set("bridge")} />
          </Field>
          <Field label={t("hw.net.tag")} param={`${netKey}-tag`} errors={errors}>
            <input id="hw-net-tag" inputMode="numeric" value={form.tag} onInput={set("tag")} />
          </Field>
          <Field label={t("hw.net.mac")} param={`${netKey}-mac`} errors={errors}>
            <input id="hw-net-mac" value={form.mac} onInput={set("mac")} placeholder={t("hw.net.auto")} />
          </Field>
          <label class="check"><input type="checkbox" id="hw-net-firewall" checked={form.firewall === "1"}
            onChange={(e) => setForm((f) => ({ ...f, firewall: e.currentTarget.checked ? "1" : "0" }))} />
            {t("hw.net.firewall")}</label>
          <label class="check"><input type="checkbox" id="hw-net-linkdown" checked={form.link_down === "1"}
            onChange={(e) => setForm((f) => ({ ...f, link_down: e.currentTarget.checked ? "1" : "0" }))} />
            {t("hw.net.linkdown")}</label>
          <OtherErrors errors={errors} shown={[netKey]} />
        </Dialog>
      )}
      {editing?.kind === "adddisk" && (
        <Dialog title={t("hw.adddisk")} onOk={save} okDisabled={outcome.busy || !form.storage}
          onCancel={() => setEditing(null)}>
          <Field label={t("hw.disk.bus")} param="bus" errors={errors}>
            <select id="hw-disk-bus" value={form.bus} onChange={set("bus")}>
              {BUSES.map((b) => <option key={b} value={b}>{b}</option>)}</select>
          </Field>
          <Field label={t("create.storage")} param="storage" errors={errors}>
            <select id="hw-disk-storage" value={form.storage} onChange={set("storage")}>
              {storages.map((s) => <option key={s} value={s}>{s}</option>)}</select>
          </Field>
          <Field label={t("create.size")} param="size" errors={errors}>
            <input id="hw-disk-size" inputMode="numeric" value={form.size} onInput={set("size")} />
          </Field>
          <OtherErrors errors={errors} shown={[]} />
        </Dialog>
      )}
      {editing?.kind === "cdrom" && (
        <Dialog title={t("hw.cdrom.title", { key: form.key })} onOk={save} okDisabled={outcome.busy || isos === null}
          onCancel={() => setEditing(null)}>
          {editing.key === null && <Field label={t("hw.cdrom.slot")} param="key" errors={errors}>
            <select id="hw-cdrom-key" value={form.key} onChange={set("key")}>
              {["ide0", "ide1", "ide2", "ide3", "sata0", "sata1", "sata2", "sata3", "sata4", "sata5"]
                .filter((k) => !byKey.has(k)).map((k) => <option key={k} value={k}>{k}</option>)}</select>
          </Field>}
          <Field label={t("hw.cdrom.iso")} param={form.key} errors={errors}>
            <select id="hw-cdrom-iso" value={form.iso} onChange={set("iso")} disabled={isos === null}>
              <option value="none">{t("hw.cdrom.none")}</option>
              {form.iso && form.iso !== "none" && !(isos ?? []).includes(form.iso)
                && <option value={form.iso}>{form.iso}</option>}
              {(isos ?? []).map((x) => <option key={x} value={x}>{x}</option>)}</select>
          </Field>
          {isos !== null && isos.length === 0 && <p class="help">{t("hw.cdrom.noiso")}</p>}
          <OtherErrors errors={errors} shown={[form.key]} />
        </Dialog>
      )}
      {editing?.kind === "resize" && (
        <Dialog title={t("hw.resize.title", { key: editing.key })} onOk={save} okDisabled={outcome.busy}
          onCancel={() => setEditing(null)}>
          <Field label={t("hw.resize.size")} param="size" errors={errors}>
            <input id="hw-resize-size" value={form.size} onInput={set("size")} />
          </Field>
          <OtherErrors errors={errors} shown={["size"]} />
        </Dialog>
      )}
      {editing?.kind === "move" && (
        <Dialog title={t("hw.move.title", { key: editing.key })} onOk={save}
          okDisabled={outcome.busy || !form.storage} onCancel={() => setEditing(null)}>
          <Field label={t("hw.move.storage")} param="storage" errors={errors}>
            <select id="hw-move-storage" value={form.storage} onChange={set("storage")}>
              {storages.map((s) => <option key={s} value={s}>{s}</option>)}</select>
          </Field>
          <Field label={t("hw.move.format")} param="format" errors={errors}>
            <select id="hw-move-format" value={form.format} onChange={set("format")}>
              <option value="">{t("hw.move.format.keep")}</option>
              {MOVE_FORMATS.map((f) => <option key={f} value={f}>{f}</option>)}</select>
          </Field>
          <label class="check" data-param="delete"><input type="checkbox" id="hw-move-delete"
            checked={form.delete === "1"}
            onChange={(e) => setForm((f) => ({ ...f, delete: e.currentTarget.checked ? "1" : "0" }))} />
            {t("hw.move.delete")}</label>
          <Field label={t("hw.move.bwlimit")} param="bwlimit" errors={errors}>
            <input id="hw-move-bwlimit" inputMode="numeric" value={form.bwlimit} onInput={set("bwlimit")} />
          </Field>
          <OtherErrors errors={errors} shown={["storage", "format", "bwlimit"]} />
          <OutcomeMessage outcome={outcome} id="hw-move-message" />
        </Dialog>
      )}
      {editing?.kind === "remove" && (
        <Dialog title={t("hw.remove")} danger onOk={save} onCancel={() => setEditing(null)}>
          <p>{t(DISK_KEY.test(editing.key) && kindOf(editing.key, current(editing.key)) === "disk"
            ? "hw.confirm.detach" : "hw.confirm.remove", { key: editing.key })}</p>
          <OtherErrors errors={errors} shown={[]} />
        </Dialog>
      )}
      <TaskArea outcome={outcome} onDone={pending.refresh} />
    </section>
  );
}

function order(key: string): number {
  const kinds: Kind[] = ["memory", "processors", "disk", "cdrom", "cloudinit", "efidisk", "tpm", "net", "unused"];
  return kinds.indexOf(kindOf(key, ""));
}
