// Datacenter → Resource Mappings, PVE's panel: the cluster's USB, PCI and directory
// mappings (GET /cluster/mapping/{usb,pci,dir}), each added (POST), edited (PUT with the
// type's `digest`; `map` is sent whole again, as PVE's check_config asks) or removed
// (DELETE, confirmed). A mapping holds one entry per node: USB `node=N,id=VVVV:PPPP` and/or
// `path=BUS-PORT`, PCI `node=N,path=ADDR,id=VVVV:DDDD`, Dir `node=N,path=/dir`; an entry's
// other keys (subsystem-id, iommugroup, description) are kept as they were. The API's
// per-parameter errors show beside their fields. A lazy chunk.
import { useState } from "preact/hooks";
import { usePoll } from "../../poll";
import { t } from "../../strings";
import type { Resource } from "../../types";
import { Dialog } from "../Confirm";
import { DcTabs } from "../DcViews";
import { usePerms } from "../access/perms";
import { Field, OtherErrors, OutcomeMessage, useOutcome } from "../forms";

export type MapKind = "usb" | "pci" | "dir";
const KINDS: MapKind[] = ["usb", "pci", "dir"];

export interface Mapping {
  id: string; description?: string; map?: string[]; digest?: string;
  mdev?: number; "live-migration-capable"?: number;
}

/** One node's entry of a mapping, the keys the form edits and the others as they were. */
interface Entry { node: string; id: string; path: string; rest: string[] }

function parseEntry(text: string): Entry {
  const e: Entry = { node: "", id: "", path: "", rest: [] };
  for (const part of text.split(",").filter(Boolean)) {
    const at = part.indexOf("=");
    const k = at < 0 ? "" : part.slice(0, at);
    const v = part.slice(at + 1);
    if (k === "node" || k === "id" || k === "path") e[k] = v;
    else e.rest.push(part);
  }
  return e;
}

function formatEntry(kind: MapKind, e: Entry): string {
  const parts = [`node=${e.node.trim()}`];
  if (kind !== "dir" && e.id.trim()) parts.push(`id=${e.id.trim()}`);
  if (e.path.trim()) parts.push(`path=${e.path.trim()}`);
  return [...parts, ...e.rest].join(",");
}

type Editing = { kind: "edit"; type: MapKind; mapping: Mapping | null }
  | { kind: "remove"; type: MapKind; id: string };

const SHOWN = ["id", "description", "map"];

export function Mappings(props: { resources: Resource[] }) {
  const usb = usePoll<Mapping[]>("/cluster/mapping/usb", 10000);
  const pci = usePoll<Mapping[]>("/cluster/mapping/pci", 10000);
  const dir = usePoll<Mapping[]>("/cluster/mapping/dir", 10000);
  const polls = { usb, pci, dir };
  const outcome = useOutcome(() => { usb.refresh(); pci.refresh(); dir.refresh(); });
  const can = usePerms();
  const [editing, setEditing] = useState<Editing | null>(null);
  const [form, setForm] = useState<Record<string, string>>({});
  const [entries, setEntries] = useState<Entry[]>([]);
  const errors = outcome.errors;
  const nodes = props.resources.filter((r) => r.type === "node" && r.node).map((r) => r.node as string).sort();
  const set = (k: string) => (e: Event) =>
    setForm({ ...form, [k]: (e.currentTarget as HTMLInputElement).value });
  const setEntry = (i: number, k: "node" | "id" | "path", v: string) =>
    setEntries(entries.map((x, j) => (j === i ? { ...x, [k]: v } : x)));

  const openEdit = (type: MapKind, m: Mapping | null) => {
    outcome.clear();
    setForm({ id: m?.id ?? "", description: m?.description ?? "", mdev: m?.mdev ? "1" : "0",
              live: m?.["live-migration-capable"] ? "1" : "0" });
    setEntries(m?.map?.length ? m.map.map(parseEntry) : [{ node: nodes[0] ?? "", id: "", path: "", rest: [] }]);
    setEditing({ kind: "edit", type, mapping: m });
  };

  const save = async () => {
    if (!editing) return;
    const base = `/cluster/mapping/${editing.type}`;
    let ok: boolean;
    if (editing.kind === "remove") {
      ok = await outcome.send("DELETE", `${base}/${encodeURIComponent(editing.id)}`, {},
        t("map.removed", { id: editing.id }));
    } else {
      const m = editing.mapping;
      const pciOnly = editing.type === "pci";
      const values = {
        description: form.description.trim() || undefined,
        map: entries.map((e) => formatEntry(editing.type, e)),
        mdev: pciOnly && form.mdev === "1" ? true : undefined,
        "live-migration-capable": pciOnly && form.live === "1" ? true : undefined,
      };
      const id = m?.id ?? form.id.trim();
      if (m) {
        const gone = [["description", m.description], ["mdev", m.mdev],
          ["live-migration-capable", m["live-migration-capable"]]]
          .filter(([k, was]) => was && values[k as "mdev"] === undefined).map(([k]) => k);
        ok = await outcome.send("PUT", `${base}/${encodeURIComponent(id)}`,
          { ...values, delete: gone.length ? gone.join(",") : undefined, digest: m.digest },
          t("map.saved", { id }));
      } else {
        ok = await outcome.send("POST", base, { id, ...values }, t("map.saved", { id }));
      }
    }
    if (ok) setEditing(null);
  };

  const kindName = (k: MapKind) => t(`map.${k}`);
  return (
    <div class="view" id="view-dc-mappings">
      <DcTabs current="mappings" />
      <OutcomeMessage outcome={outcome} id="map-message" />
      {!editing && <OtherErrors errors={errors} shown={[]} />}
      {KINDS.map((kind) => {
        const poll = polls[kind];
        const list = poll.data ?? [];
        const write = can(`/mapping/${kind}`, "Mapping.Modify");
        return (
          <section key={kind} id={`map-${kind}`} aria-labelledby={`map-${kind}-title`}>
            <h2 id={`map-${kind}-title`}>{kindName(kind)}</h2>
            {poll.error && <p class="error">{t("common.error", { message: poll.error.message })}</p>}
            {write && <div class="toolbar" role="toolbar" aria-label={kindName(kind)}>
              <button id={`map-${kind}-add`} onClick={() => openEdit(kind, null)}>{t("map.add")}</button>
            </div>}
            {poll.data && !list.length && <p>{t("map.none")}</p>}
            <div class="table-wrap">
              <table id={`map-${kind}-table`} aria-labelledby={`map-${kind}-title`}>
                <thead><tr><th>{t("map.id")}</th><th>{t("map.description")}</th>
                  <th>{t("map.entries")}</th><th /></tr></thead>
                <tbody>
                  {list.map((m) => (
                    <tr key={m.id} data-id={m.id}>
                      <td>{m.id}</td><td class="map-description">{m.description ?? ""}</td>
                      <td class="map-entries">{(m.map ?? []).map((x) => <div key={x} class="mono">{x}</div>)}</td>
                      <td class="row-actions">{can(`/mapping/${kind}/${m.id}`, "Mapping.Modify") && <>
                        <button class="map-edit" aria-label={`${t("map.edit")} ${m.id}`}
                          onClick={() => openEdit(kind, m)}>{t("map.edit")}</button>
                        <button class="map-remove" aria-label={`${t("map.remove")} ${m.id}`}
                          onClick={() => { outcome.clear(); setEditing({ kind: "remove", type: kind, id: m.id }); }}>
                          {t("map.remove")}</button></>}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          </section>
        );
      })}

      {editing?.kind === "edit" && (
        <Dialog title={editing.mapping ? t("map.title.edit", { kind: kindName(editing.type), id: editing.mapping.id })
          : t("map.title.add", { kind: kindName(editing.type) })}
          okDisabled={outcome.busy} onOk={save} onCancel={() => setEditing(null)}>
          {!editing.mapping && <Field label={t("map.id")} param="id" errors={errors}>
            <input id="map-id" value={form.id} onInput={set("id")} /></Field>}
          <Field label={t("map.description")} param="description" errors={errors}>
            <input id="map-description" value={form.description} onInput={set("description")} /></Field>
          <fieldset data-param="map" id="map-entries">
            <legend>{t("map.entries")}</legend>
            {entries.map((e, i) => (
              <div class="map-entry" key={i} data-index={i}>
                <label class="field">{t("map.entry.node")}
                  <select class="map-entry-node" value={e.node}
                    onChange={(ev) => setEntry(i, "node", ev.currentTarget.value)}>
                    {[...new Set([...nodes, e.node])].filter(Boolean).map((n) => <option key={n} value={n}>{n}</option>)}
                  </select></label>
                {editing.type !== "dir" && <label class="field">{t("map.entry.id")}
                  <input class="map-entry-id" value={e.id} placeholder="1d6b:0002"
                    onInput={(ev) => setEntry(i, "id", ev.currentTarget.value)} /></label>}
                <label class="field">{t(`map.entry.path.${editing.type}`)}
                  <input class="map-entry-path" value={e.path}
                    placeholder={editing.type === "usb" ? "1-2" : editing.type === "pci" ? "0000:01:00.0" : "/srv/share"}
                    onInput={(ev) => setEntry(i, "path", ev.currentTarget.value)} /></label>
                {entries.length > 1 && <button type="button" class="map-entry-remove"
                  onClick={() => setEntries(entries.filter((_, j) => j !== i))}>
                  {t("map.entry.remove", { n: i + 1 })}</button>}
              </div>
            ))}
            <button type="button" id="map-entry-add"
              onClick={() => setEntries([...entries, { node: nodes[0] ?? "", id: "", path: "", rest: [] }])}>
              {t("map.entry.add")}</button>
            {errors.map && <span class="field-error error" id="error-map">{errors.map}</span>}
          </fieldset>
          {editing.type === "pci" && <>
            <label class="check"><input type="checkbox" id="map-mdev" checked={form.mdev === "1"}
              onChange={(ev) => setForm({ ...form, mdev: ev.currentTarget.checked ? "1" : "0" })} />
              {t("map.mdev")}</label>
            <label class="check"><input type="checkbox" id="map-live" checked={form.live === "1"}
              onChange={(ev) => setForm({ ...form, live: ev.currentTarget.checked ? "1" : "0" })} />
              {t("map.livemig")}</label></>}
          <OtherErrors errors={errors} shown={SHOWN} />
          <OutcomeMessage outcome={outcome} id="map-dialog-message" />
        </Dialog>
      )}
      {editing?.kind === "remove" && (
        <Dialog title={t("map.remove")} danger onOk={save} onCancel={() => setEditing(null)}>
          <p>{t("map.confirm.remove", { kind: kindName(editing.type), id: editing.id })}</p>
          <OutcomeMessage outcome={outcome} id="map-dialog-message" />
        </Dialog>
      )}
    </div>
  );
}
