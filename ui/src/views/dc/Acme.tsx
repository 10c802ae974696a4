// Datacenter → ACME, PVE's ACME panel: the accounts (GET /cluster/acme/account; one
// registered with POST: name, e-mail, a directory of GET /cluster/acme/directories and
// its terms of service, GET /cluster/acme/tos, accepted; deactivated with DELETE; both
// tasks, followed in the task viewer) and the challenge plugins (GET/POST/PUT/DELETE
// /cluster/acme/plugins[/{id}], standalone and dns). A dns plugin's `data` is write-only:
// the API answers `has-data` alone, so the edit dialog starts empty and sends it only
// when typed (base64 of the KEY=VALUE lines, as PVE's UI). A lazy chunk.
import { useEffect, useState } from "preact/hooks";
import { get } from "../../api";
import { usePoll } from "../../poll";
import { t } from "../../strings";
import { Dialog } from "../Confirm";
import { DcTabs } from "../DcViews";
import { usePerms } from "../access/perms";
import { Field, OtherErrors, OutcomeMessage, TaskArea, useOutcome } from "../forms";

export interface AcmePlugin {
  plugin: string; type: "standalone" | "dns"; api?: string; "has-data"?: number | boolean;
  "validation-delay"?: number; nodes?: string; disable?: number; digest?: string;
}

type Editing = { kind: "account" } | { kind: "deactivate"; name: string }
  | { kind: "plugin"; plugin: AcmePlugin | null } | { kind: "remove"; id: string };

const PLUGIN_FIELDS = ["id", "type", "api", "data", "validation-delay", "nodes", "disable"];

/** base64 of UTF-8 text (PVE's UI sends a dns plugin's data so). */
function base64(text: string): string {
  const bytes = new TextEncoder().encode(text);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

export function Acme() {
  const accounts = usePoll<{ name: string }[]>("/cluster/acme/account", 10000);
  const can = usePerms();
  const root = can("/", "Sys.Modify");
  const plugins = usePoll<AcmePlugin[]>(root ? "/cluster/acme/plugins" : null, 10000);
  const directories = usePoll<{ name: string; url: string }[]>("/cluster/acme/directories", 60000);
  const outcome = useOutcome(() => { accounts.refresh(); plugins.refresh(); });
  const [editing, setEditing] = useState<Editing | null>(null);
  const [form, setForm] = useState<Record<string, string>>({});
  const [tos, setTos] = useState<{ url: string | null; error?: string } | null>(null);
  const errors = outcome.errors;
  const set = (k: string) => (e: Event) =>
    setForm({ ...form, [k]: (e.currentTarget as HTMLInputElement).value });

  // the chosen directory's terms of service, asked of the CA through the API
  const directory = editing?.kind === "account" ? form.directory : undefined;
  useEffect(() => {
    if (!directory) return;
    let alive = true;
    setTos(null);
    get<string | null>("/cluster/acme/tos", { directory }).then(
      (url) => { if (alive) setTos({ url: url || null }); },
      (e: Error) => { if (alive) setTos({ url: null, error: e.message }); });
    return () => { alive = false; };
  }, [directory]);

  const open = (e: Editing, values: Record<string, string> = {}) => {
    outcome.clear();
    setForm(values);
    setEditing(e);
  };
  const close = () => { setEditing(null); setForm({}); };

  const save = async () => {
    if (!editing) return;
    let ok = false;
    if (editing.kind === "account") {
      if (tos?.url && form.tos !== "1") { outcome.note(t("acme.account.tos.needed"), true); return; }
      ok = await outcome.send("POST", "/cluster/acme/account", {
        name: form.name || undefined, contact: form.contact ?? "", directory: form.directory || undefined,
        tos_url: tos?.url && form.tos === "1" ? tos.url : undefined,
      });
    } else if (editing.kind === "deactivate") {
      ok = await outcome.send("DELETE", `/cluster/acme/account/${encodeURIComponent(editing.name)}`);
    } else if (editing.kind === "remove") {
      ok = await outcome.send("DELETE", `/cluster/acme/plugins/${encodeURIComponent(editing.id)}`, {},
        t("acme.plugin.removed", { id: editing.id }));
    } else {
      const p = editing.plugin;
      const dns = (p?.type ?? form.type) === "dns";
      const id = p?.plugin ?? form.id ?? "";
      const values = {
        api: dns ? form.api || undefined : undefined,
        data: dns && form.data?.trim() ? base64(form.data) : undefined,
        "validation-delay": dns && form.delay?.trim() ? form.delay.trim() : undefined,
        nodes: form.nodes?.trim() || undefined,
        disable: form.disable === "1",
      };
      if (p) {
        const gone = [["nodes", p.nodes], ["validation-delay", p["validation-delay"]]]
          .filter(([k, was]) => was !== undefined && values[k as "nodes"] === undefined).map(([k]) => k);
        ok = await outcome.send("PUT", `/cluster/acme/plugins/${encodeURIComponent(id)}`,
          { ...values, delete: gone.length ? gone.join(",") : undefined, digest: p.digest },
          t("acme.plugin.saved", { id }));
      } else {
        ok = await outcome.send("POST", "/cluster/acme/plugins", { id, type: form.type, ...values },
          t("acme.plugin.saved", { id }));
      }
    }
    if (ok) close();
  };

  const openPlugin = (p: AcmePlugin | null) => open({ kind: "plugin", plugin: p }, {
    id: p?.plugin ?? "", type: p?.type ?? "dns", api: p?.api ?? "", data: "",
    delay: p?.["validation-delay"] !== undefined ? String(p["validation-delay"]) : "",
    nodes: p?.nodes ?? "", disable: p?.disable ? "1" : "0",
  });

  const list = accounts.data ?? [];
  const plist = plugins.data ?? [];
  const editingPlugin = editing?.kind === "plugin" ? editing.plugin : null;
  const pluginDns = editing?.kind === "plugin" && (editingPlugin?.type ?? form.type) === "dns";
  return (
    <div class="view" id="view-dc-acme">
      <DcTabs current="acme" />
      <OutcomeMessage outcome={outcome} id="acme-message" />
      {!editing && <OtherErrors errors={errors} shown={[]} />}
      <TaskArea outcome={outcome} onDone={() => accounts.refresh()} />
      <section aria-labelledby="acme-accounts-title">
        <h2 id="acme-accounts-title">{t("acme.accounts")}</h2>
        {accounts.error && <p class="error">{t("common.error", { message: accounts.error.message })}</p>}
        {root && <div class="toolbar" role="toolbar" aria-label={t("acme.accounts")}>
          <button id="acme-account-add" onClick={() => open({ kind: "account" },
            { name: "", contact: "", directory: directories.data?.[0]?.url ?? "", tos: "0" })}>
            {t("acme.account.add")}</button></div>}
        {accounts.data && !list.length && <p>{t("acme.account.none")}</p>}
        <div class="table-wrap">
          <table id="acme-account-table" aria-labelledby="acme-accounts-title">
            <thead><tr><th>{t("acme.account.name")}</th><th /></tr></thead>
            <tbody>
              {list.map((a) => (
                <tr key={a.name} data-account={a.name}>
                  <td>{a.name}</td>
                  <td class="row-actions">{root && <button class="acme-account-deactivate"
                    aria-label={`${t("acme.account.deactivate")} ${a.name}`}
                    onClick={() => open({ kind: "deactivate", name: a.name })}>
                    {t("acme.account.deactivate")}</button>}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>
      {root && <section aria-labelledby="acme-plugins-title">
        <h2 id="acme-plugins-title">{t("acme.plugins")}</h2>
        {plugins.error && <p class="error">{t("common.error", { message: plugins.error.message })}</p>}
        <div class="toolbar" role="toolbar" aria-label={t("acme.plugins")}>
          <button id="acme-plugin-add" onClick={() => openPlugin(null)}>{t("acme.plugin.add")}</button>
        </div>
        {plugins.data && !plist.length && <p>{t("acme.plugin.none")}</p>}
        <div class="table-wrap">
          <table id="acme-plugin-table" aria-labelledby="acme-plugins-title">
            <thead><tr><th>{t("acme.plugin.id")}</th><th>{t("acme.plugin.type")}</th>
              <th>{t("acme.plugin.api")}</th><th>{t("acme.plugin.hasdata")}</th>
              <th>{t("acme.plugin.delay")}</th><th>{t("acme.plugin.nodes")}</th>
              <th>{t("acme.plugin.disable")}</th><th /></tr></thead>
            <tbody>
              {plist.map((p) => (
                <tr key={p.plugin} data-plugin={p.plugin}>
                  <td>{p.plugin}</td><td class="acme-plugin-type">{p.type}</td><td>{p.api ?? ""}</td>
                  <td>{p.type === "dns" ? (p["has-data"] ? "✓" : "—") : ""}</td>
                  <td>{p["validation-delay"] ?? ""}</td><td>{p.nodes ?? ""}</td>
                  <td>{p.disable ? "✓" : ""}</td>
                  <td class="row-actions">
                    <button class="acme-plugin-edit" aria-label={`${t("acme.edit")} ${p.plugin}`}
                      onClick={() => openPlugin(p)}>{t("acme.edit")}</button>
                    <button class="acme-plugin-remove" aria-label={`${t("acme.plugin.remove")} ${p.plugin}`}
                      onClick={() => open({ kind: "remove", id: p.plugin })}>{t("acme.plugin.remove")}</button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>}

      {editing?.kind === "account" && (
        <Dialog title={t("acme.account.add")} okDisabled={outcome.busy} onOk={save} onCancel={close}>
          <Field label={t("acme.account.name")} param="name" errors={errors}>
            <input id="acme-account-name" value={form.name} onInput={set("name")} placeholder="default" /></Field>
          <Field label={t("acme.account.contact")} param="contact" errors={errors}>
            <input id="acme-account-contact" type="email" value={form.contact} onInput={set("contact")} /></Field>
          <Field label={t("acme.account.directory")} param="directory" errors={errors}>
            <select id="acme-account-directory" value={form.directory} onChange={set("directory")}>
              {(directories.data ?? []).map((d) => <option key={d.url} value={d.url}>{d.name}</option>)}
            </select></Field>
          <p id="acme-account-tos">{t("acme.account.tos")}: {!tos ? t("common.loading")
            : tos.error ? <span class="error">{t("common.error", { message: tos.error })}</span>
            : tos.url ? <a href={tos.url} target="_blank" rel="noreferrer">{tos.url}</a>
            : t("acme.account.tos.none")}</p>
          {tos?.url && <label class="check"><input type="checkbox" id="acme-account-tos-accept"
            checked={form.tos === "1"}
            onChange={(e) => setForm({ ...form, tos: e.currentTarget.checked ? "1" : "0" })} />
            {t("acme.account.tos.accept")}</label>}
          {errors.tos_url && <span class="field-error error" id="error-tos_url">{errors.tos_url}</span>}
          <OtherErrors errors={errors} shown={["name", "contact", "directory", "tos_url"]} />
          <OutcomeMessage outcome={outcome} id="acme-dialog-message" />
        </Dialog>
      )}
      {editing?.kind === "deactivate" && (
        <Dialog title={t("acme.account.deactivate")} danger onOk={save} onCancel={close}>
          <p>{t("acme.account.confirm.deactivate", { name: editing.name })}</p>
          <OutcomeMessage outcome={outcome} id="acme-dialog-message" />
        </Dialog>
      )}
      {editing?.kind === "plugin" && (
        <Dialog title={editingPlugin ? t("acme.plugin.edit", { id: editingPlugin.plugin }) : t("acme.plugin.add")}
          okDisabled={outcome.busy} onOk={save} onCancel={close}>
          {!editingPlugin && <>
            <Field label={t("acme.plugin.id")} param="id" errors={errors}>
              <input id="acme-plugin-id" value={form.id} onInput={set("id")} /></Field>
            <Field label={t("acme.plugin.type")} param="type" errors={errors}>
              <select id="acme-plugin-type" value={form.type} onChange={set("type")}>
                <option value="dns">dns</option><option value="standalone">standalone</option>
              </select></Field></>}
          {pluginDns && <>
            <Field label={t("acme.plugin.api")} param="api" errors={errors}>
              <input id="acme-plugin-api" value={form.api} onInput={set("api")} placeholder="cf" /></Field>
            <Field label={t("acme.plugin.data")} param="data" errors={errors}>
              <textarea id="acme-plugin-data" rows={4} class="mono" spellcheck={false} autocomplete="off"
                value={form.data} onInput={set("data")} aria-describedby="acme-plugin-data-help"
                placeholder={editingPlugin?.["has-data"] ? t("acme.plugin.data.keep") : "CF_Token=..."} /></Field>
            <p class="help" id="acme-plugin-data-help">{t("acme.plugin.data.help")}
              {editingPlugin?.["has-data"] ? ` ${t("acme.plugin.data.keep")}` : ""}</p>
            <Field label={t("acme.plugin.delay")} param="validation-delay" errors={errors}>
              <input id="acme-plugin-delay" inputMode="numeric" value={form.delay} onInput={set("delay")}
                placeholder="30" /></Field></>}
          <Field label={t("acme.plugin.nodes")} param="nodes" errors={errors}>
            <input id="acme-plugin-nodes" value={form.nodes} onInput={set("nodes")} /></Field>
          <label class="check"><input type="checkbox" id="acme-plugin-disable" checked={form.disable === "1"}
            onChange={(e) => setForm({ ...form, disable: e.currentTarget.checked ? "1" : "0" })} />
            {t("acme.plugin.disable")}</label>
          <OtherErrors errors={errors} shown={PLUGIN_FIELDS} />
          <OutcomeMessage outcome={outcome} id="acme-dialog-message" />
        </Dialog>
      )}
      {editing?.kind === "remove" && (
        <Dialog title={t("acme.plugin.remove")} danger onOk={save} onCancel={close}>
          <p>{t("acme.plugin.confirm.remove", { id: editing.id })}</p>
          <OutcomeMessage outcome={outcome} id="acme-dialog-message" />
        </Dialog>
      )}
    </div>
  );
}
