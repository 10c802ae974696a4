// The VM's Backup tab: its backups on every storage of its node that holds backups
// (GET .../storage?content=backup, then each one's content for this vmid), "Backup now"
// (POST /nodes/{node}/vzdump: storage, mode, compress), restore over this VM (POST
// /nodes/{node}/qemu with archive and force, live-restore if asked, after a
// confirmation) and delete. Each
// starts a task, followed in the task viewer; the list refreshes when it ends.
import { useEffect, useState } from "preact/hooks";
import { get } from "../../api";
import { t } from "../../strings";
import * as fmt from "../../format";
import { Dialog } from "../Confirm";
import { Field, OtherErrors, OutcomeMessage, TaskArea, useOutcome } from "../forms";

interface BackupVolume { volid: string; size?: number; ctime?: number; notes?: string; protected?: number; format?: string }
interface StorageEntry { storage: string; active?: number; enabled?: number }

type Editing = { kind: "backup" } | { kind: "restore"; volid: string } | { kind: "delete"; volid: string };

export function Backup(props: { node: string; vmid: number; running: boolean }) {
  const nodePath = `/nodes/${encodeURIComponent(props.node)}`;
  const [storages, setStorages] = useState<string[]>([]);
  const [volumes, setVolumes] = useState<BackupVolume[] | null>(null);
  const [loadError, setLoadError] = useState<string | null>(null);
  const [generation, setGeneration] = useState(0);
  const reload = () => setGeneration((g) => g + 1);
  const outcome = useOutcome();
  const [editing, setEditing] = useState<Editing | null>(null);
  const [form, setForm] = useState({ storage: "", mode: "snapshot", compress: "zstd" });
  const [live, setLive] = useState(false);   // restore: start at once (live-restore)

  useEffect(() => {
    let alive = true;
    (async () => {
      try {
        const list = await get<StorageEntry[]>(`${nodePath}/storage`, { content: "backup" });
        const names = list.filter((s) => s.active !== 0).map((s) => s.storage);
        const found = await Promise.all(names.map((s) => get<BackupVolume[]>(
          `${nodePath}/storage/${encodeURIComponent(s)}/content`, { content: "backup", vmid: props.vmid })));
        if (!alive) return;
        setStorages(names);
        setVolumes(found.flat().sort((a, b) => (b.ctime ?? 0) - (a.ctime ?? 0)));
        setLoadError(null);
      } catch (e) {
        if (alive) setLoadError((e as Error).message);
      }
    })();
    return () => { alive = false; };
  }, [props.node, props.vmid, generation]);

  const open = (e: Editing) => {
    outcome.clear();
    if (e.kind === "backup") setForm((f) => ({ ...f, storage: f.storage || storages[0] || "" }));
    if (e.kind === "restore") setLive(false);
    setEditing(e);
  };
  const save = async () => {
    if (!editing) return;
    let ok = false;
    if (editing.kind === "backup") {
      ok = await outcome.send("POST", `${nodePath}/vzdump`, {
        vmid: String(props.vmid), storage: form.storage, mode: form.mode, compress: form.compress });
    } else if (editing.kind === "restore") {
      ok = await outcome.send("POST", `${nodePath}/qemu`, {
        vmid: props.vmid, archive: editing.volid, force: true, ...(live ? { "live-restore": true } : {}) });
    } else {
      const storage = editing.volid.split(":")[0];
      ok = await outcome.send("DELETE",
        `${nodePath}/storage/${encodeURIComponent(storage)}/content/${encodeURIComponent(editing.volid)}`);
    }
    if (ok) setEditing(null);
  };
  const errors = outcome.errors;
  const set = (k: keyof typeof form) => (e: Event) =>
    setForm({ ...form, [k]: (e.currentTarget as HTMLSelectElement).value });
  return (
    <section class="card" id="vm-backup" aria-label={t("vm.tab.backup")}>
      <div class="toolbar" role="toolbar">
        <button id="backup-now" disabled={!storages.length} onClick={() => open({ kind: "backup" })}>
          {t("backup.now")}</button>
        <button id="backup-refresh" onClick={reload}>{t("backup.refresh")}</button>
      </div>
      <OutcomeMessage outcome={outcome} id="backup-message" />
      {!editing && <OtherErrors errors={errors} shown={[]} />}
      {loadError && <p class="error">{t("common.error", { message: loadError })}</p>}
      {volumes && storages.length === 0 && <p>{t("backup.nostorage", { node: props.node })}</p>}
      <div class="table-wrap">
        <table id="backup-table">
          <thead><tr><th>{t("backup.volume")}</th><th>{t("snap.date")}</th><th>{t("backup.size")}</th>
            <th>{t("backup.notes")}</th><th>{t("opt.protection")}</th><th /></tr></thead>
          <tbody>
            {volumes && volumes.length === 0 && <tr><td colSpan={6}>{t("backup.none")}</td></tr>}
            {(volumes ?? []).map((v) => (
              <tr key={v.volid} data-volid={v.volid}>
                <td>{v.volid}</td><td>{fmt.time(v.ctime)}</td><td>{fmt.bytes(v.size)}</td>
                <td>{v.notes ?? ""}</td><td>{v.protected ? "✓" : ""}</td>
                <td class="row-actions">
                  <button class="backup-restore" onClick={() => open({ kind: "restore", volid: v.volid })}>{t("backup.restore")}</button>
                  <button class="backup-delete" disabled={!!v.protected}
                    onClick={() => open({ kind: "delete", volid: v.volid })}>{t("snap.delete")}</button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {editing?.kind === "backup" && (
        <Dialog title={t("backup.now")} okLabel={t("backup.start")} onOk={save}
          okDisabled={outcome.busy || !form.storage} onCancel={() => setEditing(null)}>
          <Field label={t("backup.storage")} param="storage" errors={errors}>
            <select id="backup-storage" value={form.storage} onChange={set("storage")}>
              {storages.map((s) => <option key={s} value={s}>{s}</option>)}</select>
          </Field>
          <Field label={t("backup.mode")} param="mode" errors={errors}>
            <select id="backup-mode" value={form.mode} onChange={set("mode")}>
              {["snapshot", "suspend", "stop"].map((m) => <option key={m} value={m}>{m}</option>)}</select>
          </Field>
          <Field label={t("backup.compress")} param="compress" errors={errors}>
            <select id="backup-compress" value={form.compress} onChange={set("compress")}>
              {["zstd", "gzip", "lzo", "0"].map((m) => <option key={m} value={m}>{m}</option>)}</select>
          </Field>
          <OtherErrors errors={errors} shown={["storage", "mode", "compress"]} />
        </Dialog>
      )}
      {(editing?.kind === "restore" || editing?.kind === "delete") && (
        <Dialog title={t(editing.kind === "restore" ? "backup.restore" : "snap.delete")} danger
          onOk={save} onCancel={() => setEditing(null)}>
          <p>{t(editing.kind === "restore" ? "backup.confirm.restore" : "backup.confirm.delete",
            { volid: editing.volid, vmid: props.vmid })}</p>
          {editing.kind === "restore" && props.running && <p class="error">{t("backup.restore.running")}</p>}
          {editing.kind === "restore" && <label class="check"><input type="checkbox" id="backup-restore-live"
            checked={live} onChange={(e) => setLive(e.currentTarget.checked)} />{t("backup.restore.live")}</label>}
          <OtherErrors errors={errors} shown={[]} />
        </Dialog>
      )}
      <TaskArea outcome={outcome} onDone={reload} />
    </section>
  );
}
