// The VM's Options tab: name, start at boot, boot order, protection, guest agent, tags,
// OS type, description. One form; Save sends only what changed with PUT .../config (an
// emptied field is deleted), so the API's per-parameter errors land on their fields.
import { useEffect, useState } from "preact/hooks";
import { usePoll } from "../../poll";
import { t } from "../../strings";
import { Field, OtherErrors, OutcomeMessage, useOutcome } from "../forms";

const KEYS = ["name", "onboot", "boot", "protection", "agent", "tags", "ostype", "description"] as const;
type Key = (typeof KEYS)[number];
const CHECKS: Key[] = ["onboot", "protection"];
const OSTYPES = ["l26", "l24", "win11", "win10", "win8", "win7", "wxp", "w2k", "solaris", "other"];

export function Options(props: { base: string }) {
  const config = usePoll<Record<string, string | number>>(`${props.base}/config`, 5000);
  const outcome = useOutcome(() => config.refresh());
  const [form, setForm] = useState<Record<string, string> | null>(null);
  const loaded = (c: Record<string, string | number>) =>
    Object.fromEntries(KEYS.map((k) => [k, c[k] === undefined ? "" : String(c[k])]));
  // the form starts from the config and is not overwritten by later polls while edited
  useEffect(() => { if (config.data && form === null) setForm(loaded(config.data)); }, [config.data]);
  if (!form) return <p>{t("common.loading")}</p>;
  const saved = config.data ? loaded(config.data) : form;
  const set = (k: Key) => (e: Event) =>
    setForm({ ...form, [k]: (e.currentTarget as HTMLInputElement).value });
  const check = (k: Key) => (e: Event) =>
    setForm({ ...form, [k]: (e.currentTarget as HTMLInputElement).checked ? "1" : "0" });

  const save = async () => {
    const params: Record<string, string> = {};
    const deletes: string[] = [];
    for (const k of KEYS) {
      if (form[k] === saved[k]) continue;
      if (form[k] === "" || (CHECKS.includes(k) && form[k] === "0")) deletes.push(k);
      else params[k] = form[k];
    }
    if (!Object.keys(params).length && !deletes.length) return;
    if (deletes.length) params.delete = deletes.join(",");
    if (config.data?.digest) params.digest = String(config.data.digest);
    // the form keeps what was saved; the refreshed config then agrees with it
    await outcome.send("PUT", `${props.base}/config`, params, t("hw.saved"));
  };
  const errors = outcome.errors;
  const text = (k: Key, label: string, placeholder?: string) => (
    <Field label={label} param={k} errors={errors}>
      <input id={`opt-${k}`} value={form[k]} onInput={set(k)} placeholder={placeholder} />
    </Field>
  );
  return (
    <form class="card wizard" id="vm-options" onSubmit={(e) => { e.preventDefault(); save(); }}>
      <OutcomeMessage outcome={outcome} id="opt-message" />
      {text("name", t("create.name"))}
      <label class="check"><input type="checkbox" id="opt-onboot" checked={form.onboot === "1"}
        onChange={check("onboot")} />{t("opt.onboot")}
        {errors.onboot && <span class="field-error error">{errors.onboot}</span>}</label>
      {text("boot", t("opt.boot"), "order=virtio0;ide2;net0")}
      <label class="check"><input type="checkbox" id="opt-protection" checked={form.protection === "1"}
        onChange={check("protection")} />{t("opt.protection")}
        {errors.protection && <span class="field-error error">{errors.protection}</span>}</label>
      {text("agent", t("opt.agent"), "enabled=1")}
      {text("tags", t("opt.tags"), "web;prod")}
      <Field label={t("create.ostype")} param="ostype" errors={errors}>
        <select id="opt-ostype" value={form.ostype} onChange={set("ostype")}>
          <option value="">{t("common.none")}</option>
          {OSTYPES.map((o) => <option key={o} value={o}>{o}</option>)}</select>
      </Field>
      <Field label={t("opt.description")} param="description" errors={errors}>
        <textarea id="opt-description" rows={3} value={form.description} onInput={set("description")} />
      </Field>
      <OtherErrors errors={errors} shown={[...KEYS]} />
      <div class="actions">
        <button type="button" onClick={() => { outcome.clear(); setForm(null); }}>{t("opt.reset")}</button>
        <button type="submit" id="opt-save" class="primary" disabled={outcome.busy}>{t("opt.save")}</button>
      </div>
    </form>
  );
}
