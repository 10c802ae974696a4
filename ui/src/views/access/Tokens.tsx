// API tokens of a user (/access/users/{userid}/token/{tokenid}): create, edit
// (privilege separation, expiry, comment), regenerate, delete. A new or regenerated
// secret is shown once, in a dialog of its own; the API never returns it again.
import { useState } from "preact/hooks";
import { currentSession, post, request } from "../../api";
import { usePoll } from "../../poll";
import { t } from "../../strings";
import { Dialog } from "../Confirm";
import {
  AccessTabs, Field, Message, dateOf, enc, epochOf, expiry, useAction, usePerms,
} from "./common";
import type { UserEntry } from "./Users";

interface Token { tokenid: string; expire?: number; privsep?: number; comment?: string }
interface Secret { "full-tokenid": string; value: string }
interface TokenForm { tokenid: string; privsep: boolean; expire: string; comment: string }

export function TokensView() {
  const self = currentSession()?.username ?? "";
  const users = usePoll<UserEntry[]>("/access/users", 10000);
  const [userid, setUserid] = useState(self);
  const tokens = usePoll<Token[]>(userid ? `/access/users/${enc(userid)}/token` : null, 5000);
  const can = usePerms();
  const write = userid === self || can("/access/groups", "User.Modify");
  const action = useAction();
  const [editing, setEditing] = useState<{ existing: boolean; form: TokenForm } | null>(null);
  const [secret, setSecret] = useState<Secret | null>(null);
  const [confirm, setConfirm] = useState<{ kind: "delete" | "regenerate"; tokenid: string } | null>(null);

  const base = (tokenid: string) => `/access/users/${enc(userid)}/token/${enc(tokenid)}`;
  const save = async () => {
    if (!editing) return;
    const f = editing.form;
    const params = { privsep: f.privsep, expire: epochOf(f.expire),
                     comment: f.comment || undefined,
                     delete: editing.existing && !f.comment ? "comment" : undefined };
    const ok = editing.existing
      ? await action.run(() => request("PUT", base(f.tokenid), params),
                         () => t("access.token.updated", { tokenid: f.tokenid }))
      : await action.run(() => post<Secret>(base(f.tokenid), params), (r) => {
          setSecret(r);
          return t("access.token.created", { tokenid: r["full-tokenid"] });
        });
    if (ok) { setEditing(null); tokens.refresh(); }
  };
  const confirmed = async () => {
    const c = confirm;
    setConfirm(null);
    if (!c) return;
    if (c.kind === "delete") {
      await action.run(() => request("DELETE", base(c.tokenid)),
                       () => t("access.token.deleted", { tokenid: c.tokenid }));
    } else {
      await action.run(() => request<Secret>("PUT", base(c.tokenid), { regenerate: 1 }), (r) => {
        setSecret(r);
        return t("access.token.regenerated", { tokenid: r["full-tokenid"] });
      });
    }
    tokens.refresh();
  };
  const set = (k: keyof TokenForm) => (e: Event) => {
    const el = e.currentTarget as HTMLInputElement;
    const value = el.type === "checkbox" ? el.checked : el.value;
    setEditing((x) => x && { ...x, form: { ...x.form, [k]: value } });
  };
  const userids = (users.data ?? []).map((u) => u.userid);
  if (self && !userids.includes(self)) userids.unshift(self);
  const err = action.errors;

  return (
    <div class="view" id="view-access-tokens">
      <AccessTabs current="tokens" />
      {!editing && <Message outcome={action.message} />}
      <div class="toolbar">
        <label class="inline">{t("access.user")}
          <select id="token-user" value={userid} onChange={(e) => { action.reset(); setUserid(e.currentTarget.value); }}>
            {userids.map((u) => <option key={u} value={u}>{u}</option>)}
          </select>
        </label>
        {write && <button id="token-add" onClick={() => {
          action.reset();
          setEditing({ existing: false, form: { tokenid: "", privsep: true, expire: "", comment: "" } });
        }}>{t("access.add")}</button>}
      </div>
      {tokens.error && <p class="error">{t("common.error", { message: tokens.error.message })}</p>}
      <div class="table-wrap">
        <table id="token-table">
          <thead><tr><th>{t("access.tokenid")}</th><th>{t("access.privsep")}</th>
            <th>{t("access.expire")}</th><th>{t("access.comment")}</th><th /></tr></thead>
          <tbody>
            {(tokens.data ?? []).map((tk) => (
              <tr key={tk.tokenid} data-tokenid={tk.tokenid}>
                <td>{`${userid}!${tk.tokenid}`}</td><td>{tk.privsep ? "✓" : t("access.no")}</td>
                <td>{expiry(tk.expire)}</td><td>{tk.comment ?? ""}</td>
                <td class="row-actions">{write && <>
                  <button class="token-edit" onClick={() => {
                    action.reset();
                    setEditing({ existing: true, form: { tokenid: tk.tokenid, privsep: !!tk.privsep,
                      expire: dateOf(tk.expire), comment: tk.comment ?? "" } });
                  }}>{t("access.edit")}</button>
                  <button class="token-regenerate" onClick={() => setConfirm({ kind: "regenerate", tokenid: tk.tokenid })}>
                    {t("access.token.regenerate")}</button>
                  <button class="token-delete" onClick={() => setConfirm({ kind: "delete", tokenid: tk.tokenid })}>
                    {t("access.delete")}</button>
                </>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {editing && (
        <Dialog title={editing.existing ? t("access.token.edit", { tokenid: editing.form.tokenid }) : t("access.token.add")}
          okLabel={editing.existing ? t("access.save") : t("access.add")} okDisabled={action.busy}
          onOk={save} onCancel={() => setEditing(null)}>
          <Message outcome={action.message?.error ? action.message : null} id="dialog-message" />
          {!editing.existing && (
            <Field label={t("access.tokenid")} param="tokenid" errors={err}>
              <input id="token-id" value={editing.form.tokenid} onInput={set("tokenid")} required />
            </Field>
          )}
          <Field label={t("access.privsep.long")} param="privsep" errors={err} check>
            <input id="token-privsep" type="checkbox" checked={editing.form.privsep} onChange={set("privsep")} />
          </Field>
          <Field label={t("access.expire.date")} param="expire" errors={err}>
            <input id="token-expire" type="date" value={editing.form.expire} onInput={set("expire")} />
          </Field>
          <Field label={t("access.comment")} param="comment" errors={err}>
            <input id="token-comment" value={editing.form.comment} onInput={set("comment")} />
          </Field>
        </Dialog>
      )}
      {confirm && (
        <Dialog title={confirm.kind === "delete" ? t("access.delete") : t("access.token.regenerate")} danger
          onOk={confirmed} onCancel={() => setConfirm(null)}>
          <p>{confirm.kind === "delete"
            ? t("access.token.confirm.delete", { tokenid: `${userid}!${confirm.tokenid}` })
            : t("access.token.confirm.regenerate", { tokenid: `${userid}!${confirm.tokenid}` })}</p>
        </Dialog>
      )}
      {secret && <SecretDialog secret={secret} onClose={() => setSecret(null)} />}
    </div>
  );
}

/** The token's secret, this once: closing the dialog forgets it. */
function SecretDialog(props: { secret: Secret; onClose: () => void }) {
  const [copied, setCopied] = useState(false);
  return (
    <Dialog title={t("access.token.secret.title")} okLabel={t("access.close")}
      onOk={props.onClose} onCancel={props.onClose}>
      <p class="warning">{t("access.token.secret.once")}</p>
      <dl id="token-secret">
        <dt>{t("access.tokenid")}</dt><dd id="token-secret-id"><code>{props.secret["full-tokenid"]}</code></dd>
        <dt>{t("access.token.secret")}</dt><dd id="token-secret-value"><code>{props.secret.value}</code></dd>
      </dl>
      <button type="button" id="token-secret-copy" onClick={() => {
        navigator.clipboard?.writeText(props.secret.value).then(() => setCopied(true), () => {});
      }}>{copied ? t("access.copied") : t("access.copy")}</button>
    </Dialog>
  );
}
