// Node → Certificates, PVE's node Certificates panel: the node's certificates
// (GET /nodes/{node}/certificates/info: the cluster CA, the node's own and the custom one),
// a custom certificate uploaded (POST .../certificates/custom, PEM text areas; the key is
// sent once and never shown again: the form forgets it) or deleted (DELETE, confirmed);
// the node's ACME settings (`acme` and `acmedomainN` of GET/PUT /nodes/{node}/config,
// with its digest) and the ACME certificate ordered, renewed or revoked
// (POST/PUT/DELETE .../certificates/acme/certificate, tasks followed in the task viewer).
// A lazy chunk.
import { useState } from "preact/hooks";
import { usePoll } from "../../poll";
import { t } from "../../strings";
import * as fmt from "../../format";
import { Dialog } from "../Confirm";
import { usePerms } from "../access/perms";
import { Field, OtherErrors, OutcomeMessage, TaskArea, useOutcome } from "../forms";

export interface CertInfo {
  filename: string; fingerprint?: string; subject?: string; issuer?: string;
  notbefore?: number; notafter?: number; san?: string[];
}

interface NodeConfig { acme?: string; digest?: string; [key: string]: string | number | undefined }

/** The custom (or ACME) certificate's file, as PVE names it. */
export const CUSTOM_FILE = "pveproxy-ssl.pem";
const DOMAIN_KEYS = [0, 1, 2, 3, 4, 5].map((i) => `acmedomain${i}`);

/** A PVE property string (`a=1,b=2`; a bare first value is `defaultKey`'s) as a record. */
function parseProps(text: string | undefined, defaultKey: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of (text ?? "").split(",").map((x) => x.trim()).filter(Boolean)) {
    const at = part.indexOf("=");
    if (at < 0) out[defaultKey] = part;
    else out[part.slice(0, at)] = part.slice(at + 1);
  }
  return out;
}

function formatProps(values: Record<string, string>): string {
  return Object.entries(values).filter(([, v]) => v !== "").map(([k, v]) => `${k}=${v}`).join(",");
}

interface Domain { domain: string; plugin: string; alias: string; key: string }

/** The node's ACME domains: each acmedomainN, then those of `acme`'s `domains` (standalone). */
function domainsOf(cfg: NodeConfig | undefined): Domain[] {
  const out: Domain[] = [];
  for (const key of DOMAIN_KEYS) {
    const v = cfg?.[key];
    if (typeof v !== "string") continue;
    const p = parseProps(v, "domain");
    out.push({ domain: p.domain ?? "", plugin: p.plugin ?? "standalone", alias: p.alias ?? "", key });
  }
  for (const d of (parseProps(cfg?.acme, "account").domains ?? "").split(";").filter(Boolean)) {
    out.push({ domain: d, plugin: "standalone", alias: "", key: "acme" });
  }
  return out;
}

type Editing = { kind: "upload" } | { kind: "delete" } | { kind: "account" } | { kind: "domain" }
  | { kind: "remove"; domain: Domain } | { kind: "revoke" };

/** A text area's content from a file the user picks (the PEM files of the upload). */
function FileText(props: { id: string; label: string; onText: (text: string) => void }) {
  return (
    <label class="field">
      {props.label}
      <input type="file" id={props.id} accept=".pem,.crt,.key,.cer,text/plain"
        onChange={async (e) => {
          const input = e.currentTarget;       // null once the event is dispatched
          const f = input.files?.[0];
          if (f) props.onText(await f.text());
          input.value = "";                    // the same file may be picked again
        }} />
    </label>
  );
}

export function Certificates(props: { node: string }) {
  const base = `/nodes/${encodeURIComponent(props.node)}`;
  const info = usePoll<CertInfo[]>(`${base}/certificates/info`, 10000);
  const config = usePoll<NodeConfig>(`${base}/config`, 10000);
  const outcome = useOutcome(() => { info.refresh(); config.refresh(); });
  const can = usePerms();
  const write = can(`/nodes/${props.node}`, "Sys.Modify");
  const writeConfig = can("/", "Sys.Modify");
  // PVE: plugins need Sys.Modify on / (the domain dialog's plugin list)
  const plugins = usePoll<{ plugin: string }[]>(writeConfig ? "/cluster/acme/plugins" : null, 30000);
  const accounts = usePoll<{ name: string }[]>("/cluster/acme/account", 30000);
  const [editing, setEditing] = useState<Editing | null>(null);
  const [form, setForm] = useState<Record<string, string>>({});
  const errors = outcome.errors;
  const set = (k: string) => (e: Event) =>
    setForm({ ...form, [k]: (e.currentTarget as HTMLInputElement).value });

  const certs = info.data ?? [];
  const custom = certs.some((c) => c.filename === CUSTOM_FILE);
  const cfg = config.data;
  const acme = parseProps(cfg?.acme, "account");
  const domains = domainsOf(cfg);
  const freeKey = DOMAIN_KEYS.find((k) => cfg?.[k] === undefined);

  const open = (e: Editing, values: Record<string, string> = {}) => {
    outcome.clear();
    setForm(values);
    setEditing(e);
  };
  const close = () => { setEditing(null); setForm({}); };      // the key text is forgotten

  const save = async () => {
    if (!editing) return;
    let ok = false;
    switch (editing.kind) {
      case "upload":
        ok = await outcome.send("POST", `${base}/certificates/custom`, {
          certificates: form.certificates ?? "", key: form.key?.trim() ? form.key : undefined,
          force: form.force === "1" ? true : undefined, restart: true,
        }, t("cert.uploaded"));
        break;
      case "delete":
        ok = await outcome.send("DELETE", `${base}/certificates/custom`, { restart: 1 }, t("cert.deleted"));
        break;
      case "account":
        ok = await outcome.send("PUT", `${base}/config`, {
          acme: formatProps({ ...acme, account: form.account ?? "" }), digest: cfg?.digest,
        }, t("cert.acme.saved"));
        break;
      case "domain":
        if (!freeKey) { outcome.note(t("cert.acme.full"), true); return; }
        ok = await outcome.send("PUT", `${base}/config`, {
          [freeKey]: formatProps({ domain: form.domain ?? "", plugin: form.plugin ?? "standalone",
                                   alias: form.alias ?? "" }),
          digest: cfg?.digest,
        }, t("cert.acme.saved"));
        break;
      case "remove": {
        const d = editing.domain;
        if (d.key === "acme") {
          const rest = (acme.domains ?? "").split(";").filter((x) => x && x !== d.domain);
          ok = await outcome.send("PUT", `${base}/config`, {
            acme: formatProps({ ...acme, domains: rest.join(";") }), digest: cfg?.digest,
          }, t("cert.acme.saved"));
        } else {
          ok = await outcome.send("PUT", `${base}/config`, { delete: d.key, digest: cfg?.digest },
            t("cert.acme.saved"));
        }
        break;
      }
      case "revoke":
        ok = await outcome.send("DELETE", `${base}/certificates/acme/certificate`, {},
          t("cert.acme.started"));
        break;
    }
    if (ok) close();
  };
  const task = (method: string) => outcome.send(method, `${base}/certificates/acme/certificate`,
    { force: method === "PUT" || custom ? true : undefined }, t("cert.acme.started"));

  return (
    <section id="node-certificates" aria-labelledby="cert-list-title">
      <h2 id="cert-list-title">{t("cert.list")}</h2>
      <OutcomeMessage outcome={outcome} id="cert-message" />
      {!editing && <OtherErrors errors={errors} shown={[]} />}
      {info.error && <p class="error">{t("common.error", { message: info.error.message })}</p>}
      {write && <div class="toolbar" role="toolbar" aria-label={t("cert.list")}>
        <button id="cert-upload" onClick={() => open({ kind: "upload" }, { force: custom ? "1" : "0" })}>
          {t("cert.upload")}</button>
        <button id="cert-delete" disabled={!custom} onClick={() => open({ kind: "delete" })}>
          {t("cert.delete")}</button>
      </div>}
      {info.data && !certs.length && <p>{t("cert.none")}</p>}
      <div class="table-wrap">
        <table id="cert-table">
          <thead><tr><th>{t("cert.file")}</th><th>{t("cert.issuer")}</th><th>{t("cert.subject")}</th>
            <th>{t("cert.san")}</th><th>{t("cert.expires")}</th><th>{t("cert.fingerprint")}</th></tr></thead>
          <tbody>
            {certs.map((c) => (
              <tr key={c.filename} data-filename={c.filename}>
                <td>{c.filename}</td><td class="cert-issuer">{c.issuer ?? ""}</td>
                <td class="cert-subject">{c.subject ?? ""}</td>
                <td class="cert-san">{(c.san ?? []).join(", ")}</td>
                <td class="cert-expires">{fmt.time(c.notafter)}</td>
                <td class="cert-fingerprint mono">{c.fingerprint ?? ""}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <TaskArea outcome={outcome} onDone={() => { info.refresh(); config.refresh(); }} />

      <h2 id="cert-acme-title">{t("cert.acme")}</h2>
      {config.error && <p class="error">{t("common.error", { message: config.error.message })}</p>}
      <dl id="cert-acme-account">
        <dt>{t("cert.acme.account")}</dt><dd>{acme.account ?? (cfg ? "default" : t("common.loading"))}</dd>
      </dl>
      {accounts.data && !accounts.data.length && <p class="notice">{t("cert.acme.noaccount")}</p>}
      <div class="toolbar" role="toolbar" aria-label={t("cert.acme")}>
        {writeConfig && <>
          <button id="cert-acme-account-edit" onClick={() => open({ kind: "account" },
            { account: acme.account ?? "default" })}>{t("cert.acme.account.edit")}</button>
          <button id="cert-acme-add" disabled={!freeKey} onClick={() => open({ kind: "domain" },
            { plugin: "standalone" })}>{t("cert.acme.add")}</button></>}
        {write && <>
          <button id="cert-acme-order" disabled={outcome.busy || !domains.length}
            onClick={() => task("POST")}>{t("cert.acme.order")}</button>
          <button id="cert-acme-renew" disabled={outcome.busy || !custom}
            onClick={() => task("PUT")}>{t("cert.acme.renew")}</button>
          <button id="cert-acme-revoke" disabled={outcome.busy || !custom}
            onClick={() => open({ kind: "revoke" })}>{t("cert.acme.revoke")}</button></>}
      </div>
      {cfg && !domains.length && <p>{t("cert.acme.nodomain")}</p>}
      <div class="table-wrap">
        <table id="cert-acme-domains" aria-labelledby="cert-acme-title">
          <thead><tr><th>{t("cert.acme.domain")}</th><th>{t("cert.acme.plugin")}</th>
            <th>{t("cert.acme.alias")}</th><th>{t("cert.acme.key")}</th><th /></tr></thead>
          <tbody>
            {domains.map((d) => (
              <tr key={`${d.key}/${d.domain}`} data-domain={d.domain}>
                <td>{d.domain}</td><td>{d.plugin}</td><td>{d.alias}</td><td>{d.key}</td>
                <td class="row-actions">{writeConfig && <button class="cert-acme-remove"
                  aria-label={`${t("cert.acme.remove")} ${d.domain}`}
                  onClick={() => open({ kind: "remove", domain: d })}>{t("cert.acme.remove")}</button>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>

      {editing?.kind === "upload" && (
        <Dialog title={t("cert.upload")} okLabel={t("cert.upload")} okDisabled={outcome.busy}
          onOk={save} onCancel={close}>
          <FileText id="cert-pem-file" label={t("cert.fromfile", { what: t("cert.pem") })}
            onText={(text) => setForm((f) => ({ ...f, certificates: text }))} />
          <Field label={t("cert.pem")} param="certificates" errors={errors}>
            <textarea id="cert-pem" rows={8} class="mono" spellcheck={false} value={form.certificates ?? ""}
              onInput={set("certificates")} placeholder="-----BEGIN CERTIFICATE-----" /></Field>
          <FileText id="cert-key-file" label={t("cert.fromfile", { what: t("cert.key") })}
            onText={(text) => setForm((f) => ({ ...f, key: text }))} />
          <Field label={t("cert.key")} param="key" errors={errors}>
            <textarea id="cert-key" rows={6} class="mono" spellcheck={false} autocomplete="off"
              value={form.key ?? ""} onInput={set("key")} placeholder="-----BEGIN PRIVATE KEY-----"
              aria-describedby="cert-key-help" /></Field>
          <p class="help" id="cert-key-help">{t("cert.key.help")}</p>
          <label class="check"><input type="checkbox" id="cert-force" checked={form.force === "1"}
            onChange={(e) => setForm({ ...form, force: e.currentTarget.checked ? "1" : "0" })} />
            {t("cert.force")}</label>
          {errors.force && <span class="field-error error" id="error-force">{errors.force}</span>}
          <OtherErrors errors={errors} shown={["certificates", "key", "force"]} />
          <OutcomeMessage outcome={outcome} id="cert-dialog-message" />
        </Dialog>
      )}
      {editing?.kind === "delete" && (
        <Dialog title={t("cert.delete")} danger onOk={save} onCancel={close}>
          <p>{t("cert.confirm.delete", { node: props.node })}</p>
          <OutcomeMessage outcome={outcome} id="cert-dialog-message" />
        </Dialog>
      )}
      {editing?.kind === "revoke" && (
        <Dialog title={t("cert.acme.revoke")} danger onOk={save} onCancel={close}>
          <p>{t("cert.acme.confirm.revoke", { node: props.node })}</p>
          <OutcomeMessage outcome={outcome} id="cert-dialog-message" />
        </Dialog>
      )}
      {editing?.kind === "account" && (
        <Dialog title={t("cert.acme.account.edit")} okDisabled={outcome.busy} onOk={save} onCancel={close}>
          <Field label={t("cert.acme.account")} param="acme" errors={errors}>
            <select id="cert-acme-account-select" value={form.account} onChange={set("account")}>
              {[...new Set([form.account ?? "default", ...(accounts.data ?? []).map((a) => a.name)])]
                .map((n) => <option key={n} value={n}>{n}</option>)}
            </select></Field>
          <OtherErrors errors={errors} shown={["acme"]} />
          <OutcomeMessage outcome={outcome} id="cert-dialog-message" />
        </Dialog>
      )}
      {editing?.kind === "domain" && (
        <Dialog title={t("cert.acme.add")} okDisabled={outcome.busy} onOk={save} onCancel={close}>
          <Field label={t("cert.acme.domain")} param={freeKey ?? "acmedomain0"} errors={errors}>
            <input id="cert-acme-domain" value={form.domain ?? ""} onInput={set("domain")}
              placeholder="pve1.example.com" /></Field>
          <Field label={t("cert.acme.plugin")} param="plugin" errors={errors}>
            <select id="cert-acme-plugin" value={form.plugin} onChange={set("plugin")}>
              {[...new Set(["standalone", ...(plugins.data ?? []).map((p) => p.plugin)])]
                .map((p) => <option key={p} value={p}>{p}</option>)}
            </select></Field>
          <Field label={t("cert.acme.alias")} param="alias" errors={errors}>
            <input id="cert-acme-alias" value={form.alias ?? ""} onInput={set("alias")} /></Field>
          <OtherErrors errors={errors} shown={[freeKey ?? "acmedomain0", "plugin", "alias"]} />
          <OutcomeMessage outcome={outcome} id="cert-dialog-message" />
        </Dialog>
      )}
      {editing?.kind === "remove" && (
        <Dialog title={t("cert.acme.remove")} danger onOk={save} onCancel={close}>
          <p>{t("cert.acme.confirm.remove", { domain: editing.domain.domain, node: props.node })}</p>
          <OutcomeMessage outcome={outcome} id="cert-dialog-message" />
        </Dialog>
      )}
    </section>
  );
}
