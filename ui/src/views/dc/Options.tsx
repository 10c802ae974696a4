// Datacenter → Options (GET/PUT /cluster/options): binome's datacenter options are PVE's
// `ha` property, the HA shutdown policy and the HA services' availability target, and
// PVE's `webauthn` property (relying party name, origin, ID). The API's per-parameter
// errors show beside the form. A lazy chunk.
import { Fragment } from "preact";
import { useEffect, useState } from "preact/hooks";
import { usePoll } from "../../poll";
import { t } from "../../strings";
import { DcTabs } from "../DcViews";
import { usePerms } from "../access/perms";
import { Field, OtherErrors, OutcomeMessage, useOutcome } from "../forms";

const POLICIES = ["conditional", "freeze", "failover", "migrate"];

/** PVE's `ha` property string `shutdown_policy=x,availability_target=y` as a record. */
export function parseHa(text: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of (text ?? "").split(",").map((x) => x.trim()).filter(Boolean)) {
    const [k, v] = part.includes("=") ? part.split("=", 2) : ["shutdown_policy", part];
    out[k] = v;
  }
  return out;
}

export function Options() {
  const { data, error, refresh } = usePoll<{ ha?: string; webauthn?: string }>("/cluster/options", 10000);
  const outcome = useOutcome(refresh);
  const can = usePerms();
  const write = can("/", "Sys.Modify");
  const current = parseHa(data?.ha);
  const [policy, setPolicy] = useState("");
  const [target, setTarget] = useState("");
  const [editing, setEditing] = useState(false);
  useEffect(() => {
    if (!editing) {
      setPolicy(current.shutdown_policy ?? "conditional");
      setTarget(current.availability_target ?? "");
    }
  }, [data?.ha, editing]);
  const save = async (e: Event) => {
    e.preventDefault();
    const ha = `shutdown_policy=${policy}` + (target.trim() ? `,availability_target=${target.trim()}` : "");
    if (await outcome.send("PUT", "/cluster/options", { ha }, t("opt.saved"))) setEditing(false);
  };
  return (
    <div class="view" id="view-dc-options">
      <DcTabs current="options" />
      {error && <p class="error">{t("common.error", { message: error.message })}</p>}
      <OutcomeMessage outcome={outcome} id="opt-message" />
      <section class="card">
        <h2>{t("opt.ha")}</h2>
        <dl id="opt-current">
          <dt>{t("opt.policy")}</dt><dd data-key="shutdown_policy">{current.shutdown_policy ?? t("opt.default", { value: "conditional" })}</dd>
          <dt>{t("opt.target")}</dt><dd data-key="availability_target">{current.availability_target ? `${current.availability_target} %` : t("common.none")}</dd>
        </dl>
        <p class="help">{t("opt.policy.help")}</p>
        {write && !editing && <button type="button" id="opt-edit" onClick={() => { outcome.clear(); setEditing(true); }}>{t("opt.edit")}</button>}
        {editing && (
          <form id="opt-form" onSubmit={save}>
            <Field label={t("opt.policy")} param="ha" errors={outcome.errors}>
              <select id="opt-policy" value={policy} onChange={(e) => setPolicy(e.currentTarget.value)}>
                {POLICIES.map((p) => <option key={p} value={p}>{p}</option>)}
              </select>
            </Field>
            <Field label={t("opt.target")} param="availability_target" errors={outcome.errors}>
              <input id="opt-target" value={target} inputMode="decimal" placeholder="99.9"
                onInput={(e) => setTarget(e.currentTarget.value)} />
            </Field>
            <OtherErrors errors={outcome.errors} shown={["ha", "availability_target"]} />
            <div class="toolbar">
              <button type="submit" id="opt-save" disabled={outcome.busy}>{t("opt.save")}</button>
              <button type="button" onClick={() => setEditing(false)}>{t("opt.cancel")}</button>
            </div>
          </form>
        )}
      </section>
      <WebauthnOption text={data?.webauthn} write={write} refresh={refresh} />
    </div>
  );
}

/** The `webauthn` property: rp, origin, id (PVE's WebAuthn Settings). */
function WebauthnOption(props: { text?: string; write: boolean; refresh: () => void }) {
  const outcome = useOutcome(props.refresh);
  const current: Record<string, string> = {};
  for (const part of (props.text ?? "").split(",").filter(Boolean)) {
    const [k, v] = part.split("=", 2);
    current[k] = v ?? "";
  }
  const [form, setForm] = useState<Record<string, string> | null>(null);
  const keys = ["rp", "origin", "id"];
  const save = async (e: Event) => {
    e.preventDefault();
    if (!form) return;
    const text = keys.filter((k) => form[k]?.trim()).map((k) => `${k}=${form[k].trim()}`).join(",");
    const params = text ? { webauthn: text } : { delete: "webauthn" };
    if (await outcome.send("PUT", "/cluster/options", params, t("opt.saved"))) setForm(null);
  };
  const label = (k: string) => t(`opt.webauthn.${k}` as "opt.webauthn.rp");
  return (
    <section class="card">
      <h2>{t("opt.webauthn")}</h2>
      <OutcomeMessage outcome={outcome} id="opt-webauthn-message" />
      <dl id="opt-webauthn-current">
        {keys.map((k) => <Fragment key={k}><dt>{label(k)}</dt><dd data-key={k}>{current[k] || t("common.none")}</dd></Fragment>)}
      </dl>
      <p class="help">{t("opt.webauthn.help")}</p>
      {props.write && !form && <button type="button" id="opt-webauthn-edit"
        onClick={() => { outcome.clear(); setForm({ rp: current.rp ?? "", origin: current.origin ?? "", id: current.id ?? "" }); }}>
        {t("opt.edit")}</button>}
      {form && (
        <form id="opt-webauthn-form" onSubmit={save}>
          {keys.map((k) => (
            <Field key={k} label={label(k)} param={k === "id" ? "webauthn" : `webauthn-${k}`} errors={outcome.errors}>
              <input id={`opt-webauthn-${k}`} value={form[k]}
                placeholder={k === "origin" ? location.origin : undefined}
                onInput={(e) => setForm({ ...form, [k]: e.currentTarget.value })} />
            </Field>
          ))}
          <OtherErrors errors={outcome.errors} shown={["webauthn"]} />
          <div class="toolbar">
            <button type="submit" id="opt-webauthn-save" disabled={outcome.busy}>{t("opt.save")}</button>
            <button type="button" onClick={() => setForm(null)}>{t("opt.cancel")}</button>
          </div>
        </form>
      )}
    </section>
  );
}
