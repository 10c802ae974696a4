// Datacenter → HA (/cluster/ha/...): the manager's status; the resources with add, edit
// (requested state, group, max_restart/max_relocate, availability target, comment) and
// remove, failback; the groups with add, edit (member nodes and their priorities,
// restricted, nofailback, comment) and delete; PVE 9's rules (HaRules.tsx). Every refusal shows the API's message and its
// per-parameter errors next to their fields; then maintenance (arm/disarm, a node's
// maintenance mode) and the fence devices, added, edited, removed and tested (HaAdmin.tsx). A lazy
// chunk: loaded when the page opens.
import { useState } from "preact/hooks";
import { usePoll } from "../../poll";
import { t } from "../../strings";
import type { HaStatusEntry, Resource } from "../../types";
import { Dialog } from "../Confirm";
import { DcTabs } from "../DcViews";
import { usePerms } from "../access/perms";
import { Field, OtherErrors, OutcomeMessage, useOutcome } from "../forms";
import { FenceDevices, HaMaintenance } from "./HaAdmin";
import { HaRules } from "./HaRules";
import { formatNodes, type Members, NodePriorities, parseNodes } from "./members";

interface HaResource {
  sid: string; state: string; group?: string; max_restart?: number; max_relocate?: number;
  comment?: string; availability_target?: number; digest?: string; failback?: number;
}
interface HaGroup { group: string; nodes: string; restricted?: number; nofailback?: number; comment?: string }

const STATES = ["started", "stopped", "disabled", "ignored"];
// the fields the resource dialog shows an error beside (others are listed below them)
const RES_FIELDS = ["sid", "state", "group", "max_restart", "max_relocate", "availability_target",
  "comment", "failback"];

type Editing =
  | { kind: "resource"; res: HaResource | null }
  | { kind: "remove"; sid: string }
  | { kind: "group"; group: HaGroup | null }
  | { kind: "deletegroup"; group: string };

export function HaPage(props: { resources: Resource[] }) {
  const status = usePoll<HaStatusEntry[]>("/cluster/ha/status/current", 2000);
  const res = usePoll<HaResource[]>("/cluster/ha/resources", 2000);
  const groups = usePoll<HaGroup[]>("/cluster/ha/groups", 5000);
  const outcome = useOutcome(() => { res.refresh(); groups.refresh(); });
  const [editing, setEditing] = useState<Editing | null>(null);
  const [form, setForm] = useState<Record<string, string>>({});
  const [members, setMembers] = useState<Members>({});
  const can = usePerms();
  const write = can("/", "Sys.Console", "HA.Modify");
  const managed = new Set((res.data ?? []).map((r) => r.sid));
  const candidates = props.resources.filter((r) => r.type === "qemu" && !managed.has(`vm:${r.vmid}`))
    .sort((a, b) => (a.vmid ?? 0) - (b.vmid ?? 0));
  const clusterNodes = props.resources.filter((r) => r.type === "node").map((r) => r.node ?? "")
    .filter(Boolean).sort();
  const set = (k: string) => (e: Event) =>
    setForm({ ...form, [k]: (e.currentTarget as HTMLInputElement).value });
  const errors = outcome.errors;

  const openResource = (r: HaResource | null) => {
    outcome.clear();
    setForm({
      vm: String(candidates[0]?.vmid ?? ""), state: r?.state ?? "started", group: r?.group ?? "",
      max_restart: String(r?.max_restart ?? 1), max_relocate: String(r?.max_relocate ?? 1),
      availability_target: r?.availability_target !== undefined ? String(r.availability_target) : "",
      comment: r?.comment ?? "", failback: r?.failback === 0 ? "0" : "1",
    });
    setEditing({ kind: "resource", res: r });
  };
  const openGroup = (g: HaGroup | null) => {
    outcome.clear();
    const current = parseNodes(g?.nodes ?? "");
    const all = [...new Set([...clusterNodes, ...Object.keys(current)])].sort();
    setMembers(Object.fromEntries(all.map((n) => [n, { on: n in current, prio: current[n] ?? "" }])));
    setForm({ group: g?.group ?? "", restricted: g?.restricted ? "1" : "0",
              nofailback: g?.nofailback ? "1" : "0", comment: g?.comment ?? "" });
    setEditing({ kind: "group", group: g });
  };

  const save = async () => {
    if (!editing) return;
    let ok = false;
    if (editing.kind === "resource") {
      const p: Record<string, string | undefined> = {
        state: form.state, max_restart: form.max_restart, max_relocate: form.max_relocate,
        group: form.group || undefined, comment: form.comment || undefined,
        availability_target: form.availability_target.trim() || undefined,
      };
      const r = editing.res;
      // failback sent when it changes (on a new resource: when not the default)
      if (form.failback !== (r?.failback === 0 ? "0" : "1")) p.failback = form.failback;
      if (r) {
        const gone = [["group", r.group], ["comment", r.comment],
          ["availability_target", r.availability_target]]
          .filter(([k, had]) => had !== undefined && p[k as string] === undefined).map(([k]) => k);
        ok = await outcome.send("PUT", `/cluster/ha/resources/${encodeURIComponent(r.sid)}`,
          { ...p, delete: gone.length ? gone.join(",") : undefined, digest: r.digest },
          t("ha.saved", { sid: r.sid }));
      } else {
        const sid = `vm:${form.vm}`;
        ok = await outcome.send("POST", "/cluster/ha/resources", { sid, ...p }, t("ha.added", { sid }));
      }
    } else if (editing.kind === "remove") {
      ok = await outcome.send("DELETE", `/cluster/ha/resources/${encodeURIComponent(editing.sid)}`, {},
        t("ha.removed", { sid: editing.sid }));
    } else if (editing.kind === "group") {
      const chosen = Object.entries(members).filter(([, m]) => m.on)
        .map(([n, m]) => [n, m.prio] as [string, string]);
      const p = { nodes: formatNodes(chosen), restricted: form.restricted === "1",
                  nofailback: form.nofailback === "1", comment: form.comment };
      const name = editing.group?.group ?? form.group;
      ok = editing.group
        ? await outcome.send("PUT", `/cluster/ha/groups/${encodeURIComponent(name)}`, p,
                             t("ha.group.saved", { group: name }))
        : await outcome.send("POST", "/cluster/ha/groups",
                             { group: name, ...p, comment: p.comment || undefined },
                             t("ha.group.saved", { group: name }));
    } else {
      ok = await outcome.send("DELETE", `/cluster/ha/groups/${encodeURIComponent(editing.group)}`, {},
        t("ha.group.deleted", { group: editing.group }));
    }
    if (ok) setEditing(null);
  };

  return (
    <div class="view" id="view-dc-ha">
      <DcTabs current="ha" />
      <OutcomeMessage outcome={outcome} id="ha-message" />
      {!editing && <OtherErrors errors={errors} shown={[]} />}
      <section class="card">
        <h2>{t("ha.status")}</h2>
        {status.error && <p class="error">{t("common.error", { message: status.error.message })}</p>}
        <ul id="ha-status-list">
          {(status.data ?? []).map((e) => <li key={e.id} data-type={e.type}>{e.status}</li>)}
        </ul>
      </section>
      <section>
        <h2>{t("ha.resources")}</h2>
        <div class="toolbar" role="toolbar">
          {write && <button id="ha-add" onClick={() => openResource(null)}>{t("ha.add")}</button>}
        </div>
        <div class="table-wrap">
          <table id="ha-resource-table">
            <thead><tr><th>{t("ha.sid")}</th><th>{t("ha.state")}</th><th>{t("ha.group")}</th>
              <th>{t("ha.maxrestart")}</th><th>{t("ha.maxrelocate")}</th><th>{t("ha.target")}</th>
              <th>{t("ha.failback")}</th><th>{t("ha.comment")}</th><th /></tr></thead>
            <tbody>
              {(res.data ?? []).map((r) => (
                <tr key={r.sid} data-sid={r.sid}>
                  <td>{r.sid}</td><td class="ha-state">{r.state}</td><td class="ha-group">{r.group ?? ""}</td>
                  <td class="ha-maxrestart">{r.max_restart}</td><td class="ha-maxrelocate">{r.max_relocate}</td>
                  <td>{r.availability_target ?? ""}</td>
                  <td class="ha-failback">{r.failback === 0 ? "" : "✓"}</td><td>{r.comment ?? ""}</td>
                  <td class="row-actions">{write && <>
                    <button class="ha-edit" onClick={() => openResource(r)}>{t("ha.edit")}</button>
                    <button class="ha-remove" onClick={() => { outcome.clear(); setEditing({ kind: "remove", sid: r.sid }); }}>
                      {t("ha.remove")}</button></>}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>
      <section>
        <h2>{t("ha.groups")}</h2>
        <div class="toolbar" role="toolbar">
          {write && <button id="ha-group-add" onClick={() => openGroup(null)}>{t("ha.group.add")}</button>}
        </div>
        {groups.data && !groups.data.length && <p>{t("ha.group.none")}</p>}
        <div class="table-wrap">
          <table id="ha-group-table">
            <thead><tr><th>{t("ha.group")}</th><th>{t("ha.nodes")}</th>
              <th>{t("ha.restricted")}</th><th>{t("ha.nofailback")}</th><th>{t("ha.comment")}</th><th /></tr></thead>
            <tbody>
              {(groups.data ?? []).map((g) => (
                <tr key={g.group} data-group={g.group}>
                  <td>{g.group}</td><td class="ha-group-nodes">{g.nodes}</td>
                  <td class="ha-group-restricted">{g.restricted ? "✓" : ""}</td>
                  <td class="ha-group-nofailback">{g.nofailback ? "✓" : ""}</td><td>{g.comment ?? ""}</td>
                  <td class="row-actions">{write && <>
                    <button class="ha-group-edit" onClick={() => openGroup(g)}>{t("ha.edit")}</button>
                    <button class="ha-group-delete" onClick={() => {
                      outcome.clear(); setEditing({ kind: "deletegroup", group: g.group });
                    }}>{t("ha.delete")}</button></>}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>
      <HaRules sids={(res.data ?? []).map((r) => r.sid)} nodes={clusterNodes} />
      <HaMaintenance status={status.data} onChanged={status.refresh} />
      <FenceDevices nodes={clusterNodes} />
      {editing?.kind === "resource" && (
        <Dialog title={editing.res ? t("ha.editres", { sid: editing.res.sid }) : t("ha.add")}
          okLabel={editing.res ? undefined : t("ha.add")}
          okDisabled={outcome.busy || (!editing.res && !form.vm)} onOk={save} onCancel={() => setEditing(null)}>
          {!editing.res && <Field label={t("ha.vm")} param="sid" errors={errors}>
            <select id="ha-add-vm" value={form.vm} onChange={set("vm")}>
              {candidates.map((v) => <option key={v.vmid} value={v.vmid}>{v.vmid} ({v.name})</option>)}
            </select></Field>}
          <Field label={t("ha.state")} param="state" errors={errors}>
            <select id={editing.res ? "ha-res-state" : "ha-add-state"} value={form.state} onChange={set("state")}>
              {STATES.map((s) => <option key={s} value={s}>{s}</option>)}
            </select></Field>
          <Field label={t("ha.group")} param="group" errors={errors}>
            <select id="ha-res-group" value={form.group} onChange={set("group")}>
              <option value="">{t("common.none")}</option>
              {(groups.data ?? []).map((g) => <option key={g.group} value={g.group}>{g.group}</option>)}
            </select></Field>
          <Field label={t("ha.maxrestart")} param="max_restart" errors={errors}>
            <input id="ha-res-maxrestart" inputMode="numeric" value={form.max_restart} onInput={set("max_restart")} /></Field>
          <Field label={t("ha.maxrelocate")} param="max_relocate" errors={errors}>
            <input id="ha-res-maxrelocate" inputMode="numeric" value={form.max_relocate} onInput={set("max_relocate")} /></Field>
          <Field label={t("ha.target")} param="availability_target" errors={errors}>
            <input id="ha-res-target" inputMode="decimal" value={form.availability_target}
              placeholder={t("ha.target.help")} onInput={set("availability_target")} /></Field>
          <label class="check" data-param="failback"><input type="checkbox" id="ha-res-failback"
            checked={form.failback === "1"}
            onChange={(e) => setForm({ ...form, failback: e.currentTarget.checked ? "1" : "0" })} />
            {t("ha.failback")}: {t("ha.failback.help")}
            {errors.failback && <span class="field-error error" id="error-failback">{errors.failback}</span>}</label>
          <Field label={t("ha.comment")} param="comment" errors={errors}>
            <input id="ha-res-comment" value={form.comment} onInput={set("comment")} /></Field>
          <OtherErrors errors={errors} shown={RES_FIELDS} />
          <OutcomeMessage outcome={outcome} id="ha-dialog-message" />
        </Dialog>
      )}
      {editing?.kind === "remove" && (
        <Dialog title={t("ha.remove")} danger onOk={save} onCancel={() => setEditing(null)}>
          <p>{t("ha.confirm.remove", { sid: editing.sid })}</p>
          <OutcomeMessage outcome={outcome} id="ha-dialog-message" />
        </Dialog>
      )}
      {editing?.kind === "group" && (
        <Dialog title={editing.group ? t("ha.group.edit", { group: editing.group.group }) : t("ha.group.add")}
          okDisabled={outcome.busy} onOk={save} onCancel={() => setEditing(null)}>
          {!editing.group && <Field label={t("ha.group.name")} param="group" errors={errors}>
            <input id="ha-group-name" value={form.group} onInput={set("group")} /></Field>}
          <NodePriorities prefix="ha-group" members={members} setMembers={setMembers} errors={errors}
            help={t("ha.group.nodes.help")} />
          <label class="check"><input type="checkbox" id="ha-group-restricted" checked={form.restricted === "1"}
            onChange={(e) => setForm({ ...form, restricted: e.currentTarget.checked ? "1" : "0" })} />
            {t("ha.restricted")}: {t("ha.restricted.help")}</label>
          <label class="check"><input type="checkbox" id="ha-group-nofailback" checked={form.nofailback === "1"}
            onChange={(e) => setForm({ ...form, nofailback: e.currentTarget.checked ? "1" : "0" })} />
            {t("ha.nofailback")}: {t("ha.nofailback.help")}</label>
          <Field label={t("ha.comment")} param="comment" errors={errors}>
            <input id="ha-group-comment" value={form.comment} onInput={set("comment")} /></Field>
          <OtherErrors errors={errors} shown={["group", "nodes", "comment"]} />
          <OutcomeMessage outcome={outcome} id="ha-dialog-message" />
        </Dialog>
      )}
      {editing?.kind === "deletegroup" && (
        <Dialog title={t("ha.delete")} danger onOk={save} onCancel={() => setEditing(null)}>
          <p>{t("ha.group.confirm.delete", { group: editing.group })}</p>
          <OutcomeMessage outcome={outcome} id="ha-dialog-message" />
        </Dialog>
      )}
    </div>
  );
}
