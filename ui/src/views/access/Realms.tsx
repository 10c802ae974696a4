// Authentication realms (/access/domains): the list, add and edit an LDAP or AD realm
// (the bind password is write-only: the API never returns it, the form sends it only
// when typed), delete, and sync (POST /access/domains/{realm}/sync starts a task whose
// progress and result show here). Writes need Realm.Allocate on /access/realm.
import { useState } from "preact/hooks";
import { get, post, request } from "../../api";
import { usePoll } from "../../poll";
import { t } from "../../strings";
import { Dialog } from "../Confirm";
import { AccessTabs, Field, Message, TaskResult, enc, useAction, usePerms } from "./common";
import type { Realm } from "./Users";

// the text options of an LDAP/AD realm the form edits, in PVE's order
const TEXT = ["server1", "server2", "port", "base_dn", "user_attr", "bind_dn", "filter",
  "group_dn", "group_filter", "group_name_attr", "domain", "comment"] as const;
type Text = (typeof TEXT)[number];
interface RealmForm {
  existing: boolean; realm: string; type: string; mode: string; verify: boolean;
  default: boolean; password: string; clearPassword: boolean;
  text: Record<Text, string>; loaded: Record<string, string | number>;
}
interface Sync { realm: string; scope: string; enableNew: boolean; removeVanished: string[]; dryRun: boolean }

export function RealmsView() {
  const realms = usePoll<Realm[]>("/access/domains", 5000);
  const can = usePerms();
  const write = can("/access/realm", "Realm.Allocate");
  const action = useAction();
  const [form, setForm] = useState<RealmForm | null>(null);
  const [deleting, setDeleting] = useState<string | null>(null);
  const [sync, setSync] = useState<Sync | null>(null);
  const [upid, setUpid] = useState<string | null>(null);

  const blank = () => Object.fromEntries(TEXT.map((k) => [k, ""])) as Record<Text, string>;
  const openAdd = () => {
    action.reset();
    setForm({ existing: false, realm: "", type: "ldap", mode: "ldap", verify: false, default: false,
      password: "", clearPassword: false, text: { ...blank(), user_attr: "uid" }, loaded: {} });
  };
  const openEdit = async (realm: string) => {
    action.reset();
    const cfg = await get<Record<string, string | number>>(`/access/domains/${enc(realm)}`).catch(() => null);
    if (!cfg) return;
    const text = blank();
    for (const k of TEXT) if (cfg[k] !== undefined) text[k] = String(cfg[k]);
    setForm({ existing: true, realm, type: String(cfg.type), mode: String(cfg.mode ?? "ldap"),
      verify: !!Number(cfg.verify ?? 0), default: !!cfg.default, password: "", clearPassword: false,
      text, loaded: cfg });
  };
  const save = async () => {
    if (!form) return;
    const params: Record<string, string | number | boolean | undefined> = {
      mode: form.mode, verify: form.verify, default: form.default,
    };
    const cleared: string[] = [];
    for (const k of TEXT) {
      if (form.text[k]) params[k] = form.text[k];
      else if (form.loaded[k] !== undefined && form.loaded[k] !== "") cleared.push(k);
    }
    if (form.password) params.password = form.password;      // write-only: sent when typed
    else if (form.clearPassword) cleared.push("password");
    const ok = form.existing
      ? await action.run(() => request("PUT", `/access/domains/${enc(form.realm)}`,
          { ...params, delete: cleared.length ? cleared.join(",") : undefined }),
          () => t("access.realm.updated", { realm: form.realm }))
      : await action.run(() => post("/access/domains", { ...params, realm: form.realm, type: form.type }),
          () => t("access.realm.created", { realm: form.realm }));
    if (ok) { setForm(null); realms.refresh(); }
  };
  const remove = async () => {
    const realm = deleting;
    setDeleting(null);
    if (realm && await action.run(() => request("DELETE", `/access/domains/${enc(realm)}`),
                                  () => t("access.realm.deleted", { realm }))) realms.refresh();
  };
  const startSync = async () => {
    if (!sync) return;
    const s = sync;
    setUpid(null);
    const ok = await action.run(() => post<string>(`/access/domains/${enc(s.realm)}/sync`, {
      scope: s.scope, "enable-new": s.enableNew, "dry-run": s.dryRun,
      "remove-vanished": s.removeVanished.length ? s.removeVanished.join(";") : "none",
    }), (u) => { setUpid(u); return t("access.realm.syncstarted", { realm: s.realm }); });
    if (ok) setSync(null);
  };
  const text = (k: Text, label: string, type = "text") => form && (
    <Field label={label} param={k} errors={action.errors}>
      <input id={`realm-${k}`} type={type} value={form.text[k]}
        onInput={(e) => setForm({ ...form, text: { ...form.text, [k]: e.currentTarget.value } })} />
    </Field>
  );

  return (
    <div class="view" id="view-access-realms">
      <AccessTabs current="realms" />
      {!form && !sync && <Message outcome={action.message} />}
      {upid && <TaskResult upid={upid} />}
      <div class="toolbar">
        {write && <button id="realm-add" onClick={openAdd}>{t("access.realm.add")}</button>}
      </div>
      <div class="table-wrap">
        <table id="realm-table">
          <thead><tr><th>{t("access.realm")}</th><th>{t("col.type")}</th><th>{t("access.default")}</th>
            <th>{t("access.tfa")}</th><th>{t("access.comment")}</th><th /></tr></thead>
          <tbody>
            {(realms.data ?? []).map((r) => {
              const directory = r.type === "ldap" || r.type === "ad";
              return (
                <tr key={r.realm} data-realm={r.realm}>
                  <td>{r.realm}</td><td>{r.type}</td><td>{r.default ? "✓" : ""}</td><td>{r.tfa ?? ""}</td>
                  <td>{r.comment ?? ""}</td>
                  <td class="row-actions">{write && directory && <>
                    <button class="realm-edit" onClick={() => openEdit(r.realm)}>{t("access.edit")}</button>
                    <button class="realm-sync" onClick={() => {
                      action.reset();
                      setSync({ realm: r.realm, scope: "both", enableNew: true, removeVanished: [], dryRun: false });
                    }}>{t("access.realm.sync")}</button>
                    <button class="realm-delete" onClick={() => setDeleting(r.realm)}>{t("access.delete")}</button>
                  </>}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
      {form && (
        <Dialog title={form.existing ? t("access.realm.edit", { realm: form.realm }) : t("access.realm.add")}
          okLabel={form.existing ? t("access.save") : t("access.add")} okDisabled={action.busy}
          onOk={save} onCancel={() => setForm(null)}>
          <Message outcome={action.message?.error ? action.message : null} id="dialog-message" />
          <div class="form-grid">
            {!form.existing && <>
              <Field label={t("access.realm")} param="realm" errors={action.errors}>
                <input id="realm-id" value={form.realm} required
                  onInput={(e) => setForm({ ...form, realm: e.currentTarget.value })} />
              </Field>
              <Field label={t("col.type")} param="type" errors={action.errors}>
                <select id="realm-type" value={form.type} onChange={(e) => setForm({ ...form, type: e.currentTarget.value })}>
                  <option value="ldap">LDAP</option><option value="ad">Active Directory</option>
                </select>
              </Field>
            </>}
            {text("server1", t("access.realm.server1"))}
            {text("server2", t("access.realm.server2"))}
            {text("port", t("access.realm.port"))}
            <Field label={t("access.realm.mode")} param="mode" errors={action.errors}>
              <select id="realm-mode" value={form.mode} onChange={(e) => setForm({ ...form, mode: e.currentTarget.value })}>
                {["ldap", "ldaps", "ldap+starttls"].map((m) => <option key={m} value={m}>{m}</option>)}
              </select>
            </Field>
            {form.type === "ad" && text("domain", t("access.realm.domain"))}
            {text("base_dn", t("access.realm.base_dn"))}
            {text("user_attr", t("access.realm.user_attr"))}
            {text("bind_dn", t("access.realm.bind_dn"))}
            <Field label={t("access.realm.password")} param="password" errors={action.errors}>
              <input id="realm-password" type="password" autocomplete="new-password" value={form.password}
                placeholder={form.existing ? t("access.realm.password.unchanged") : ""}
                onInput={(e) => setForm({ ...form, password: e.currentTarget.value })} />
            </Field>
            {form.existing && (
              <Field label={t("access.realm.password.clear")} param="delete" errors={action.errors} check>
                <input type="checkbox" id="realm-password-clear" checked={form.clearPassword}
                  onChange={(e) => setForm({ ...form, clearPassword: e.currentTarget.checked })} />
              </Field>
            )}
            {text("filter", t("access.realm.filter"))}
            {text("group_dn", t("access.realm.group_dn"))}
            {text("group_filter", t("access.realm.group_filter"))}
            {text("group_name_attr", t("access.realm.group_name_attr"))}
            {text("comment", t("access.comment"))}
            <Field label={t("access.realm.verify")} param="verify" errors={action.errors} check>
              <input type="checkbox" id="realm-verify" checked={form.verify}
                onChange={(e) => setForm({ ...form, verify: e.currentTarget.checked })} />
            </Field>
            <Field label={t("access.default")} param="default" errors={action.errors} check>
              <input type="checkbox" id="realm-default" checked={form.default}
                onChange={(e) => setForm({ ...form, default: e.currentTarget.checked })} />
            </Field>
          </div>
        </Dialog>
      )}
      {sync && (
        <Dialog title={t("access.realm.sync.title", { realm: sync.realm })} okLabel={t("access.realm.sync")}
          okDisabled={action.busy} onOk={startSync} onCancel={() => setSync(null)}>
          <Message outcome={action.message?.error ? action.message : null} id="dialog-message" />
          <Field label={t("access.realm.scope")} param="scope" errors={action.errors}>
            <select id="sync-scope" value={sync.scope} onChange={(e) => setSync({ ...sync, scope: e.currentTarget.value })}>
              {["both", "users", "groups"].map((s) => <option key={s} value={s}>{s}</option>)}
            </select>
          </Field>
          <fieldset class="checks" data-param="remove-vanished">
            <legend>{t("access.realm.removevanished")}</legend>
            {["acl", "entry", "properties"].map((x) => (
              <label key={x} class="check">
                <input type="checkbox" checked={sync.removeVanished.includes(x)} onChange={() => setSync({
                  ...sync, removeVanished: sync.removeVanished.includes(x)
                    ? sync.removeVanished.filter((y) => y !== x) : [...sync.removeVanished, x] })} />
                {x}
              </label>
            ))}
            {action.errors["remove-vanished"] && <span class="field-error error">{action.errors["remove-vanished"]}</span>}
          </fieldset>
          <Field label={t("access.realm.enablenew")} param="enable-new" errors={action.errors} check>
            <input type="checkbox" checked={sync.enableNew} onChange={(e) => setSync({ ...sync, enableNew: e.currentTarget.checked })} />
          </Field>
          <Field label={t("access.realm.dryrun")} param="dry-run" errors={action.errors} check>
            <input type="checkbox" id="sync-dry-run" checked={sync.dryRun} onChange={(e) => setSync({ ...sync, dryRun: e.currentTarget.checked })} />
          </Field>
        </Dialog>
      )}
      {deleting && (
        <Dialog title={t("access.delete")} danger onOk={remove} onCancel={() => setDeleting(null)}>
          <p>{t("access.realm.confirm.delete", { realm: deleting })}</p>
        </Dialog>
      )}
    </div>
  );
}
