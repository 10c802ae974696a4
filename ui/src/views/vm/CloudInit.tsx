// The VM's Cloud-Init tab: user, password (write-only: the API never returns it, the
// field only sets a new one), SSH keys, ipconfig0, DNS server and domain, saved with
// PUT .../config; "Regenerate image" rewrites the drive (PUT .../cloudinit).
import { useEffect, useState } from "preact/hooks";
import { usePoll } from "../../poll";
import { t } from "../../strings";
import { Field, OtherErrors, OutcomeMessage, useOutcome } from "../forms";

const KEYS = ["ciuser", "sshkeys", "ipconfig0", "nameserver", "searchdomain"] as const;
type Key = (typeof KEYS)[number];

export function CloudInit(props: { base: string }) {
  const config = usePoll<Record<string, string | number>>(`${props.base}/config`, 5000);
  const outcome = useOutcome(() => config.refresh());
  const [form, setForm] = useState<Record<string, string> | null>(null);
  const [password, setPassword] = useState("");
  const loaded = (c: Record<string, string | number>) => Object.fromEntries(KEYS.map((k) => [k,
    c[k] === undefined ? "" : k === "sshkeys" ? decodeURIComponent(String(c[k])) : String(c[k])]));
  useEffect(() => { if (config.data && form === null) setForm(loaded(config.data)); }, [config.data]);
  if (!form) return <p>{t("common.loading")}</p>;
  const saved = config.data ? loaded(config.data) : form;
  const hasDrive = Object.values(config.data ?? {}).some((v) => /cloudinit/.test(String(v)));
  const passwordSet = config.data?.cipassword !== undefined;

  const save = async () => {
    const params: Record<string, string> = {};
    const deletes: string[] = [];
    for (const k of KEYS) {
      if (form[k] === saved[k]) continue;
      if (form[k] === "") deletes.push(k);
      // PVE's sshkeys are URL-encoded (newlines and all)
      else params[k] = k === "sshkeys" ? encodeURIComponent(form[k]) : form[k];
    }
    if (password) params.cipassword = password;
    if (!Object.keys(params).length && !deletes.length) return;
    if (deletes.length) params.delete = deletes.join(",");
    if (await outcome.send("PUT", `${props.base}/config`, params, t("hw.saved"))) setPassword("");
  };
  const set = (k: Key) => (e: Event) =>
    setForm({ ...form, [k]: (e.currentTarget as HTMLInputElement).value });
  const errors = outcome.errors;
  return (
    <form class="card wizard" id="vm-cloudinit" onSubmit={(e) => { e.preventDefault(); save(); }}>
      <OutcomeMessage outcome={outcome} id="ci-message" />
      {!hasDrive && <p class="notice">{t("ci.nodrive")}</p>}
      <Field label={t("ci.user")} param="ciuser" errors={errors}>
        <input id="ci-ciuser" value={form.ciuser} onInput={set("ciuser")} />
      </Field>
      <Field label={t("ci.password")} param="cipassword" errors={errors}>
        <input id="ci-cipassword" type="password" autocomplete="new-password" value={password}
          onInput={(e) => setPassword(e.currentTarget.value)}
          placeholder={passwordSet ? t("ci.password.set") : t("ci.password.none")} />
      </Field>
      <Field label={t("ci.sshkeys")} param="sshkeys" errors={errors}>
        <textarea id="ci-sshkeys" rows={3} value={form.sshkeys} onInput={set("sshkeys")} />
      </Field>
      <Field label={t("ci.ipconfig0")} param="ipconfig0" errors={errors}>
        <input id="ci-ipconfig0" value={form.ipconfig0} onInput={set("ipconfig0")}
          placeholder="ip=dhcp | ip=192.0.2.10/24,gw=192.0.2.1" />
      </Field>
      <Field label={t("ci.nameserver")} param="nameserver" errors={errors}>
        <input id="ci-nameserver" value={form.nameserver} onInput={set("nameserver")} />
      </Field>
      <Field label={t("ci.searchdomain")} param="searchdomain" errors={errors}>
        <input id="ci-searchdomain" value={form.searchdomain} onInput={set("searchdomain")} />
      </Field>
      <OtherErrors errors={errors} shown={[...KEYS, "cipassword"]} />
      <div class="actions">
        <button type="button" id="ci-regenerate" disabled={outcome.busy}
          onClick={() => outcome.send("PUT", `${props.base}/cloudinit`, {}, t("ci.regenerated"))}>
          {t("ci.regenerate")}</button>
        <button type="submit" id="ci-save" class="primary" disabled={outcome.busy}>{t("opt.save")}</button>
      </div>
    </form>
  );
}
