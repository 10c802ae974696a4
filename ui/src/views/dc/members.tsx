// The nodes of an HA group or node-affinity rule, with their priorities: PVE's
// `node[:priority],...` text both ways, and the checkbox + priority table the group and
// rule dialogs share (ids `<prefix>-node-<n>` / `<prefix>-prio-<n>`).
import { t } from "../../strings";

export type Members = Record<string, { on: boolean; prio: string }>;

/** `n1:2,n2` -> {n1: "2", n2: ""} */
export function parseNodes(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of text.split(",").map((x) => x.trim()).filter(Boolean)) {
    const [name, prio] = item.split(":");
    out[name] = prio ?? "";
  }
  return out;
}

/** The members back to PVE's `node[:priority],...`, in the order given. */
export function formatNodes(members: [string, string][]): string {
  return members.map(([n, p]) => (p.trim() ? `${n}:${p.trim()}` : n)).join(",");
}

export function NodePriorities(props: {
  prefix: string; members: Members; setMembers: (m: Members) => void;
  errors: Record<string, string>; help?: string;
}) {
  const { prefix, members, setMembers, errors } = props;
  return (
    <fieldset class="ha-members" data-param="nodes">
      <legend>{t("ha.nodes")}</legend>
      <table>
        <thead><tr><th>{t("ha.group.member")}</th><th>{t("ha.group.priority")}</th></tr></thead>
        <tbody>
          {Object.entries(members).map(([n, m]) => (
            <tr key={n}>
              <td><label class="check"><input type="checkbox" id={`${prefix}-node-${n}`} checked={m.on}
                onChange={(e) => setMembers({ ...members, [n]: { ...m, on: e.currentTarget.checked } })} />
                {n}</label></td>
              <td><input id={`${prefix}-prio-${n}`} inputMode="numeric" size={4} value={m.prio}
                aria-label={`${t("ha.group.priority")} ${n}`} disabled={!m.on}
                onInput={(e) => setMembers({ ...members, [n]: { ...m, prio: e.currentTarget.value } })} /></td>
            </tr>
          ))}
        </tbody>
      </table>
      {props.help && <p class="notice">{props.help}</p>}
      {errors.nodes && <span class="field-error error" id="error-nodes">{errors.nodes}</span>}
    </fieldset>
  );
}
