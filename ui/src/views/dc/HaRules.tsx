// Datacenter → HA, beside the resources and groups: PVE 9's HA rules (GET/POST
// /cluster/ha/rules, PUT/DELETE /cluster/ha/rules/{rule}). A node-affinity rule keeps
// its resources on its nodes (each with a priority; strict: only there), a
// resource-affinity rule keeps them together (positive) or apart (negative); either can
// be disabled and carries a comment. The rules the groups are applied as (ha-group-*)
// are listed, read-only. A rule the API finds in conflict shows its errors in the list;
// a refused change shows the API's per-parameter errors next to their fields.
import { useState } from "preact/hooks";
import { usePoll } from "../../poll";
import { t } from "../../strings";
import { Dialog } from "../Confirm";
import { usePerms } from "../access/perms";
import { Field, OtherErrors, OutcomeMessage, useOutcome } from "../forms";
import { formatNodes, type Members, NodePriorities, parseNodes } from "./members";

export interface HaRule {
  rule: string; type: "node-affinity" | "resource-affinity"; resources: string;
  nodes?: string; strict?: number; affinity?: string; disable?: number; comment?: string;
  digest?: string; errors?: Record<string, string[]>;
}

const TYPES = ["node-affinity", "resource-affinity"] as const;
const AFFINITIES = ["positive", "negative"];
const GROUP_RULE = "ha-group-";
const SHOWN = ["rule", "type", "resources", "nodes", "strict", "affinity", "disable", "comment"];

type Editing = { kind: "rule"; rule: HaRule | null } | { kind: "remove"; rule: string };

/** A rule's conflicts as one line (the API keeps them per parameter). */
function ruleErrors(r: HaRule): string {
  return Object.entries(r.errors ?? {}).map(([k, v]) => `${k}: ${v.join("; ")}`).join(" ");
}

export function HaRules(props: { sids: string[]; nodes: string[] }) {
  const rules = usePoll<HaRule[]>("/cluster/ha/rules", 5000);
  const outcome = useOutcome(() => rules.refresh());
  const [editing, setEditing] = useState<Editing | null>(null);
  const [form, setForm] = useState<Record<string, string>>({});
  const [chosen, setChosen] = useState<Record<string, boolean>>({});
  const [members, setMembers] = useState<Members>({});
  const can = usePerms();
  const write = can("/", "Sys.Console", "HA.Modify");
  const errors = outcome.errors;
  const set = (k: string) => (e: Event) =>
    setForm({ ...form, [k]: (e.currentTarget as HTMLInputElement).value });

  const open = (r: HaRule | null) => {
    outcome.clear();
    const mine = (r?.resources ?? "").split(",").filter(Boolean);
    setChosen(Object.fromEntries([...new Set([...props.sids, ...mine])].sort()
      .map((s) => [s, mine.includes(s)])));
    const current = parseNodes(r?.nodes ?? "");
    const all = [...new Set([...props.nodes, ...Object.keys(current)])].sort();
    setMembers(Object.fromEntries(all.map((n) => [n, { on: n in current, prio: current[n] ?? "" }])));
    setForm({ rule: r?.rule ?? "", type: r?.type ?? "node-affinity", strict: r?.strict ? "1" : "0",
              affinity: r?.affinity ?? "positive", disable: r?.disable ? "1" : "0",
              comment: r?.comment ?? "" });
    setEditing({ kind: "rule", rule: r });
  };

  const save = async () => {
    if (!editing) return;
    let ok: boolean;
    if (editing.kind === "remove") {
      ok = await outcome.send("DELETE", `/cluster/ha/rules/${encodeURIComponent(editing.rule)}`, {},
        t("ha.rule.removed", { rule: editing.rule }));
    } else {
      const node = form.type === "node-affinity";
      const p: Record<string, string | boolean | undefined> = {
        type: form.type,
        resources: Object.entries(chosen).filter(([, on]) => on).map(([s]) => s).join(","),
        nodes: node ? formatNodes(Object.entries(members).filter(([, m]) => m.on)
          .map(([n, m]) => [n, m.prio] as [string, string])) : undefined,
        strict: node ? form.strict === "1" : undefined,
        affinity: node ? undefined : form.affinity,
        disable: form.disable === "1",
        comment: form.comment || undefined,
      };
      const r = editing.rule;
      const name = r?.rule ?? form.rule;
      ok = r
        ? await outcome.send("PUT", `/cluster/ha/rules/${encodeURIComponent(name)}`,
          { ...p, delete: r.comment && !p.comment ? "comment" : undefined, digest: r.digest },
          t("ha.rule.saved", { rule: name }))
        : await outcome.send("POST", "/cluster/ha/rules", { rule: name, ...p },
          t("ha.rule.saved", { rule: name }));
    }
    if (ok) setEditing(null);
  };

  const list = rules.data ?? [];
  return (
    <section id="ha-rules" aria-labelledby="ha-rules-title">
      <h2 id="ha-rules-title">{t("ha.rules")}</h2>
      <OutcomeMessage outcome={outcome} id="ha-rule-message" />
      {!editing && <OtherErrors errors={errors} shown={[]} />}
      {rules.error && <p class="error">{t("common.error", { message: rules.error.message })}</p>}
      <div class="toolbar" role="toolbar">
        {write && <button id="ha-rule-add" onClick={() => open(null)}>{t("ha.rule.add")}</button>}
      </div>
      {rules.data && !list.length && <p>{t("ha.rule.none")}</p>}
      <div class="table-wrap">
        <table id="ha-rule-table">
          <thead><tr><th>{t("ha.rule.name")}</th><th>{t("ha.rule.type")}</th><th>{t("ha.rule.resources")}</th>
            <th>{t("ha.rule.target")}</th><th>{t("ha.rule.enabled")}</th><th>{t("ha.comment")}</th>
            <th>{t("ha.rule.conflicts")}</th><th /></tr></thead>
          <tbody>
            {list.map((r) => (
              <tr key={r.rule} data-rule={r.rule} class={r.errors ? "bad" : ""}>
                <td>{r.rule}</td><td class="ha-rule-type">{t(`ha.rule.type.${r.type}` as "ha.rule.type.node-affinity")}</td>
                <td class="ha-rule-resources">{r.resources}</td>
                <td class="ha-rule-target">{r.type === "node-affinity"
                  ? `${r.nodes ?? ""}${r.strict ? ` (${t("ha.rule.strict")})` : ""}`
                  : t(`ha.rule.affinity.${r.affinity}` as "ha.rule.affinity.positive")}</td>
                <td class="ha-rule-enabled">{r.disable ? t("ha.rule.disabled") : "✓"}</td>
                <td>{r.comment ?? ""}</td>
                <td class="ha-rule-errors">{ruleErrors(r)}</td>
                <td class="row-actions">{write && !r.rule.startsWith(GROUP_RULE) && <>
                  <button class="ha-rule-edit" onClick={() => open(r)}>{t("ha.edit")}</button>
                  <button class="ha-rule-remove" onClick={() => {
                    outcome.clear(); setEditing({ kind: "remove", rule: r.rule });
                  }}>{t("ha.remove")}</button></>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {editing?.kind === "rule" && (
        <Dialog title={editing.rule ? t("ha.rule.edit", { rule: editing.rule.rule }) : t("ha.rule.add")}
          okDisabled={outcome.busy} onOk={save} onCancel={() => setEditing(null)}>
          {!editing.rule && <Field label={t("ha.rule.name")} param="rule" errors={errors}>
            <input id="ha-rule-name" value={form.rule} onInput={set("rule")} /></Field>}
          <Field label={t("ha.rule.type")} param="type" errors={errors}>
            <select id="ha-rule-type" value={form.type} onChange={set("type")} disabled={!!editing.rule}>
              {TYPES.map((x) => <option key={x} value={x}>{t(`ha.rule.type.${x}`)}</option>)}
            </select></Field>
          <fieldset class="ha-members" data-param="resources">
            <legend>{t("ha.rule.resources")}</legend>
            {Object.entries(chosen).map(([sid, on]) => (
              <label class="check" key={sid}><input type="checkbox" id={`ha-rule-res-${sid.replace(":", "-")}`}
                checked={on} onChange={(e) => setChosen({ ...chosen, [sid]: e.currentTarget.checked })} />
                {sid}</label>
            ))}
            {!Object.keys(chosen).length && <p class="notice">{t("ha.rule.nores")}</p>}
            {errors.resources && <span class="field-error error" id="error-resources">{errors.resources}</span>}
          </fieldset>
          {form.type === "node-affinity" ? <>
            <NodePriorities prefix="ha-rule" members={members} setMembers={setMembers} errors={errors} />
            <label class="check"><input type="checkbox" id="ha-rule-strict" checked={form.strict === "1"}
              onChange={(e) => setForm({ ...form, strict: e.currentTarget.checked ? "1" : "0" })} />
              {t("ha.rule.strict")}: {t("ha.rule.strict.help")}</label>
          </> : <Field label={t("ha.rule.affinity")} param="affinity" errors={errors}>
            <select id="ha-rule-affinity" value={form.affinity} onChange={set("affinity")}>
              {AFFINITIES.map((a) => <option key={a} value={a}>{t(`ha.rule.affinity.${a}` as "ha.rule.affinity.positive")}</option>)}
            </select></Field>}
          <label class="check"><input type="checkbox" id="ha-rule-disable" checked={form.disable === "1"}
            onChange={(e) => setForm({ ...form, disable: e.currentTarget.checked ? "1" : "0" })} />
            {t("ha.rule.disable")}</label>
          <Field label={t("ha.comment")} param="comment" errors={errors}>
            <input id="ha-rule-comment" value={form.comment} onInput={set("comment")} /></Field>
          <OtherErrors errors={errors} shown={SHOWN} />
          <OutcomeMessage outcome={outcome} id="ha-rule-dialog-message" />
        </Dialog>
      )}
      {editing?.kind === "remove" && (
        <Dialog title={t("ha.remove")} danger onOk={save} onCancel={() => setEditing(null)}>
          <p>{t("ha.rule.confirm.remove", { rule: editing.rule })}</p>
          <OutcomeMessage outcome={outcome} id="ha-rule-dialog-message" />
        </Dialog>
      )}
    </section>
  );
}
