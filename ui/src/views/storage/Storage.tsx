// The storage pages, loaded when first opened: the datacenter's storage definitions
// (add, edit with per-parameter errors, remove: /storage; a binome-backup storage's
// server, token and encryption key, of which only the fingerprint is ever shown, and the
// key file given to a node: POST .../encryption-key) and a node's storage content
// (GET .../content, delete a volume, upload an ISO image, template or snippet with its
// progress: POST .../upload as multipart, followed by its task; on a backup storage
// prune with its dry-run preview (GET/DELETE .../prunebackups), verify and GC, each task
// followed by the task viewer).
import { useEffect, useState } from "preact/hooks";
import { ApiError, currentSession, get, request } from "../../api";
import { usePoll } from "../../poll";
import { href } from "../../route";
import { t } from "../../strings";
import * as fmt from "../../format";
import type { Resource } from "../../types";
import { Dialog } from "../Confirm";
import { DcTabs } from "../DcViews";
import { Field, OtherErrors, OutcomeMessage, TaskViewer, useOutcome } from "../forms";
import {
  BACKUP_SERVER, CONTENT_TYPES, KEEP_OPTIONS, backupMaintenance, createParams, deleteBlocker,
  emptyKeep, formOf, percent, pruneParams, removedCount, updateParams, uploadFields,
  type KeepForm, type PruneMark, type StorageDef, type StorageForm, type Volume,
} from "./storage";

const TYPES = ["dir", "replicated", BACKUP_SERVER];

/** Datacenter -> Storage: the definitions, with add / edit / remove. */
export function StoragePage(props: { resources: Resource[] }) {
  const { data, error, refresh } = usePoll<StorageDef[]>("/storage", 5000);
  const [editing, setEditing] = useState<StorageDef | "new" | null>(null);
  const [removing, setRemoving] = useState<string | null>(null);
  const outcome = useOutcome(refresh);
  const nodes = props.resources.filter((r) => r.type === "node").map((r) => r.node ?? "")
    .sort();
  const open = async (s: StorageDef) => {
    outcome.clear();
    try {
      setEditing(await get<StorageDef>(`/storage/${encodeURIComponent(s.storage)}`));
    } catch (e) {
      outcome.note(t("common.error", { message: (e as Error).message }), true);
    }
  };
  return (
    <div class="view" id="view-dc-storage">
      <DcTabs current="storage" />
      {error && <p class="error">{t("common.error", { message: error.message })}</p>}
      <div class="toolbar">
        <button type="button" id="storage-add" onClick={() => { outcome.clear(); setEditing("new"); }}>
          {t("storage.add")}</button>
      </div>
      <OutcomeMessage outcome={outcome} id="storage-message" />
      <div class="table-wrap">
        <table id="dc-storage-table">
          <thead><tr><th>{t("col.name")}</th><th>{t("storage.type")}</th><th>{t("storage.content")}</th>
            <th>{t("storage.path")}</th><th>{t("storage.shared")}</th><th>{t("storage.nodes")}</th>
            <th>{t("storage.enabled")}</th><th>{t("storage.contentof")}</th><th /></tr></thead>
          <tbody>
            {(data ?? []).map((s) => (
              <tr key={s.storage} data-storage={s.storage}>
                <td>{s.storage}</td><td>{s.type}</td><td>{s.content}</td><td>{s.path ?? ""}</td>
                <td>{s.shared ? "✓" : ""}</td><td>{s.nodes ?? t("storage.allnodes")}</td>
                <td>{s.disable ? "" : "✓"}</td>
                <td>{(s.nodes ? s.nodes.split(",") : nodes).map((n) => (
                  <a key={n} class="storage-content-link" data-node={n}
                    href={href({ kind: "storage", node: n, storage: s.storage })}>{n} </a>))}</td>
                <td>
                  <button type="button" data-action="edit" onClick={() => open(s)}>{t("storage.edit")}</button>
                  <button type="button" data-action="remove" class="danger"
                    onClick={() => { outcome.clear(); setRemoving(s.storage); }}>{t("storage.remove")}</button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {editing && <StorageEditor key={editing === "new" ? "" : editing.storage} nodes={nodes}
        def={editing === "new" ? null : editing} onDone={() => { setEditing(null); refresh(); }} />}
      {removing && <Dialog title={t("storage.remove")} danger okLabel={t("storage.remove")}
        onCancel={() => setRemoving(null)}
        onOk={() => {
          const id = removing;
          setRemoving(null);
          outcome.send("DELETE", `/storage/${encodeURIComponent(id)}`, {},
            t("storage.removed", { storage: id }));
        }}>
        <p>{t("storage.confirm.remove", { storage: removing })}</p>
      </Dialog>}
    </div>
  );
}

function StorageEditor(props: { def: StorageDef | null; nodes: string[]; onDone: () => void }) {
  const [form, setForm] = useState<StorageForm>(() => formOf(props.def));
  const outcome = useOutcome();
  const set = (patch: Partial<StorageForm>) => setForm({ ...form, ...patch });
  const adding = props.def === null;
  const save = async () => {
    if (adding) {
      if (await outcome.send("POST", "/storage", createParams(form))) props.onDone();
      return;
    }
    const params = updateParams(props.def!, form);
    if (!params) { outcome.note(t("storage.nochange"), false); return; }
    if (await outcome.send("PUT", `/storage/${encodeURIComponent(form.storage)}`, params)) {
      props.onDone();
    }
  };
  const e = outcome.errors;
  const server = form.type === BACKUP_SERVER;
  const text = (k: "server" | "port" | "datastore" | "username" | "password" | "fingerprint",
                label: string, extra: Record<string, string> = {}) => (
    <Field label={label} param={k} errors={e}>
      <input id={`storage-${k}`} value={form[k]} {...extra}
        onInput={(ev) => set({ [k]: (ev.target as HTMLInputElement).value } as Partial<StorageForm>)} /></Field>);
  return (
    <section class="card" id="storage-form" aria-label={t("storage.add")}>
      <h2>{adding ? t("storage.title.add") : t("storage.title.edit", { storage: form.storage })}</h2>
      <form onSubmit={(ev) => { ev.preventDefault(); save(); }}>
        <Field label={t("storage.id")} param="storage" errors={e}>
          <input id="storage-id" value={form.storage} disabled={!adding}
            onInput={(ev) => set({ storage: (ev.target as HTMLInputElement).value })} /></Field>
        <Field label={t("storage.type")} param="type" errors={e}>
          <select id="storage-type" value={form.type} disabled={!adding}
            onChange={(ev) => {
              const type = (ev.target as HTMLSelectElement).value;
              // a backup server holds backups only (the API refuses other content)
              set(type === BACKUP_SERVER ? { type, content: ["backup"], shared: true }
                : { type, ...(form.type === BACKUP_SERVER ? { content: ["images", "iso"], shared: false } : {}) });
            }}>
            {TYPES.map((x) => <option key={x} value={x}>{x}</option>)}
          </select></Field>
        {!server && <Field label={t("storage.path")} param="path" errors={e}>
          <input id="storage-path" value={form.path} disabled={!adding}
            onInput={(ev) => set({ path: (ev.target as HTMLInputElement).value })} /></Field>}
        {server && <>
          {text("server", t("storage.server"))}
          {text("port", t("storage.port"), { inputMode: "numeric", placeholder: t("storage.port.help") })}
          {text("datastore", t("storage.datastore"))}
          {text("username", t("storage.username"), { placeholder: "user@realm!token" })}
          {text("password", t("storage.password"), { type: "password", autocomplete: "new-password",
            ...(adding ? {} : { placeholder: t("storage.password.keep") }) })}
          {text("fingerprint", t("storage.fingerprint"), { placeholder: "AA:BB:..." })}
          {adding ? <KeyChoice form={form} set={set} errors={e} />
            : <KeyOfStorage def={props.def!} nodes={props.nodes} />}
        </>}
        <Field label={t("storage.content")} param="content" errors={e}>
          <span class="checks">{CONTENT_TYPES.map((c) => (
            <label key={c}><input type="checkbox" name={`content-${c}`} checked={form.content.includes(c)}
              onChange={(ev) => set({ content: (ev.target as HTMLInputElement).checked
                ? [...form.content, c] : form.content.filter((x) => x !== c) })} /> {c}</label>))}
          </span></Field>
        <Field label={t("storage.nodes")} param="nodes" errors={e}>
          <input id="storage-nodes" value={form.nodes} placeholder={t("storage.nodes.help")}
            onInput={(ev) => set({ nodes: (ev.target as HTMLInputElement).value })} /></Field>
        <Field label={t("storage.shared")} param="shared" errors={e}>
          <input type="checkbox" id="storage-shared" checked={form.shared}
            onChange={(ev) => set({ shared: (ev.target as HTMLInputElement).checked })} /></Field>
        <Field label={t("storage.disable")} param="disable" errors={e}>
          <input type="checkbox" id="storage-disable" checked={form.disable}
            onChange={(ev) => set({ disable: (ev.target as HTMLInputElement).checked })} /></Field>
        <OtherErrors errors={e} shown={["storage", "type", "path", "content", "nodes", "shared", "disable",
          "server", "port", "datastore", "username", "password", "fingerprint", "encryption-key"]} />
        <OutcomeMessage outcome={outcome} id="storage-form-message" />
        <div class="dialog-buttons">
          <button type="button" onClick={props.onDone}>{t("dialog.cancel")}</button>
          <button type="submit" class="primary" id="storage-save" disabled={outcome.busy}>
            {t("storage.save")}</button>
        </div>
      </form>
    </section>
  );
}

/** A new binome-backup storage's encryption key: none, autogen, or a pasted key file
 * (write-only: sent once, never read back). */
function KeyChoice(props: { form: StorageForm; set: (p: Partial<StorageForm>) => void;
                            errors: Record<string, string> }) {
  const f = props.form;
  return (
    <fieldset data-param="encryption-key" class="storage-key">
      <legend>{t("storage.key")}</legend>
      {(["", "autogen", "paste"] as const).map((m) => (
        <label key={m}><input type="radio" name="storage-key-mode" value={m} checked={f.keyMode === m}
          id={`storage-key-${m || "none"}`}
          onChange={() => props.set({ keyMode: m })} />
          {" "}{t(m === "" ? "storage.key.none" : m === "autogen" ? "storage.key.autogen" : "storage.key.paste")}</label>))}
      {f.keyMode === "autogen" && <p class="notice">{t("storage.key.autogen.help", { storage: f.storage || "ID" })}</p>}
      {f.keyMode === "paste" && <label class="field">{t("storage.key.file")}
        <textarea id="storage-key-text" rows={4} value={f.key} spellcheck={false} autocomplete="off"
          onInput={(ev) => props.set({ key: (ev.target as HTMLTextAreaElement).value })} /></label>}
      {props.errors["encryption-key"] && <span class="field-error error" id="error-encryption-key">
        {props.errors["encryption-key"]}</span>}
    </fieldset>
  );
}

/** An existing binome-backup storage's key: its fingerprint only, and the key file given
 * to a node that was down when the storage was added (root only, checked by the API). */
function KeyOfStorage(props: { def: StorageDef; nodes: string[] }) {
  const fp = props.def["encryption-key"];
  const [node, setNode] = useState(props.nodes[0] ?? "");
  const [key, setKey] = useState("");
  const outcome = useOutcome();
  const send = async () => {
    const path = `/nodes/${encodeURIComponent(node)}/storage/${encodeURIComponent(props.def.storage)}/encryption-key`;
    if (await outcome.send("POST", path, { key: key.trim() },
                           t("storage.key.sent", { node, storage: props.def.storage }))) setKey("");
  };
  return (
    <fieldset class="storage-key" id="storage-key">
      <legend>{t("storage.key")}</legend>
      <p>{t("storage.key.fingerprint")}: <code id="storage-key-fingerprint">{fp ?? t("storage.key.unset")}</code></p>
      <p class="notice">{t("storage.key.fixed")}</p>
      {fp && <>
        <p class="notice">{t("storage.key.send")}: {t("storage.key.send.help")}</p>
        <Field label={t("storage.key.node")} param="node" errors={outcome.errors}>
          <select id="storage-key-node" value={node}
            onChange={(ev) => setNode((ev.target as HTMLSelectElement).value)}>
            {props.nodes.map((n) => <option key={n} value={n}>{n}</option>)}
          </select></Field>
        <Field label={t("storage.key.file")} param="key" errors={outcome.errors}>
          <textarea id="storage-key-text" rows={4} value={key} spellcheck={false} autocomplete="off"
            onInput={(ev) => setKey((ev.target as HTMLTextAreaElement).value)} /></Field>
        <OtherErrors errors={outcome.errors} shown={["node", "key"]} />
        <OutcomeMessage outcome={outcome} id="storage-key-message" />
        <button type="button" id="storage-key-send" disabled={outcome.busy || !key.trim() || !node}
          onClick={send}>{t("storage.key.sendbutton")}</button>
      </>}
    </fieldset>
  );
}

/** Node -> a storage: its volumes (delete) and the upload of ISO images, templates and
 * snippets, with the upload's progress and then its task. */
export function StorageContent(props: { node: string; storage: string; resources: Resource[] }) {
  const base = `/nodes/${encodeURIComponent(props.node)}/storage/${encodeURIComponent(props.storage)}`;
  const { data, error, refresh } = usePoll<Volume[]>(`${base}/content`, 5000);
  const outcome = useOutcome(refresh);
  const [deleting, setDeleting] = useState<string | null>(null);
  const [upid, setUpid] = useState<string | null>(null);
  const vmids = new Set(props.resources.filter((r) => r.type === "qemu").map((r) => r.vmid ?? -1));
  const status = usePoll<{ type?: string; content?: string }>(`${base}/status`, 30000).data;
  const [pruning, setPruning] = useState(false);
  const backups = backupMaintenance(status?.type, status?.content);
  return (
    <div class="view" id="view-storage-content" data-node={props.node} data-storage={props.storage}>
      <h1>{t("storage.node.title", { storage: props.storage, node: props.node })}</h1>
      {error && <p class="error">{t("common.error", { message: error.message })}</p>}
      {backups && <div class="toolbar" id="storage-backup-actions">
        <button type="button" id="storage-prune" onClick={() => { outcome.clear(); setPruning(true); }}>
          {t("storage.prune")}</button>
        <button type="button" id="storage-verify" disabled={outcome.busy}
          onClick={() => outcome.send("POST", `${base}/verify`)}>{t("storage.verify")}</button>
        <button type="button" id="storage-gc" disabled={outcome.busy}
          onClick={() => outcome.send("POST", `${base}/gc`)}>{t("storage.gc")}</button>
      </div>}
      <OutcomeMessage outcome={outcome} id="storage-content-message" />
      {pruning && <PruneDialog base={base} storage={props.storage}
        onCancel={() => setPruning(false)}
        onTask={(u) => { setPruning(false); setUpid(u); refresh(); }} />}
      <Upload base={base} onTask={(u) => { setUpid(u); refresh(); }} />
      {(upid ?? outcome.upid) && <TaskViewer key={upid ?? outcome.upid!} upid={(upid ?? outcome.upid)!}
        onClose={() => { setUpid(null); outcome.closeTask(); }} onDone={refresh} />}
      <div class="table-wrap">
        <table id="storage-content-table">
          <thead><tr><th>{t("storage.col.volume")}</th><th>{t("storage.content")}</th>
            <th>{t("storage.col.format")}</th><th>{t("storage.col.size")}</th>
            <th>{t("storage.col.vmid")}</th><th /></tr></thead>
          <tbody>
            {(data ?? []).map((v) => {
              const blocked = deleteBlocker(v, vmids);
              return (
                <tr key={v.volid} data-volid={v.volid}>
                  <td>{v.volid}</td><td>{v.content}</td><td>{v.format ?? ""}</td>
                  <td>{fmt.bytes(v.size)}</td><td>{v.vmid ?? ""}</td>
                  <td><button type="button" data-action="delete" class="danger" disabled={!!blocked}
                    title={blocked ? t("storage.guestimage") : undefined}
                    onClick={() => { outcome.clear(); setDeleting(v.volid); }}>{t("storage.delete")}</button></td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
      {deleting && <Dialog title={t("storage.delete")} danger okLabel={t("storage.delete")}
        onCancel={() => setDeleting(null)}
        onOk={() => {
          const volid = deleting;
          setDeleting(null);
          outcome.send("DELETE", `${base}/content/${encodeURIComponent(volid)}`);
        }}>
        <p>{t("storage.confirm.delete", { volid: deleting })}</p>
      </Dialog>}
    </div>
  );
}

/** Prune: the retention counts and an optional guest, the dry run's list of what is kept
 * and removed (updated as the counts change), then the prune itself (a task). */
function PruneDialog(props: { base: string; storage: string; onCancel: () => void;
                              onTask: (upid: string) => void }) {
  const [keep, setKeep] = useState<KeepForm>(() => ({ ...emptyKeep(), "keep-last": "1" }));
  const [vmid, setVmid] = useState("");
  const [marks, setMarks] = useState<PruneMark[] | null>(null);
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [message, setMessage] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const params = pruneParams(keep, vmid);
  const key = JSON.stringify(params);
  const fail = (e: unknown) => {
    const err = e instanceof ApiError ? e : new ApiError(0, String(e));
    setErrors(err.errors ?? {});
    setMessage(t("common.error", { message: err.message }));
  };
  useEffect(() => {   // the dry run, a moment after the last keystroke
    let alive = true;
    setMarks(null);
    const timer = window.setTimeout(async () => {
      try {
        const list = await get<PruneMark[]>(`${props.base}/prunebackups`, params);
        if (!alive) return;
        setMarks([...list].sort((a, b) => (a.vmid ?? 0) - (b.vmid ?? 0) || (b.ctime ?? 0) - (a.ctime ?? 0)));
        setErrors({});
        setMessage(null);
      } catch (e) {
        if (alive) fail(e);
      }
    }, 300);
    return () => { alive = false; window.clearTimeout(timer); };
  }, [key]);
  const prune = async () => {
    setBusy(true);
    try {
      props.onTask(await request<string>("DELETE", `${props.base}/prunebackups`, params));
    } catch (e) {
      fail(e);
    } finally {
      setBusy(false);
    }
  };
  const removing = marks ? removedCount(marks) : 0;
  return (
    <Dialog title={t("storage.prune.title", { storage: props.storage })} danger
      okLabel={t("storage.prune.go")} okDisabled={busy || !marks || removing === 0}
      onCancel={props.onCancel} onOk={prune}>
      <fieldset data-param="prune-backups" id="prune-retention">
        <legend>{t("storage.prune.retention")}</legend>
        {KEEP_OPTIONS.map((o) => (
          <label class="field" key={o}>{t(`storage.${o}` as const)}
            <input id={`prune-${o}`} inputMode="numeric" size={4} value={keep[o]}
              onInput={(ev) => setKeep({ ...keep, [o]: (ev.target as HTMLInputElement).value })} /></label>))}
        {errors["prune-backups"] && <span class="field-error error" id="error-prune-backups">
          {errors["prune-backups"]}</span>}
        {params["prune-backups"] === "keep-all=1" && <p class="notice">{t("storage.prune.keepall")}</p>}
      </fieldset>
      <Field label={t("storage.prune.vmid")} param="vmid" errors={errors}>
        <input id="prune-vmid" inputMode="numeric" value={vmid} placeholder={t("storage.prune.vmid.help")}
          onInput={(ev) => setVmid((ev.target as HTMLInputElement).value)} /></Field>
      <OtherErrors errors={errors} shown={["prune-backups", "vmid"]} />
      {message && <p class="error" role="status" id="prune-message">{message}</p>}
      <p>{t("storage.prune.preview")}</p>
      <p role="status" id="prune-summary">{marks === null ? (message ? "" : t("storage.prune.loading"))
        : marks.length === 0 ? t("storage.prune.none")
        : t("storage.prune.summary", { remove: removing, total: marks.length })}</p>
      <div class="table-wrap prune-preview">
        <table id="prune-preview" data-ready={marks === null ? "0" : "1"}>
          <thead><tr><th>{t("storage.col.volume")}</th><th>{t("storage.col.vmid")}</th>
            <th>{t("storage.prune.col.time")}</th><th>{t("storage.prune.col.mark")}</th></tr></thead>
          <tbody>
            {(marks ?? []).map((m) => (
              <tr key={m.volid} data-volid={m.volid} data-mark={m.mark}
                class={m.mark === "remove" ? "prune-remove" : undefined}>
                <td>{m.volid}</td><td>{m.vmid ?? ""}</td><td>{fmt.time(m.ctime)}</td>
                <td>{m.mark === "remove" ? t("storage.mark.remove") : m.mark === "protected"
                  ? t("storage.mark.protected") : t("storage.mark.keep")}</td>
              </tr>))}
          </tbody>
        </table>
      </div>
    </Dialog>
  );
}

const ALGORITHMS = ["md5", "sha1", "sha224", "sha256", "sha384", "sha512"];

function Upload(props: { base: string; onTask: (upid: string) => void }) {
  const [content, setContent] = useState("iso");
  const [algorithm, setAlgorithm] = useState("");
  const [checksum, setChecksum] = useState("");
  const [file, setFile] = useState<File | null>(null);
  const [progress, setProgress] = useState<number | null>(null);
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [message, setMessage] = useState<string | null>(null);
  const start = () => {
    setErrors({});
    setMessage(null);
    if (!file) { setMessage(t("storage.upload.nofile")); return; }
    // XMLHttpRequest, not fetch: only it reports the upload's progress
    const body = new FormData();
    for (const [k, v] of uploadFields(content, checksum, algorithm)) body.append(k, v);
    body.append("filename", file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/api2/json${props.base}/upload`);
    const session = currentSession();
    if (session) xhr.setRequestHeader("CSRFPreventionToken", session.csrf);
    xhr.upload.onprogress = (ev) => setProgress(percent(ev.loaded, ev.total));
    xhr.onload = () => {
      let payload: { data?: string; message?: string; errors?: Record<string, string> } = {};
      try { payload = JSON.parse(xhr.responseText); } catch { /* the status says it */ }
      setProgress(null);
      if (xhr.status === 200 && payload.data) { props.onTask(payload.data); return; }
      setErrors(payload.errors ?? {});
      setMessage(t("common.error", { message: (payload.message ?? xhr.statusText).trim() }));
    };
    xhr.onerror = () => { setProgress(null); setMessage(t("common.error", { message: "network error" })); };
    setProgress(0);
    xhr.send(body);
  };
  return (
    <section class="card" id="storage-upload" aria-label={t("storage.upload")}>
      <h2>{t("storage.upload")}</h2>
      <form onSubmit={(ev) => { ev.preventDefault(); start(); }}>
        <Field label={t("storage.upload.content")} param="content" errors={errors}>
          <select id="upload-content" value={content}
            onChange={(ev) => setContent((ev.target as HTMLSelectElement).value)}>
            {["iso", "vztmpl", "snippets"].map((c) => <option key={c} value={c}>{c}</option>)}
          </select></Field>
        <Field label={t("storage.upload.file")} param="filename" errors={errors}>
          <input type="file" id="upload-file"
            onChange={(ev) => setFile((ev.target as HTMLInputElement).files?.[0] ?? null)} /></Field>
        <Field label={t("storage.upload.algorithm")} param="checksum-algorithm" errors={errors}>
          <select id="upload-algorithm" value={algorithm}
            onChange={(ev) => setAlgorithm((ev.target as HTMLSelectElement).value)}>
            <option value="">{t("storage.upload.none")}</option>
            {ALGORITHMS.map((a) => <option key={a} value={a}>{a}</option>)}
          </select></Field>
        <Field label={t("storage.upload.checksum")} param="checksum" errors={errors}>
          <input id="upload-checksum" value={checksum}
            onInput={(ev) => setChecksum((ev.target as HTMLInputElement).value)} /></Field>
        <OtherErrors errors={errors} shown={["content", "filename", "checksum-algorithm", "checksum"]} />
        {message && <p class="error" role="status" id="upload-message">{message}</p>}
        {progress !== null && <p id="upload-status"><progress id="upload-progress" max={100} value={progress} />
          {" "}{t("storage.upload.progress", { percent: progress })}</p>}
        <button type="submit" class="primary" id="upload-start" disabled={progress !== null}>
          {t("storage.upload")}</button>
      </form>
    </section>
  );
}

/** The node summary's list of the storages available on the node, each a link to its
 * content. */
export function NodeStorages(props: { node: string }) {
  const { data } = usePoll<{ storage: string; type: string; total?: number; used?: number; active?: number }[]>(
    `/nodes/${encodeURIComponent(props.node)}/storage`, 10000);
  return (
    <ul class="node-storages" id="node-storages">
      {(data ?? []).map((s) => (
        <li key={s.storage}><a href={href({ kind: "storage", node: props.node, storage: s.storage })}
          data-storage={s.storage}>{s.storage}</a> ({s.type}, {fmt.bytes(s.used)} / {fmt.bytes(s.total)})</li>
      ))}
    </ul>
  );
}
