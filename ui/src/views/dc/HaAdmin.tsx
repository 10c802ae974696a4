// Datacenter → HA, below the resources and groups: maintenance (the cluster's HA armed or
// disarmed: POST /cluster/ha/status/disarm-ha with freeze|ignore, /arm-ha; each node's
// maintenance mode: POST /cluster/ha/crm-command/node-maintenance/enable|disable) read
// from GET /cluster/ha/status/current, and the nodes' fence devices (GET
// /cluster/ha/fence): added (POST /cluster/ha/fence/{node}), edited (PUT: the password
// is write-only, never shown; an empty password field keeps the current one), removed
// (DELETE, confirmed) and tested (POST .../status: reads the power state, changes
// nothing). Each maintenance change is confirmed first.
import { useState } from "preact/hooks";
import { ApiError, post } from "../../api";
import { usePoll } from "../../poll";
import { t } from "../../strings";
import type { HaStatusEntry } from "../../types";
import { Dialog } from "../Confirm";
import { Field, OtherErrors, OutcomeMessage, useOutcome } from "../forms";
import { usePerms } from "../access/perms";

interface LrmEntry extends HaStatusEntry { mode?: string; disarm?: string }
interface FenceDevice { node: string; type: string; ip?: string; port?: number; agent?: string;
  action?: string; username?: string; has_password?: number; timeout?: number; options?: string;
  confirm?: number }
interface FenceTest { ok: number; state: string | null; detail?: string; duration?: number }

type Pending = { kind: "disarm" } | { kind: "arm" } | { kind: "maint"; node: string; enable: boolean };

export function HaMaintenance(props: { status: HaStatusEntry[] | undefined; onChanged: () => void }) {
  const outcome = useOutcome(props.onChanged);
  const [pending, setPending] = useState<Pending | null>(null);
  const [mode, setMode] = useState("freeze");
  const can = usePerms();
  const write = can("/", "Sys.Console", "HA.Modify");
  const entries = (props.status ?? []) as LrmEntry[];
  const master = entries.find((e) => e.type === "master");
  const lrms = entries.filter((e) => e.type === "lrm");
  const disarmed = master?.disarm;
  const inMaint = (e: LrmEntry) => e.state === "maintenance" || e.mode === "maintenance";
  const run = async () => {
    const p = pending;
    setPending(null);
    if (!p) return;
    if (p.kind === "disarm") {
      await outcome.send("POST", "/cluster/ha/status/disarm-ha", { "resource-mode": mode }, t("ha.maint.disarmed.sent"));
    } else if (p.kind === "arm") {
      await outcome.send("POST", "/cluster/ha/status/arm-ha", {}, t("ha.maint.armed.sent"));
    } else {
      await outcome.send("POST", `/cluster/ha/crm-command/node-maintenance/${p.enable ? "enable" : "disable"}`,
        { node: p.node }, t(p.enable ? "ha.maint.node.on.sent" : "ha.maint.node.off.sent", { node: p.node }));
    }
  };
  return (
    <section class="card" id="ha-maintenance" aria-labelledby="ha-maint-title">
      <h2 id="ha-maint-title">{t("ha.maint.title")}</h2>
      <OutcomeMessage outcome={outcome} id="ha-maint-message" />
      <p id="ha-armed" data-armed={disarmed ? "0" : "1"}>
        {disarmed ? t("ha.maint.disarmed", { mode: disarmed }) : t("ha.maint.armed")}{" "}
        {write && (disarmed
          ? <button type="button" id="ha-arm" onClick={() => setPending({ kind: "arm" })}>{t("ha.maint.arm")}</button>
          : <button type="button" id="ha-disarm" onClick={() => setPending({ kind: "disarm" })}>{t("ha.maint.disarm")}</button>)}
      </p>
      <div class="table-wrap">
        <table id="ha-node-table">
          <thead><tr><th>{t("col.node")}</th><th>{t("col.status")}</th><th>{t("ha.maint.watchdog")}</th>
            {write && <th>{t("col.actions")}</th>}</tr></thead>
          <tbody>
            {lrms.map((e) => (
              <tr key={e.id} data-node={e.node} data-maintenance={inMaint(e) ? "1" : "0"}>
                <td>{e.node}</td><td>{e.status}</td>
                <td>{(e as { watchdog?: number }).watchdog ? t("ha.maint.watchdog.armed") : t("ha.maint.watchdog.free")}</td>
                {write && <td><button type="button" class="ha-maint-toggle"
                  onClick={() => setPending({ kind: "maint", node: e.node ?? "", enable: !inMaint(e) })}>
                  {inMaint(e) ? t("ha.maint.node.off") : t("ha.maint.node.on")}</button></td>}
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {pending && (
        <Dialog danger={pending.kind !== "arm"} onOk={run} onCancel={() => setPending(null)}
          title={pending.kind === "maint" ? t(pending.enable ? "ha.maint.node.on" : "ha.maint.node.off")
            : t(pending.kind === "arm" ? "ha.maint.arm" : "ha.maint.disarm")}>
          {pending.kind === "disarm" && <>
            <p>{t("ha.maint.disarm.confirm")}</p>
            <label>{t("ha.maint.mode")}
              <select id="ha-disarm-mode" value={mode} onChange={(e) => setMode(e.currentTarget.value)}>
                <option value="freeze">{t("ha.maint.mode.freeze")}</option>
                <option value="ignore">{t("ha.maint.mode.ignore")}</option>
              </select></label>
          </>}
          {pending.kind === "arm" && <p>{t("ha.maint.arm.confirm")}</p>}
          {pending.kind === "maint" && <p>{t(pending.enable ? "ha.maint.node.on.confirm" : "ha.maint.node.off.confirm",
            { node: pending.node })}</p>}
        </Dialog>
      )}
    </section>
  );
}

// each type's settings (the API refuses the other type's); those that may be reset
const FENCE_KEYS: Record<string, string[]> = {
  ipmi: ["ip", "port", "username", "timeout", "action"],
  agent: ["agent", "options", "timeout", "confirm", "action"],
};
const FENCE_RESETTABLE = ["port", "timeout", "options"];
const FENCE_SHOWN = ["node", "type", "ip", "port", "username", "password", "timeout", "agent",
  "options", "confirm", "action"];

type FenceEditing = { kind: "edit"; dev: FenceDevice | null } | { kind: "remove"; node: string };

export function FenceDevices(props: { nodes: string[] }) {
  const { data, error, refresh } = usePoll<FenceDevice[]>("/cluster/ha/fence", 10000);
  const [tests, setTests] = useState<Record<string, FenceTest | { error: string } | "running">>({});
  const outcome = useOutcome(refresh);
  const [editing, setEditing] = useState<FenceEditing | null>(null);
  const [form, setForm] = useState<Record<string, string>>({});
  const can = usePerms();
  const mayTest = can("/", "Sys.Fence");
  const errors = outcome.errors;
  const set = (k: string) => (e: Event) =>
    setForm({ ...form, [k]: (e.currentTarget as HTMLInputElement).value });
  const free = props.nodes.filter((n) => !(data ?? []).some((d) => d.node === n));
  const open = (dev: FenceDevice | null) => {
    outcome.clear();
    // the password field always starts empty: the API never returns it
    setForm({ node: dev?.node ?? free[0] ?? "", type: dev?.type ?? "ipmi", ip: dev?.ip ?? "",
              port: dev?.port !== undefined ? String(dev.port) : "", username: dev?.username ?? "",
              password: "", timeout: dev?.timeout !== undefined ? String(dev.timeout) : "",
              agent: dev?.agent ?? "", options: dev?.options ?? "",
              confirm: dev?.confirm === 0 ? "0" : "1", action: dev?.action ?? "reboot" });
    setEditing({ kind: "edit", dev });
  };
  const save = async () => {
    if (!editing) return;
    let ok: boolean;
    if (editing.kind === "remove") {
      ok = await outcome.send("DELETE", `/cluster/ha/fence/${encodeURIComponent(editing.node)}`, {},
        t("ha.fence.removed", { node: editing.node }));
    } else {
      const dev = editing.dev;
      const node = dev?.node ?? form.node;
      const p: Record<string, string | undefined> = { type: form.type };
      for (const k of FENCE_KEYS[form.type] ?? []) p[k] = form[k]?.trim() || undefined;
      if (form.type === "agent") p.confirm = form.confirm;
      if (form.password) p.password = form.password;
      // a setting emptied on an edit of the same type is reset
      const gone = dev && dev.type === form.type
        ? FENCE_RESETTABLE.filter((k) => (FENCE_KEYS[form.type] ?? []).includes(k)
          && dev[k as keyof FenceDevice] !== undefined && p[k] === undefined) : [];
      ok = await outcome.send(dev ? "PUT" : "POST", `/cluster/ha/fence/${encodeURIComponent(node)}`,
        { ...p, delete: gone.length ? gone.join(",") : undefined }, t("ha.fence.saved", { node }));
    }
    if (ok) setEditing(null);
  };
  const test = async (node: string) => {
    setTests((x) => ({ ...x, [node]: "running" }));
    try {
      const r = await post<FenceTest>(`/cluster/ha/fence/${encodeURIComponent(node)}/status`);
      setTests((x) => ({ ...x, [node]: r }));
    } catch (e) {
      setTests((x) => ({ ...x, [node]: { error: e instanceof ApiError ? e.message : String(e) } }));
    }
  };
  const result = (node: string) => {
    const r = tests[node];
    if (!r) return "";
    if (r === "running") return t("ha.fence.testing");
    if ("error" in r) return t("common.error", { message: r.error });
    return t(r.ok ? "ha.fence.test.ok" : "ha.fence.test.bad",
      { state: r.state ?? "unknown", detail: r.detail ?? "", duration: r.duration ?? 0 });
  };
  return (
    <section class="card" id="ha-fence" aria-labelledby="ha-fence-title">
      <h2 id="ha-fence-title">{t("ha.fence.title")}</h2>
      <p class="help">{t("ha.fence.help")}</p>
      <OutcomeMessage outcome={outcome} id="ha-fence-message" />
      {!editing && <OtherErrors errors={errors} shown={[]} />}
      {mayTest && <div class="toolbar" role="toolbar">
        <button type="button" id="fence-add" disabled={!free.length} title={free.length ? undefined : t("ha.fence.nonode")}
          onClick={() => open(null)}>{t("ha.fence.add")}</button></div>}
      {error && <p class="error">{t("common.error", { message: error.message })}</p>}
      <div class="table-wrap">
        <table id="ha-fence-table">
          <thead><tr><th>{t("col.node")}</th><th>{t("ha.fence.type")}</th><th>{t("ha.fence.target")}</th>
            <th>{t("ha.fence.action")}</th><th>{t("ha.fence.password")}</th><th>{t("ha.fence.result")}</th>
            {mayTest && <th>{t("col.actions")}</th>}</tr></thead>
          <tbody>
            {data && data.length === 0 && <tr><td colSpan={7}>{t("ha.fence.none")}</td></tr>}
            {(data ?? []).map((d) => {
              const r = tests[d.node];
              const state = !r ? "" : r === "running" ? "running" : "error" in r || !r.ok ? "failed" : "ok";
              return (
                <tr key={d.node} data-node={d.node}>
                  <td>{d.node}</td><td>{d.type}</td>
                  <td>{d.type === "ipmi" ? `${d.username ?? ""}@${d.ip ?? ""}:${d.port ?? 623}` : d.agent ?? ""}</td>
                  <td>{d.action ?? "reboot"}</td><td>{d.has_password ? t("ha.fence.set") : t("common.none")}</td>
                  <td class="fence-result" data-state={state} aria-live="polite">{result(d.node)}</td>
                  {mayTest && <td class="row-actions"><button type="button" class="fence-test" disabled={r === "running"}
                    onClick={() => test(d.node)}>{t("ha.fence.test")}</button>
                    <button type="button" class="fence-edit" onClick={() => open(d)}>{t("ha.edit")}</button>
                    <button type="button" class="fence-remove" onClick={() => {
                      outcome.clear(); setEditing({ kind: "remove", node: d.node });
                    }}>{t("ha.remove")}</button></td>}
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
      {editing?.kind === "edit" && (
        <Dialog title={editing.dev ? t("ha.fence.edit", { node: editing.dev.node }) : t("ha.fence.add")}
          okDisabled={outcome.busy || !(editing.dev?.node ?? form.node)} onOk={save}
          onCancel={() => setEditing(null)}>
          {!editing.dev && <Field label={t("ha.fence.node")} param="node" errors={errors}>
            <select id="fence-node" value={form.node} onChange={set("node")}>
              {free.map((n) => <option key={n} value={n}>{n}</option>)}
            </select></Field>}
          <Field label={t("ha.fence.type")} param="type" errors={errors}>
            <select id="fence-type" value={form.type} onChange={set("type")}>
              <option value="ipmi">ipmi</option><option value="agent">agent</option>
            </select></Field>
          {form.type === "ipmi" ? <>
            <Field label={t("ha.fence.ip")} param="ip" errors={errors}>
              <input id="fence-ip" value={form.ip} onInput={set("ip")} /></Field>
            <Field label={t("ha.fence.port")} param="port" errors={errors}>
              <input id="fence-port" inputMode="numeric" value={form.port} placeholder="623" onInput={set("port")} /></Field>
            <Field label={t("ha.fence.username")} param="username" errors={errors}>
              <input id="fence-username" value={form.username} autocomplete="off" onInput={set("username")} /></Field>
          </> : <>
            <Field label={t("ha.fence.agent")} param="agent" errors={errors}>
              <input id="fence-agent" value={form.agent} placeholder="fence_ipmilan" onInput={set("agent")} /></Field>
            <Field label={t("ha.fence.options")} param="options" errors={errors}>
              <input id="fence-options" value={form.options} onInput={set("options")} /></Field>
            <label class="check"><input type="checkbox" id="fence-confirm" checked={form.confirm === "1"}
              onChange={(e) => setForm({ ...form, confirm: e.currentTarget.checked ? "1" : "0" })} />
              {t("ha.fence.confirm")}</label>
          </>}
          <Field label={t("ha.fence.password")} param="password" errors={errors}>
            <input id="fence-password" type="password" autocomplete="new-password" value={form.password}
              placeholder={editing.dev?.has_password ? t("ha.fence.password.keep") : ""}
              onInput={set("password")} /></Field>
          <Field label={t("ha.fence.timeout")} param="timeout" errors={errors}>
            <input id="fence-timeout" inputMode="decimal" value={form.timeout} onInput={set("timeout")} /></Field>
          <Field label={t("ha.fence.action")} param="action" errors={errors}>
            <select id="fence-action" value={form.action} onChange={set("action")}>
              <option value="reboot">reboot</option><option value="off">off</option>
            </select></Field>
          <OtherErrors errors={errors} shown={FENCE_SHOWN} />
          <OutcomeMessage outcome={outcome} id="ha-fence-dialog-message" />
        </Dialog>
      )}
      {editing?.kind === "remove" && (
        <Dialog title={t("ha.remove")} danger onOk={save} onCancel={() => setEditing(null)}>
          <p>{t("ha.fence.confirm.remove", { node: editing.node })}</p>
          <OutcomeMessage outcome={outcome} id="ha-fence-dialog-message" />
        </Dialog>
      )}
    </section>
  );
}
