// Users (GET/POST /access/users, PUT/DELETE /access/users/{userid}) and their passwords
// (PUT /access/password). Write buttons show where the caller holds User.Modify.
import { useState } from "preact/hooks";
import { currentSession, post, request } from "../../api";
import { usePoll } from "../../poll";
import { t } from "../../strings";
import { Dialog } from "../Confirm";
import {
  AccessTabs, Field, Message, dateOf, enc, epochOf, expiry, useAction, usePerms,
} from "./common";

export interface UserEntry {
  userid: string; enable?: number; expire?: number; firstname?: string; lastname?: string;
  email?: string; comment?: string; groups?: string;
  tokens?: { tokenid: string; expire?: number; privsep?: number; comment?: string }[];
  "totp-locked"?: number; "tfa-locked-until"?: number;
}
export interface Realm { realm: string; type: string; comment?: string; default?: number; tfa?: string }
interface GroupEntry { groupid: string }

interface UserForm {
  name: string; realm: string; password: string; confirm: string; groups: string[];
  enable: boolean; expire: string; firstname: string; lastname: string; email: string;
  comment: string;
}

const TEXT_FIELDS = ["firstname", "lastname", "email", "comment"] as const;

export function UsersView() {
  const users = usePoll<UserEntry[]>("/access/users", 5000, { full: 1 });
  const realms = usePoll<Realm[]>("/access/domains", 30000);
  const groups = usePoll<GroupEntry[]>("/access/groups", 10000);
  const can = usePerms();
  const self = currentSession()?.username;
  const modify = can("/access/groups", "User.Modify");
  const action = useAction();
  const [editing, setEditing] = useState<{ user?: UserEntry; form: UserForm } | null>(null);
  const [deleting, setDeleting] = useState<string | null>(null);
  const [passwd, setPasswd] = useState<{ userid: string; password: string; confirm: string; current: string } | null>(null);

  const openAdd = () => {
    action.reset();
    setEditing({ form: { name: "", realm: "pve", password: "", confirm: "", groups: [], enable: true,
      expire: "", firstname: "", lastname: "", email: "", comment: "" } });
  };
  const openEdit = (u: UserEntry) => {
    action.reset();
    const [name, realm] = [u.userid.slice(0, u.userid.lastIndexOf("@")), u.userid.slice(u.userid.lastIndexOf("@") + 1)];
    setEditing({ user: u, form: { name, realm, password: "", confirm: "", enable: u.enable !== 0,
      groups: (u.groups ?? "").split(",").filter(Boolean), expire: dateOf(u.expire),
      firstname: u.firstname ?? "", lastname: u.lastname ?? "", email: u.email ?? "",
      comment: u.comment ?? "" } });
  };
  const save = async () => {
    if (!editing) return;
    const f = editing.form;
    if (!editing.user && f.password !== f.confirm) {
      action.setErrors({ confirm: t("access.password.mismatch") });
      return;
    }
    const userid = editing.user?.userid ?? `${f.name}@${f.realm}`;
    const params: Record<string, string | number | boolean | undefined> = {
      enable: f.enable, expire: epochOf(f.expire), groups: f.groups.join(","),
    };
    const cleared: string[] = [];
    for (const k of TEXT_FIELDS) {
      if (f[k]) params[k] = f[k];
      else if (editing.user?.[k]) cleared.push(k);
    }
    const ok = editing.user
      ? await action.run(() => request("PUT", `/access/users/${enc(userid)}`,
          { ...params, delete: cleared.length ? cleared.join(",") : undefined }),
          () => t("access.user.updated", { userid }))
      : await action.run(() => post("/access/users", { ...params, userid,
          password: f.realm === "pve" && f.password ? f.password : undefined }),
          () => t("access.user.created", { userid }));
    if (ok) { setEditing(null); users.refresh(); }
  };
  const remove = async () => {
    const userid = deleting;
    setDeleting(null);
    if (!userid) return;
    if (await action.run(() => request("DELETE", `/access/users/${enc(userid)}`),
                         () => t("access.user.deleted", { userid }))) users.refresh();
  };
  const changePassword = async () => {
    if (!passwd) return;
    if (passwd.password !== passwd.confirm) {
      action.setErrors({ confirm: t("access.password.mismatch") });
      return;
    }
    if (await action.run(() => request("PUT", "/access/password",
        // PVE 8+: anyone but root@pam confirms with their own current password
        { userid: passwd.userid, password: passwd.password,
          "confirmation-password": self === "root@pam" ? undefined : passwd.current }),
        () => t("access.password.changed", { userid: passwd.userid }))) setPasswd(null);
  };

  const set = (k: keyof UserForm) => (e: Event) => {
    const el = e.currentTarget as HTMLInputElement;
    const value = el.type === "checkbox" ? el.checked : el.value;
    setEditing((x) => x && { ...x, form: { ...x.form, [k]: value } });
  };
  const toggleGroup = (g: string) => setEditing((x) => x && { ...x, form: { ...x.form,
    groups: x.form.groups.includes(g) ? x.form.groups.filter((y) => y !== g) : [...x.form.groups, g] } });
  const err = action.errors;
  const now = Date.now() / 1000;

  return (
    <div class="view" id="view-access-users">
      <AccessTabs current="users" />
      {!editing && !passwd && <Message outcome={action.message} />}
      {users.error && <p class="error">{t("common.error", { message: users.error.message })}</p>}
      <div class="toolbar">
        {modify && <button id="user-add" onClick={openAdd}>{t("access.add")}</button>}
      </div>
      <div class="table-wrap">
        <table id="user-table">
          <thead><tr><th>{t("access.userid")}</th><th>{t("access.enabled")}</th><th>{t("access.expire")}</th>
            <th>{t("access.fullname")}</th><th>{t("access.email")}</th><th>{t("access.groups")}</th>
            <th>{t("access.tfa")}</th><th>{t("access.comment")}</th><th /></tr></thead>
          <tbody>
            {(users.data ?? []).map((u) => {
              const expired = !!u.expire && u.expire < now;
              const locked = u["totp-locked"] || (u["tfa-locked-until"] ?? 0) > now;
              const mine = u.userid === self;
              const pve = u.userid.endsWith("@pve");
              return (
                <tr key={u.userid} data-userid={u.userid}>
                  <td>{u.userid}</td>
                  <td>{u.enable === 0 ? t("access.no") : "✓"}</td>
                  <td class={expired ? "bad" : ""}>{expiry(u.expire)}</td>
                  <td>{[u.firstname, u.lastname].filter(Boolean).join(" ")}</td>
                  <td>{u.email ?? ""}</td><td>{u.groups ?? ""}</td>
                  <td>{locked ? t("access.tfa.locked") : ""}</td>
                  <td>{u.comment ?? ""}</td>
                  <td class="row-actions">
                    {modify && u.userid !== "root@pam" && <button class="user-edit" onClick={() => openEdit(u)}>{t("access.edit")}</button>}
                    {pve && (modify || mine) && <button class="user-password" onClick={() => {
                      action.reset(); setPasswd({ userid: u.userid, password: "", confirm: "", current: "" });
                    }}>{t("access.password")}</button>}
                    {modify && u.userid !== "root@pam" && !mine &&
                      <button class="user-delete" onClick={() => setDeleting(u.userid)}>{t("access.delete")}</button>}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
      {editing && (
        <Dialog title={editing.user ? t("access.user.edit", { userid: editing.user.userid }) : t("access.user.add")}
          okLabel={editing.user ? t("access.save") : t("access.add")} okDisabled={action.busy}
          onOk={save} onCancel={() => setEditing(null)}>
          <Message outcome={action.message?.error ? action.message : null} id="dialog-message" />
          {!editing.user && <>
            <Field label={t("access.username")} param="userid" errors={err}>
              <input id="user-name" value={editing.form.name} onInput={set("name")} required />
            </Field>
            <Field label={t("access.realm")} param="realm" errors={err}>
              <select id="user-realm" value={editing.form.realm} onChange={set("realm")}>
                {(realms.data ?? [{ realm: "pve", type: "pve" }]).map((r) =>
                  <option key={r.realm} value={r.realm}>{r.realm}</option>)}
              </select>
            </Field>
            {editing.form.realm === "pve" && <>
              <Field label={t("access.password")} param="password" errors={err}>
                <input id="user-password" type="password" autocomplete="new-password"
                  value={editing.form.password} onInput={set("password")} />
              </Field>
              <Field label={t("access.password.confirm")} param="confirm" errors={err}>
                <input id="user-confirm" type="password" autocomplete="new-password"
                  value={editing.form.confirm} onInput={set("confirm")} />
              </Field>
            </>}
          </>}
          <fieldset class="checks" data-param="groups">
            <legend>{t("access.groups")}</legend>
            {(groups.data ?? []).length === 0 && <span class="muted">{t("common.none")}</span>}
            {(groups.data ?? []).map((g) => (
              <label key={g.groupid} class="check">
                <input type="checkbox" name="group" value={g.groupid}
                  checked={editing.form.groups.includes(g.groupid)} onChange={() => toggleGroup(g.groupid)} />
                {g.groupid}
              </label>
            ))}
            {err.groups && <span class="field-error error" id="error-groups">{err.groups}</span>}
          </fieldset>
          <Field label={t("access.enabled")} param="enable" errors={err} check>
            <input id="user-enable" type="checkbox" checked={editing.form.enable} onChange={set("enable")} />
          </Field>
          <Field label={t("access.expire.date")} param="expire" errors={err}>
            <input id="user-expire" type="date" value={editing.form.expire} onInput={set("expire")} />
          </Field>
          <Field label={t("access.firstname")} param="firstname" errors={err}>
            <input id="user-firstname" value={editing.form.firstname} onInput={set("firstname")} />
          </Field>
          <Field label={t("access.lastname")} param="lastname" errors={err}>
            <input id="user-lastname" value={editing.form.lastname} onInput={set("lastname")} />
          </Field>
          <Field label={t("access.email")} param="email" errors={err}>
            <input id="user-email" type="email" value={editing.form.email} onInput={set("email")} />
          </Field>
          <Field label={t("access.comment")} param="comment" errors={err}>
            <input id="user-comment" value={editing.form.comment} onInput={set("comment")} />
          </Field>
        </Dialog>
      )}
      {passwd && (
        <Dialog title={t("access.password.title", { userid: passwd.userid })} okLabel={t("access.save")}
          okDisabled={action.busy || !passwd.password} onOk={changePassword} onCancel={() => setPasswd(null)}>
          <Message outcome={action.message?.error ? action.message : null} id="dialog-message" />
          <Field label={t("access.password")} param="password" errors={err}>
            <input id="passwd-password" type="password" autocomplete="new-password" value={passwd.password}
              onInput={(e) => setPasswd({ ...passwd, password: e.currentTarget.value })} />
          </Field>
          <Field label={t("access.password.confirm")} param="confirm" errors={err}>
            <input id="passwd-confirm" type="password" autocomplete="new-password" value={passwd.confirm}
              onInput={(e) => setPasswd({ ...passwd, confirm: e.currentTarget.value })} />
          </Field>
          {self !== "root@pam" && (
            <Field label={t("access.tfa.yourpassword")} param="confirmation-password" errors={err}>
              <input id="passwd-current" type="password" autocomplete="current-password" value={passwd.current}
                onInput={(e) => setPasswd({ ...passwd, current: e.currentTarget.value })} />
            </Field>
          )}
        </Dialog>
      )}
      {deleting && (
        <Dialog title={t("access.delete")} danger onOk={remove} onCancel={() => setDeleting(null)}>
          <p>{t("access.user.confirm.delete", { userid: deleting })}</p>
        </Dialog>
      )}
    </div>
  );
}
