// Second factors (/access/tfa): every user's entries the caller may see, add a TOTP
// factor for oneself (the seed is made here in the browser, shown once as a QR code,
// the otpauth URI and its secret for the authenticator app, and proven by a current code), add
// recovery keys (shown once), add a WebAuthn key (PVE's two POSTs around
// navigator.credentials.create; needs the `webauthn` datacenter option and HTTPS), delete an entry. Writes ask for the caller's password, as
// PVE does (root@pam excepted).
import { useState } from "preact/hooks";
import { currentSession, post, request } from "../../api";
import { usePoll } from "../../poll";
import { t } from "../../strings";
import * as fmt from "../../format";
import { Dialog } from "../Confirm";
import { AccessTabs, Field, Message, enc, useAction, usePerms } from "./common";
import { QrCode } from "./QrCode";
import { createCredential, webauthnAvailable } from "../../webauthn";

interface TfaEntry { id: string; type: string; description?: string; created?: number; enable?: number }
interface TfaUser { userid: string; entries: TfaEntry[]; "totp-locked"?: number; "tfa-locked-until"?: number }

const BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/** 160 random bits in base32, the usual TOTP seed size (RFC 4226 recommends 160). */
function newSecret(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(20));
  let bits = 0, value = 0, out = "";
  for (const b of bytes) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += BASE32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  return out;
}

export function TfaView() {
  const self = currentSession()?.username ?? "";
  const list = usePoll<TfaUser[]>("/access/tfa", 5000);
  const can = usePerms();
  const admin = can("/access/groups", "User.Modify");
  const action = useAction();
  const [adding, setAdding] = useState<{ secret: string; uri: string; code: string; description: string;
                                         password: string } | null>(null);
  const [recovery, setRecovery] = useState<{ password: string } | null>(null);
  const [webauthn, setWebauthn] = useState<{ description: string; password: string } | null>(null);
  const [keys, setKeys] = useState<string[] | null>(null);
  const [deleting, setDeleting] = useState<{ userid: string; id: string; password: string } | null>(null);
  const needPassword = self !== "root@pam";

  const openTotp = () => {
    action.reset();
    const secret = newSecret();
    const uri = `otpauth://totp/${enc("binome:" + self)}?secret=${secret}&issuer=binome&algorithm=SHA1&digits=6&period=30`;
    setAdding({ secret, uri, code: "", description: "", password: "" });
  };
  const addTotp = async () => {
    if (!adding) return;
    const a = adding;
    if (await action.run(() => post(`/access/tfa/${enc(self)}`, { type: "totp", totp: a.uri, value: a.code,
        description: a.description || undefined, password: needPassword ? a.password : undefined }),
        () => t("access.tfa.added", { userid: self }))) {
      setAdding(null);
      list.refresh();
    }
  };
  const addRecovery = async () => {
    if (!recovery) return;
    if (await action.run(() => post<{ recovery: string[] }>(`/access/tfa/${enc(self)}`, { type: "recovery",
        password: needPassword ? recovery.password : undefined }), (r) => {
        setKeys(r.recovery);
        return t("access.tfa.added", { userid: self });
      })) {
      setRecovery(null);
      list.refresh();
    }
  };
  const addWebauthn = async () => {
    if (!webauthn) return;
    const w = webauthn;
    const pw = needPassword ? w.password : undefined;
    if (await action.run(async () => {
      const step1 = await post<{ challenge: string }>(`/access/tfa/${enc(self)}`, { type: "webauthn",
        description: w.description || undefined, password: pw });
      let made: { challenge: string; value: string };
      try {
        made = await createCredential(step1.challenge);
      } catch (e) {
        throw new Error(t("access.tfa.webauthn.failed", { message: (e as Error).message }));
      }
      return post(`/access/tfa/${enc(self)}`, { type: "webauthn", description: w.description || undefined,
        challenge: made.challenge, value: made.value, password: pw });
    }, () => t("access.tfa.added", { userid: self }))) {
      setWebauthn(null);
      list.refresh();
    }
  };
  const remove = async () => {
    if (!deleting) return;
    const d = deleting;
    if (await action.run(() => request("DELETE", `/access/tfa/${enc(d.userid)}/${enc(d.id)}`,
        { password: needPassword ? d.password : undefined }),
        () => t("access.tfa.deleted", { id: d.id, userid: d.userid }))) {
      setDeleting(null);
      list.refresh();
    }
  };
  const password = (value: string, onInput: (v: string) => void) => needPassword && (
    <Field label={t("access.tfa.yourpassword")} param="password" errors={action.errors}>
      <input id="tfa-password" type="password" autocomplete="current-password" value={value}
        onInput={(e) => onInput(e.currentTarget.value)} />
    </Field>
  );
  const rows = (list.data ?? []).flatMap((u) => u.entries.map((e) => ({ u, e })));

  return (
    <div class="view" id="view-access-tfa">
      <AccessTabs current="tfa" />
      {!adding && !recovery && !webauthn && !deleting && <Message outcome={action.message} />}
      {list.error && <p class="error">{t("common.error", { message: list.error.message })}</p>}
      <div class="toolbar">
        <button id="tfa-add-totp" onClick={openTotp}>{t("access.tfa.addtotp")}</button>
        <button id="tfa-add-recovery" onClick={() => { action.reset(); setRecovery({ password: "" }); }}>
          {t("access.tfa.addrecovery")}</button>
        <button id="tfa-add-webauthn" disabled={!webauthnAvailable()}
          title={webauthnAvailable() ? undefined : t("access.tfa.webauthn.https")}
          onClick={() => { action.reset(); setWebauthn({ description: "", password: "" }); }}>
          {t("access.tfa.addwebauthn")}</button>
      </div>
      <div class="table-wrap">
        <table id="tfa-table">
          <thead><tr><th>{t("access.user")}</th><th>{t("col.type")}</th><th>{t("access.description")}</th>
            <th>{t("access.created")}</th><th>{t("access.enabled")}</th><th /></tr></thead>
          <tbody>
            {rows.length === 0 && <tr><td colSpan={6}>{list.data ? t("access.tfa.none") : t("common.loading")}</td></tr>}
            {rows.map(({ u, e }) => (
              <tr key={`${u.userid} ${e.id}`} data-userid={u.userid} data-id={e.id}>
                <td>{u.userid}</td><td>{e.type}</td><td>{e.description ?? ""}</td>
                <td>{fmt.time(e.created)}</td><td>{e.enable === 0 ? t("access.no") : "✓"}</td>
                <td class="row-actions">{(u.userid === self || admin) &&
                  <button class="tfa-delete" onClick={() => { action.reset(); setDeleting({ userid: u.userid, id: e.id, password: "" }); }}>
                    {t("access.delete")}</button>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {adding && (
        <Dialog title={t("access.tfa.addtotp")} okLabel={t("access.add")} okDisabled={action.busy || !adding.code}
          onOk={addTotp} onCancel={() => setAdding(null)}>
          <Message outcome={action.message?.error ? action.message : null} id="dialog-message" />
          <p>{t("access.tfa.scan")}</p>
          <QrCode id="tfa-qr" text={adding.uri} label={t("access.tfa.qr")} />
          <dl id="tfa-new-secret">
            <dt>{t("access.tfa.uri")}</dt><dd><code id="tfa-uri" class="wrap">{adding.uri}</code></dd>
            <dt>{t("access.tfa.secret")}</dt><dd><code id="tfa-secret">{adding.secret}</code></dd>
          </dl>
          {action.errors.totp && <span class="field-error error" id="error-totp">{action.errors.totp}</span>}
          <Field label={t("access.description")} param="description" errors={action.errors}>
            <input id="tfa-description" value={adding.description}
              onInput={(e) => setAdding({ ...adding, description: e.currentTarget.value })} />
          </Field>
          <Field label={t("access.tfa.code")} param="value" errors={action.errors}>
            <input id="tfa-code" inputMode="numeric" autocomplete="one-time-code" value={adding.code}
              onInput={(e) => setAdding({ ...adding, code: e.currentTarget.value })} />
          </Field>
          {password(adding.password, (v) => setAdding({ ...adding, password: v }))}
        </Dialog>
      )}
      {recovery && (
        <Dialog title={t("access.tfa.addrecovery")} okLabel={t("access.add")} okDisabled={action.busy}
          onOk={addRecovery} onCancel={() => setRecovery(null)}>
          <Message outcome={action.message?.error ? action.message : null} id="dialog-message" />
          {action.errors.type && <span class="field-error error" id="error-type">{action.errors.type}</span>}
          {password(recovery.password, (v) => setRecovery({ password: v }))}
        </Dialog>
      )}
      {webauthn && (
        <Dialog title={t("access.tfa.addwebauthn")} okLabel={t("access.tfa.webauthn.register")}
          okDisabled={action.busy} onOk={addWebauthn} onCancel={() => setWebauthn(null)}>
          <Message outcome={action.message?.error ? action.message : null} id="dialog-message" />
          <p>{t("access.tfa.webauthn.help")}</p>
          {action.errors.type && <span class="field-error error" id="error-type">{action.errors.type}</span>}
          {action.errors.challenge && <span class="field-error error" id="error-challenge">{action.errors.challenge}</span>}
          <Field label={t("access.description")} param="description" errors={action.errors}>
            <input id="tfa-webauthn-description" value={webauthn.description}
              onInput={(e) => setWebauthn({ ...webauthn, description: e.currentTarget.value })} />
          </Field>
          {action.errors.value && <span class="field-error error" id="error-value">{action.errors.value}</span>}
          {password(webauthn.password, (v) => setWebauthn({ ...webauthn, password: v }))}
        </Dialog>
      )}
      {keys && (
        <Dialog title={t("access.tfa.recoverykeys")} okLabel={t("access.close")}
          onOk={() => setKeys(null)} onCancel={() => setKeys(null)}>
          <p class="warning">{t("access.tfa.keys.once")}</p>
          <ol id="tfa-recovery-keys">{keys.map((k) => <li key={k}><code>{k}</code></li>)}</ol>
        </Dialog>
      )}
      {deleting && (
        <Dialog title={t("access.delete")} danger okDisabled={action.busy} onOk={remove} onCancel={() => setDeleting(null)}>
          <Message outcome={action.message?.error ? action.message : null} id="dialog-message" />
          <p>{t("access.tfa.confirm.delete", { id: deleting.id, userid: deleting.userid })}</p>
          {password(deleting.password, (v) => setDeleting({ ...deleting, password: v }))}
        </Dialog>
      )}
    </div>
  );
}
