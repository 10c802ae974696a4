// The notification target dialog of Datacenter → Notifications, for the smtp, gotify and
// webhook endpoints (/cluster/notifications/endpoints/{type}): create, or edit what
// GET .../{name} returns. The secrets (smtp password, gotify token, webhook secret
// values) are write-only: the API never returns them and the form never fills them in;
// an empty secret field keeps the stored one. Cleared optional settings are deleted.
import { useEffect, useState } from "preact/hooks";
import { get, type Params } from "../../api";
import { t } from "../../strings";
import { Dialog } from "../Confirm";
import { Field, OtherErrors, OutcomeMessage, type Outcome } from "../forms";

export type TargetType = "smtp" | "gotify" | "webhook";
export const TARGET_TYPES: TargetType[] = ["smtp", "gotify", "webhook"];
const BASE = "/cluster/notifications/endpoints";

/** base64 of the text's UTF-8 bytes, and back (the webhook's header and body values) */
export function toB64(text: string): string {
  let bin = "";
  for (const b of new TextEncoder().encode(text)) bin += String.fromCharCode(b);
  return btoa(bin);
}
export function fromB64(b64: string): string {
  try {
    return new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
  } catch {
    return b64;
  }
}

/** PVE's `name=<name>,value=<base64>` property strings <-> "Name: value" lines */
export function headersToText(items: string[]): string {
  return items.map((item) => {
    const props = Object.fromEntries(item.split(",").map((kv) => {
      const i = kv.indexOf("=");
      return [kv.slice(0, i), kv.slice(i + 1)];
    }));
    return `${props.name ?? ""}: ${fromB64(props.value ?? "")}`;
  }).join("\n");
}
export function textToHeaders(text: string): string[] {
  return text.split("\n").map((l) => l.trim()).filter(Boolean).map((line) => {
    const i = line.indexOf(":");
    const name = (i < 0 ? line : line.slice(0, i)).trim();
    const value = i < 0 ? "" : line.slice(i + 1).trim();
    return `name=${name},value=${toB64(value)}`;
  });
}

const asList = (v: unknown): string[] => (Array.isArray(v) ? v.map(String) : v ? [String(v)] : []);
const splitList = (text: string) => text.split(/[\s,]+/).filter(Boolean);

type Entry = Record<string, unknown>;
interface SecretRow { name: string; value: string; stored: boolean }

// the optional settings a cleared field deletes, per type (the required ones cannot be)
const OPTIONAL: Record<TargetType, string[]> = {
  smtp: ["port", "mode", "username", "mailto", "mailto-user", "author", "comment"],
  gotify: ["comment"],
  webhook: ["header", "body", "comment"],
};

export function TargetDialog(props: { type: TargetType; name: string | null; outcome: Outcome;
                                      onClose: () => void }) {
  const { type, name, outcome } = props;
  const [loaded, setLoaded] = useState<Entry | null>(name ? null : {});
  const [form, setForm] = useState<Record<string, string>>({});
  const [secrets, setSecrets] = useState<SecretRow[]>([]);
  const [loadError, setLoadError] = useState<string | null>(null);
  useEffect(() => {
    if (!name) {
      setForm({ name: "", mode: "tls", method: "post", "mailto-user": "root@pam" });
      return;
    }
    get<Entry>(`${BASE}/${type}/${encodeURIComponent(name)}`).then((e) => {
      setLoaded(e);
      setForm({
        server: String(e.server ?? ""), port: e.port !== undefined ? String(e.port) : "",
        mode: String(e.mode ?? "tls"), username: String(e.username ?? ""),
        "from-address": String(e["from-address"] ?? ""), author: String(e.author ?? ""),
        mailto: asList(e.mailto).join(", "), "mailto-user": asList(e["mailto-user"]).join(", "),
        url: String(e.url ?? ""), method: String(e.method ?? "post"),
        header: headersToText(asList(e.header)), body: e.body ? fromB64(String(e.body)) : "",
        comment: String(e.comment ?? ""), disable: e.disable ? "1" : "0",
        // never the secrets: the API has none to give, and the fields start empty
        password: "", token: "",
      });
      setSecrets(asList(e.secret).map((s) => ({ name: s.replace(/^name=/, "").split(",")[0], value: "", stored: true })));
    }, (err: Error) => setLoadError(err.message));
  }, [type, name]);
  const set = (k: string) => (e: Event) =>
    setForm({ ...form, [k]: (e.currentTarget as HTMLInputElement).value });
  const errors = outcome.errors;

  const save = async () => {
    const p: Params = {};
    const text = (k: string) => (form[k] ?? "").trim();
    if (type === "smtp") {
      Object.assign(p, { server: text("server"), port: text("port") || undefined, mode: form.mode,
        username: text("username") || undefined, "from-address": text("from-address"),
        author: text("author") || undefined, mailto: splitList(form.mailto ?? ""),
        "mailto-user": splitList(form["mailto-user"] ?? ""), password: form.password || undefined });
    } else if (type === "gotify") {
      Object.assign(p, { server: text("server"), token: form.token || undefined });
    } else {
      Object.assign(p, { url: text("url"), method: form.method, header: textToHeaders(form.header ?? ""),
        body: form.body ? toB64(form.body) : undefined,
        secret: secrets.filter((s) => s.name.trim() && (s.value || s.stored)).map((s) =>
          s.value ? `name=${s.name.trim()},value=${toB64(s.value)}` : `name=${s.name.trim()}`) });
    }
    Object.assign(p, { comment: text("comment") || undefined, disable: form.disable === "1" });
    for (const [k, v] of Object.entries(p)) if (Array.isArray(v) && !v.length) delete p[k];
    let ok: boolean;
    if (name) {
      const had = loaded ?? {};
      const gone = OPTIONAL[type].filter((k) => p[k] === undefined && had[k] !== undefined);
      if (type === "smtp" && form.clearpassword === "1") { gone.push("password"); delete p.password; }
      if (type === "webhook" && !p.secret && asList(had.secret).length) gone.push("secret");
      if (gone.length) p.delete = gone;
      ok = await outcome.send("PUT", `${BASE}/${type}/${encodeURIComponent(name)}`, p, t("notif.saved", { name }));
    } else {
      ok = await outcome.send("POST", `${BASE}/${type}`, { name: text("name"), ...p },
                              t("notif.saved", { name: text("name") }));
    }
    if (ok) props.onClose();
  };

  const shown = ["name", "server", "port", "mode", "username", "password", "from-address", "author", "mailto",
    "mailto-user", "token", "url", "method", "header", "body", "secret", "comment"];
  const keepHint = name ? t("notif.secret.keep") : "";
  return (
    <Dialog title={name ? t("notif.edittarget", { type, name }) : t("notif.newtarget", { type })}
      onOk={save} okDisabled={outcome.busy || !loaded} onCancel={props.onClose}>
      {loadError && <p class="error">{t("common.error", { message: loadError })}</p>}
      {!name && <Field label={t("col.name")} param="name" errors={errors}>
        <input id="target-name" value={form.name ?? ""} onInput={set("name")} /></Field>}
      {(type === "smtp" || type === "gotify") && <Field label={t("notif.server")} param="server" errors={errors}>
        <input id="target-server" value={form.server ?? ""} onInput={set("server")} /></Field>}
      {type === "smtp" && <>
        <Field label={t("notif.port")} param="port" errors={errors}>
          <input id="target-port" inputMode="numeric" value={form.port ?? ""} onInput={set("port")} /></Field>
        <Field label={t("notif.smtpmode")} param="mode" errors={errors}>
          <select id="target-mode" value={form.mode} onChange={set("mode")}>
            {["tls", "starttls", "insecure"].map((m) => <option key={m} value={m}>{m}</option>)}</select></Field>
        <Field label={t("notif.username")} param="username" errors={errors}>
          <input id="target-username" autocomplete="off" value={form.username ?? ""} onInput={set("username")} /></Field>
        <Field label={t("notif.password")} param="password" errors={errors}>
          <input id="target-password" type="password" autocomplete="new-password" value={form.password ?? ""}
            placeholder={keepHint} disabled={form.clearpassword === "1"} onInput={set("password")} /></Field>
        {name && <label class="check"><input type="checkbox" id="target-clearpassword" checked={form.clearpassword === "1"}
          onChange={(e) => setForm({ ...form, clearpassword: e.currentTarget.checked ? "1" : "0", password: "" })} />
          {t("notif.secret.clear")}</label>}
        <Field label={t("notif.from")} param="from-address" errors={errors}>
          <input id="target-from" value={form["from-address"] ?? ""} onInput={set("from-address")} /></Field>
        <Field label={t("notif.mailto")} param="mailto" errors={errors}>
          <input id="target-mailto" value={form.mailto ?? ""} onInput={set("mailto")} /></Field>
        <Field label={t("notif.mailtouser")} param="mailto-user" errors={errors}>
          <input id="target-mailtouser" value={form["mailto-user"] ?? ""} onInput={set("mailto-user")} /></Field>
        <Field label={t("notif.author")} param="author" errors={errors}>
          <input id="target-author" value={form.author ?? ""} onInput={set("author")} /></Field>
      </>}
      {type === "gotify" && <Field label={t("notif.token")} param="token" errors={errors}>
        <input id="target-token" type="password" autocomplete="new-password" value={form.token ?? ""}
          placeholder={keepHint} onInput={set("token")} /></Field>}
      {type === "webhook" && <>
        <Field label={t("notif.url")} param="url" errors={errors}>
          <input id="target-url" value={form.url ?? ""} onInput={set("url")} /></Field>
        <Field label={t("notif.method")} param="method" errors={errors}>
          <select id="target-method" value={form.method} onChange={set("method")}>
            {["post", "put", "get"].map((m) => <option key={m} value={m}>{m.toUpperCase()}</option>)}</select></Field>
        <Field label={t("notif.headers")} param="header" errors={errors}>
          <textarea id="target-header" rows={3} value={form.header ?? ""} onInput={set("header")} /></Field>
        <Field label={t("notif.body")} param="body" errors={errors}>
          <textarea id="target-body" rows={4} value={form.body ?? ""} onInput={set("body")} /></Field>
        <fieldset data-param="secret">
          <legend>{t("notif.secrets")}</legend>
          {secrets.map((s, i) => (
            <div class="secret-row" key={i}>
              <input class="target-secret-name" aria-label={t("notif.secret.name")} value={s.name} readOnly={s.stored}
                onInput={(e) => setSecrets(secrets.map((x, j) => j === i ? { ...x, name: e.currentTarget.value } : x))} />
              <input class="target-secret-value" type="password" autocomplete="new-password"
                aria-label={t("notif.secret.value")} value={s.value} placeholder={s.stored ? t("notif.secret.keep") : ""}
                onInput={(e) => setSecrets(secrets.map((x, j) => j === i ? { ...x, value: e.currentTarget.value } : x))} />
              <button type="button" onClick={() => setSecrets(secrets.filter((_, j) => j !== i))}>
                {t("notif.secret.remove")}</button>
            </div>
          ))}
          <button type="button" id="target-secret-add"
            onClick={() => setSecrets([...secrets, { name: "", value: "", stored: false }])}>{t("notif.secret.add")}</button>
          {errors.secret && <span class="field-error error" id="error-secret">{errors.secret}</span>}
        </fieldset>
      </>}
      <Field label={t("opt.description")} param="comment" errors={errors}>
        <input id="target-comment" value={form.comment ?? ""} onInput={set("comment")} /></Field>
      <label class="check"><input type="checkbox" id="target-disable" checked={form.disable === "1"}
        onChange={(e) => setForm({ ...form, disable: e.currentTarget.checked ? "1" : "0" })} />
        {t("notif.disabled")}</label>
      <OtherErrors errors={errors} shown={shown} />
      <OutcomeMessage outcome={outcome} id="target-message" />
    </Dialog>
  );
}
