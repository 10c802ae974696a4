// A VM's Replication tab: each of its disks on replicated storage, with both copies as
// their nodes report them (role, disk state, connection, out of sync, resync or verify
// progress; every online node asked about every 2 s, as the Replicated volumes page
// does), and the volume's adjustable settings (GET .../volumes/{volume}/config on a
// node holding a copy, changed with PUT .../volumes/{volume}: the API applies them on
// both nodes, and refuses a bad combination with per-parameter errors shown beside
// their fields). Disks on other storage are listed as not replicated.
import { useEffect, useState } from "preact/hooks";
import { get } from "../../api";
import { usePoll } from "../../poll";
import { t } from "../../strings";
import type { Resource } from "../../types";
import { usePerms } from "../access/perms";
import { CopiesTable, SyncLine, useNodeVolumes } from "../dc/Volumes";
import { mergeVolumes, type Volume } from "../dc/volumes";
import { Field, OtherErrors, OutcomeMessage, useOutcome } from "../forms";
import { changedParams, formValues, SETTINGS, vmDisks, type Setting, type VmDisk } from "./replication";

interface StorageDef { storage: string; type: string }

export function Replication(props: { base: string; node: string; vmid: number; resources: Resource[] }) {
  const config = usePoll<Record<string, unknown>>(`${props.base}/config`, 10000);
  const storages = usePoll<StorageDef[]>("/storage", 30000);
  const online = props.resources.filter((r) => r.type === "node" && r.node && r.status === "online")
    .map((r) => r.node as string).sort();
  const polled = useNodeVolumes(online);
  const volumes = mergeVolumes(polled.lists);
  const can = usePerms();
  const replicated = new Set((storages.data ?? []).filter((s) => s.type === "replicated").map((s) => s.storage));
  const disks = config.data ? vmDisks(config.data) : [];
  return (
    <div class="vm-replication" id="vm-replication">
      {config.error && <p class="error">{t("common.error", { message: config.error.message })}</p>}
      {Object.entries(polled.errors).map(([node, message]) => (
        <p key={node} class="error" data-node={node}>{t("vol.unreachable", { node, message })}</p>
      ))}
      {!config.data && !config.error && <p>{t("common.loading")}</p>}
      {config.data && !disks.length && <p id="repl-nodisk">{t("repl.nodisks")}</p>}
      {disks.map((d) => {
        const v = volumes.find((x) => x.name === d.volume && (!x.storage || x.storage === d.storage));
        if (v) return <DiskReplication key={d.key} disk={d} volume={v} vmNode={props.node}
          write={can("/", "Volume.Modify")} />;
        const known = replicated.has(d.storage);
        return (
          <section key={d.key} class="card vm-disk-repl" id={`repl-${d.key}`} data-replicated={known ? "unknown" : "no"}>
            <h2>{d.key}: {d.storage}:{d.volume}</h2>
            <p>{known ? (polled.loaded ? t("repl.unknown") : t("common.loading")) : t("repl.notreplicated")}</p>
          </section>
        );
      })}
    </div>
  );
}

function DiskReplication(props: { disk: VmDisk; volume: Volume; vmNode: string; write: boolean }) {
  const { disk, volume: v } = props;
  // the settings are read from the VM's node when it holds a copy (the Primary's side)
  const own = v.copies.filter((c) => c.own).map((c) => c.node);
  const from = own.includes(props.vmNode) ? props.vmNode : own[0];
  return (
    <section class="card volume vm-disk-repl" id={`repl-${disk.key}`} data-volume={v.name} data-replicated="yes">
      <h2>{disk.key}: {disk.storage}:{disk.volume}</h2>
      <CopiesTable volume={v} />
      <SyncLine volume={v} />
      <p><a href="#/dc/volumes">{t("repl.volumespage")}</a></p>
      {from && <Settings node={from} volume={v.name} write={props.write} />}
    </section>
  );
}

interface VolumeConfig { settings?: Record<string, unknown>; protocol?: string }

function Settings(props: { node: string; volume: string; write: boolean }) {
  const path = `/nodes/${encodeURIComponent(props.node)}/volumes/${encodeURIComponent(props.volume)}`;
  const [loaded, setLoaded] = useState<Record<string, string> | null>(null);
  const [values, setValues] = useState<Record<string, string>>({});
  const [loadError, setLoadError] = useState<string | null>(null);
  const [generation, setGeneration] = useState(0);
  const outcome = useOutcome(() => setGeneration((g) => g + 1));
  useEffect(() => {
    let alive = true;
    get<VolumeConfig>(`${path}/config`).then((c) => {
      if (!alive) return;
      const v = formValues(c.settings ?? {});
      setLoaded(v);
      setValues(v);
      setLoadError(null);
    }, (e: Error) => { if (alive) setLoadError(e.message); });
    return () => { alive = false; };
  }, [path, generation]);

  if (loadError) return <p class="error">{t("common.error", { message: loadError })}</p>;
  if (!loaded) return <p>{t("common.loading")}</p>;
  const changed = changedParams(loaded, values);
  const save = (e: Event) => {
    e.preventDefault();
    if (!Object.keys(changed).length) {
      outcome.note(t("repl.nochange"), false);
      return;
    }
    outcome.send("PUT", path, changed, t("repl.saved", { params: Object.keys(changed).join(", ") }));
  };
  const set = (param: string, value: string) => setValues({ ...values, [param]: value });
  const id = (s: Setting) => `repl-${props.volume}-${s.param}`;
  return (
    <form class="repl-settings" data-volume={props.volume} onSubmit={save}>
      <h3>{t("repl.settings", { node: props.node })}</h3>
      <div class="repl-fields">
        {SETTINGS.map((s) => (
          <Field key={s.param} label={t(`repl.param.${s.param}` as "repl.param.protocol")}
            param={s.param} errors={outcome.errors}>
            {s.kind === "enum" ? (
              <select id={id(s)} name={s.param} disabled={!props.write} value={values[s.param] ?? ""}
                onChange={(e) => set(s.param, e.currentTarget.value)}>
                {s.options!.map((o) => <option key={o} value={o}>{o}</option>)}
              </select>
            ) : s.kind === "bool" ? (
              <input type="checkbox" id={id(s)} name={s.param} disabled={!props.write}
                checked={values[s.param] === "1"}
                onChange={(e) => set(s.param, e.currentTarget.checked ? "1" : "0")} />
            ) : (
              <input type="number" min={0} id={id(s)} name={s.param} disabled={!props.write}
                value={values[s.param] ?? ""} onInput={(e) => set(s.param, e.currentTarget.value)} />
            )}
          </Field>
        ))}
      </div>
      <OtherErrors errors={outcome.errors} shown={SETTINGS.map((s) => s.param)} />
      {props.write && (
        <div class="toolbar">
          <button type="submit" class="repl-save" disabled={outcome.busy}>{t("repl.save")}</button>
          <button type="button" class="repl-reset" disabled={outcome.busy || !Object.keys(changed).length}
            onClick={() => { outcome.clear(); setValues(loaded); }}>{t("repl.reset")}</button>
        </div>
      )}
      <OutcomeMessage outcome={outcome} id={`repl-message-${props.volume}`} />
    </form>
  );
}
