// Datacenter → Backup: the scheduled backup jobs (/cluster/backup) with their schedule,
// next run and selection; create, edit (PUT with the digest), delete after a
// confirmation, and "Run now", which does what PVE's button does: one vzdump task per
// node that holds guests of the job (POST /nodes/{node}/vzdump with the job's settings).
import { useState } from "preact/hooks";
import { get } from "../api";
import { usePoll } from "../poll";
import { t } from "../strings";
import * as fmt from "../format";
import type { Resource } from "../types";
import { Dialog } from "./Confirm";
import { DcTabs } from "./DcViews";
import { useKnownPerms } from "./access/perms";
import { Field, OtherErrors, OutcomeMessage, TaskArea, useOutcome } from "./forms";

interface BackupJob {
  id: string; schedule?: string; enabled?: number; "next-run"?: number; storage?: string;
  vmid?: string; all?: number; pool?: string; exclude?: string; mode?: string; compress?: string;
  comment?: string; node?: string;
}
interface StorageDef { storage: string; content?: string }

const FORM_KEYS = ["id", "schedule", "storage", "selection", "vmid", "pool", "exclude", "mode",
  "compress", "enabled", "comment"] as const;
type Form = Record<(typeof FORM_KEYS)[number], string>;

/** The job's guests in words: its VM list, all (but some), or a pool. */
export function selectionText(job: BackupJob): string {
  if (job.pool) return t("bjob.sel.pool", { pool: job.pool });
  if (job.all) return job.exclude ? t("bjob.sel.allbut", { exclude: job.exclude }) : t("bjob.sel.all");
  return job.vmid ?? "";
}

export function BackupJobs(props: { resources: Resource[] }) {
  const jobs = usePoll<BackupJob[]>("/cluster/backup", 5000);
  const storages = usePoll<StorageDef[]>("/storage", 15000);
  const outcome = useOutcome(() => jobs.refresh());
  const perms = useKnownPerms();
  const [editing, setEditing] = useState<{ kind: "edit"; job: BackupJob | null; digest?: string }
    | { kind: "delete"; id: string } | { kind: "run"; job: BackupJob } | null>(null);
  const [form, setForm] = useState<Form>({} as Form);
  const backupStorages = (storages.data ?? []).filter((s) => (s.content ?? "").split(",").includes("backup"))
    .map((s) => s.storage);

  const openEdit = async (job: BackupJob | null) => {
    outcome.clear();
    let digest: string | undefined;
    let j = job;
    if (job) {
      const full = await get<BackupJob & { digest?: string }>(`/cluster/backup/${encodeURIComponent(job.id)}`)
        .catch(() => null);
      if (full) { j = full; digest = full.digest; }
    }
    setForm({
      id: j?.id ?? "", schedule: j?.schedule ?? "21:00", storage: j?.storage ?? backupStorages[0] ?? "",
      selection: j?.pool ? "pool" : j?.all ? "all" : "vmid", vmid: j?.vmid ?? "", pool: j?.pool ?? "",
      exclude: j?.exclude ?? "", mode: j?.mode ?? "snapshot", compress: j?.compress ?? "zstd",
      enabled: j && j.enabled === 0 ? "0" : "1", comment: j?.comment ?? "",
    });
    setEditing({ kind: "edit", job, digest });
  };

  const save = async () => {
    if (!editing) return;
    let ok = false;
    if (editing.kind === "edit") {
      const p: Record<string, string | boolean | undefined> = {
        schedule: form.schedule, storage: form.storage || undefined, mode: form.mode,
        compress: form.compress, enabled: form.enabled === "1", comment: form.comment || undefined,
      };
      const deletes: string[] = [];
      if (form.selection === "vmid") { p.vmid = form.vmid; deletes.push("all", "pool", "exclude"); }
      if (form.selection === "all") { p.all = true; p.exclude = form.exclude || undefined; deletes.push("vmid", "pool"); }
      if (form.selection === "pool") { p.pool = form.pool; deletes.push("vmid", "all", "exclude"); }
      if (editing.job) {
        if (!form.comment && editing.job.comment) deletes.push("comment");
        if (!form.exclude && editing.job.exclude && form.selection === "all") deletes.push("exclude");
        // only what the job has can be deleted
        const present = deletes.filter((k) => (editing.job as unknown as Record<string, unknown>)[k] !== undefined);
        if (present.length) p.delete = present.join(",");
        p.digest = editing.digest;
        ok = await outcome.send("PUT", `/cluster/backup/${encodeURIComponent(editing.job.id)}`, p,
          t("bjob.saved", { id: editing.job.id }));
      } else {
        p.id = form.id || undefined;
        ok = await outcome.send("POST", "/cluster/backup", p, t("bjob.created"));
      }
    } else if (editing.kind === "delete") {
      ok = await outcome.send("DELETE", `/cluster/backup/${encodeURIComponent(editing.id)}`, {},
        t("bjob.deleted", { id: editing.id }));
    } else {
      ok = await runNow(editing.job);
    }
    if (ok) setEditing(null);
  };

  const runNow = async (job: BackupJob) => {
    const vms = props.resources.filter((r) => r.type === "qemu");
    const byNode = new Map<string, number[]>();
    const wanted = job.pool ? vms.filter((v) => v.pool === job.pool)
      : job.all ? vms.filter((v) => !(job.exclude ?? "").split(/[\s,;]+/).includes(String(v.vmid)))
      : vms.filter((v) => (job.vmid ?? "").split(/[\s,;]+/).includes(String(v.vmid)));
    for (const v of wanted) {
      if (job.node && v.node !== job.node) continue;
      byNode.set(v.node ?? "", [...(byNode.get(v.node ?? "") ?? []), v.vmid ?? 0]);
    }
    if (!byNode.size) {
      outcome.note(t("bjob.run.empty", { id: job.id }), true);
      return true;
    }
    let ok = true;
    for (const [node, vmids] of byNode) {
      ok = await outcome.send("POST", `/nodes/${encodeURIComponent(node)}/vzdump`, {
        vmid: vmids.join(","), storage: job.storage, mode: job.mode, compress: job.compress }) && ok;
    }
    return ok;
  };

  const set = (k: keyof Form) => (e: Event) =>
    setForm({ ...form, [k]: (e.currentTarget as HTMLInputElement).value });
  const errors = outcome.errors;
  // the write buttons: shown until /access/permissions answers, then only with Sys.Modify
  const write = perms === null || perms.can("/", "Sys.Modify");
  return (
    <div class="view" id="view-dc-backup">
      <DcTabs current="backup" />
      {write && <div class="toolbar" role="toolbar">
        <button id="bjob-add" onClick={() => openEdit(null)}>{t("bjob.add")}</button>
      </div>}
      <OutcomeMessage outcome={outcome} id="bjob-message" />
      {!editing && <OtherErrors errors={errors} shown={[]} />}
      {jobs.error && <p class="error">{t("common.error", { message: jobs.error.message })}</p>}
      <div class="table-wrap">
        <table id="bjob-table">
          <thead><tr><th>{t("bjob.id")}</th><th>{t("storage.enabled")}</th><th>{t("bjob.schedule")}</th>
            <th>{t("bjob.next")}</th><th>{t("backup.storage")}</th><th>{t("bjob.selection")}</th>
            <th>{t("backup.mode")}</th><th>{t("opt.description")}</th><th /></tr></thead>
          <tbody>
            {jobs.data && jobs.data.length === 0 && <tr><td colSpan={9}>{t("bjob.none")}</td></tr>}
            {(jobs.data ?? []).map((j) => (
              <tr key={j.id} data-job={j.id}>
                <td>{j.id}</td><td>{j.enabled === 0 ? "" : "✓"}</td><td>{j.schedule}</td>
                <td>{j.enabled === 0 ? "—" : fmt.time(j["next-run"])}</td><td>{j.storage ?? ""}</td>
                <td class="bjob-selection">{selectionText(j)}</td><td>{j.mode ?? ""}</td><td>{j.comment ?? ""}</td>
                <td class="row-actions">{write && <>
                  <button class="bjob-edit" onClick={() => openEdit(j)}>{t("hw.edit")}</button>
                  <button class="bjob-run" onClick={() => { outcome.clear(); setEditing({ kind: "run", job: j }); }}>{t("bjob.run")}</button>
                  <button class="bjob-delete" onClick={() => { outcome.clear(); setEditing({ kind: "delete", id: j.id }); }}>{t("snap.delete")}</button>
                </>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {editing?.kind === "edit" && (
        <Dialog title={editing.job ? t("bjob.edit", { id: editing.job.id }) : t("bjob.add")}
          onOk={save} okDisabled={outcome.busy} onCancel={() => setEditing(null)}>
          {!editing.job && <Field label={t("bjob.id")} param="id" errors={errors}>
            <input id="bjob-id" value={form.id} onInput={set("id")} placeholder={t("bjob.id.auto")} /></Field>}
          <Field label={t("bjob.schedule")} param="schedule" errors={errors}>
            <input id="bjob-schedule" value={form.schedule} onInput={set("schedule")} placeholder="sat 02:00" /></Field>
          <Field label={t("backup.storage")} param="storage" errors={errors}>
            <select id="bjob-storage" value={form.storage} onChange={set("storage")}>
              {backupStorages.map((s) => <option key={s} value={s}>{s}</option>)}</select></Field>
          <Field label={t("bjob.selection")} param="selection" errors={errors}>
            <select id="bjob-selection" value={form.selection} onChange={set("selection")}>
              <option value="vmid">{t("bjob.sel.vmids")}</option>
              <option value="all">{t("bjob.sel.all")}</option>
              <option value="pool">{t("bjob.sel.poolopt")}</option></select></Field>
          {form.selection === "vmid" && <Field label={t("bjob.vmids")} param="vmid" errors={errors}>
            <input id="bjob-vmid" value={form.vmid} onInput={set("vmid")} placeholder="100,101" /></Field>}
          {form.selection === "all" && <Field label={t("bjob.exclude")} param="exclude" errors={errors}>
            <input id="bjob-exclude" value={form.exclude} onInput={set("exclude")} /></Field>}
          {form.selection === "pool" && <Field label={t("create.pool")} param="pool" errors={errors}>
            <input id="bjob-pool" value={form.pool} onInput={set("pool")} /></Field>}
          <Field label={t("backup.mode")} param="mode" errors={errors}>
            <select id="bjob-mode" value={form.mode} onChange={set("mode")}>
              {["snapshot", "suspend", "stop"].map((m) => <option key={m} value={m}>{m}</option>)}</select></Field>
          <Field label={t("backup.compress")} param="compress" errors={errors}>
            <select id="bjob-compress" value={form.compress} onChange={set("compress")}>
              {["zstd", "gzip", "lzo", "0"].map((m) => <option key={m} value={m}>{m}</option>)}</select></Field>
          <label class="check"><input type="checkbox" id="bjob-enabled" checked={form.enabled === "1"}
            onChange={(e) => setForm({ ...form, enabled: e.currentTarget.checked ? "1" : "0" })} />
            {t("storage.enabled")}</label>
          <Field label={t("opt.description")} param="comment" errors={errors}>
            <input id="bjob-comment" value={form.comment} onInput={set("comment")} /></Field>
          <OtherErrors errors={errors} shown={[...FORM_KEYS, "all"]} />
        </Dialog>
      )}
      {editing?.kind === "delete" && (
        <Dialog title={t("snap.delete")} danger onOk={save} onCancel={() => setEditing(null)}>
          <p>{t("bjob.confirm.delete", { id: editing.id })}</p>
        </Dialog>
      )}
      {editing?.kind === "run" && (
        <Dialog title={t("bjob.run")} onOk={save} okDisabled={outcome.busy} onCancel={() => setEditing(null)}>
          <p>{t("bjob.confirm.run", { id: editing.job.id, selection: selectionText(editing.job) })}</p>
          <OtherErrors errors={errors} shown={[]} />
        </Dialog>
      )}
      <TaskArea outcome={outcome} />
    </div>
  );
}
