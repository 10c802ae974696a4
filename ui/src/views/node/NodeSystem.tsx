// A node's Network and System tabs (read only: PVE's GET /nodes/{node}/network, version,
// dns, time, services, each proxied by the API to that node) and its bulk actions
// (POST startall / stopall / migrateall, each confirmed before it is sent).
import { Fragment } from "preact";
import { useState } from "preact/hooks";
import { ApiError, post } from "../../api";
import { usePoll } from "../../poll";
import { t, type StringKey } from "../../strings";
import type { Resource } from "../../types";
import { Dialog } from "../Confirm";
import { bulkParams, details, members, sortIfaces, wallClock, type BulkAction, type NetIface } from "./network";

const path = (node: string, rest: string) => `/nodes/${encodeURIComponent(node)}/${rest}`;

export function NodeNetwork(props: { node: string }) {
  const { data, error } = usePoll<NetIface[]>(path(props.node, "network"), 10000);
  const rows = sortIfaces(data ?? []);
  return (
    <section id="node-network" aria-label={t("node.tab.network")}>
      <p class="help">{t("node.net.readonly")}</p>
      {error && <p class="error">{t("common.error", { message: error.message })}</p>}
      <div class="table-wrap">
        <table id="node-network-table">
          <thead><tr>
            <th>{t("node.net.iface")}</th><th>{t("node.net.type")}</th><th>{t("node.net.active")}</th>
            <th>{t("node.net.method")}</th><th>{t("node.net.cidr")}</th><th>{t("node.net.gateway")}</th>
            <th>{t("node.net.cidr6")}</th><th>{t("node.net.members")}</th><th>{t("node.net.details")}</th>
          </tr></thead>
          <tbody>
            {rows.map((i) => (
              <tr key={i.iface} data-iface={i.iface}>
                <td>{i.iface}</td><td>{i.type}</td><td>{i.active ? "yes" : "no"}</td>
                <td>{i.method ?? ""}</td><td>{i.cidr ?? ""}</td><td>{i.gateway ?? ""}</td>
                <td>{i.cidr6 ?? ""}</td><td>{members(i)}</td>
                <td>{details(i).map(([k, a]) => t(k as StringKey, a)).join(", ")}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {data && rows.length === 0 && <p>{t("node.net.none")}</p>}
    </section>
  );
}

interface Service { service: string; desc?: string; state?: string; "active-state"?: string; pid?: number }

export function NodeSystem(props: { node: string }) {
  const version = usePoll<{ version?: string; release?: string; binome?: string }>(path(props.node, "version"), 60000);
  const dns = usePoll<Record<string, string>>(path(props.node, "dns"), 30000);
  const time = usePoll<{ timezone?: string; time?: number; localtime?: number }>(path(props.node, "time"), 5000);
  const services = usePoll<Service[]>(path(props.node, "services"), 5000);
  const err = version.error ?? dns.error ?? time.error ?? services.error;
  return (
    <section id="node-system" aria-label={t("node.tab.system")}>
      {err && <p class="error">{t("common.error", { message: err.message })}</p>}
      <section class="card">
        <h2>{t("node.sys.version")}</h2>
        <dl><dt>{t("node.sys.version")}</dt>
          <dd id="node-sys-version">{version.data ? `binome ${version.data.binome ?? ""} (PVE API ${version.data.version ?? "?"})` : ""}</dd></dl>
      </section>
      <section class="card">
        <h2>{t("node.sys.dns")}</h2>
        <dl id="node-sys-dns">
          {(["search", "dns1", "dns2", "dns3"] as const).map((k) => (
            <Fragment key={k}><dt>{t(`node.sys.${k}` as StringKey)}</dt><dd>{dns.data?.[k] ?? t("common.none")}</dd></Fragment>
          ))}
        </dl>
      </section>
      <section class="card">
        <h2>{t("node.sys.time")}</h2>
        <dl id="node-sys-time">
          <dt>{t("node.sys.timezone")}</dt><dd>{time.data?.timezone ?? ""}</dd>
          <dt>{t("node.sys.localtime")}</dt><dd>{wallClock(time.data?.localtime)}</dd>
          <dt>{t("node.sys.utc")}</dt><dd>{wallClock(time.data?.time)}</dd>
        </dl>
      </section>
      <h2>{t("node.sys.services")}</h2>
      <div class="table-wrap">
        <table id="node-services-table">
          <thead><tr><th>{t("node.sys.service")}</th><th>{t("node.sys.state")}</th>
            <th>{t("node.sys.pid")}</th><th>{t("node.sys.desc")}</th></tr></thead>
          <tbody>
            {(services.data ?? []).map((s) => (
              <tr key={s.service} data-service={s.service}>
                <td>{s.service}</td><td>{s.state} ({s["active-state"]})</td>
                <td>{s.pid ?? ""}</td><td>{s.desc ?? ""}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </section>
  );
}

export function BulkActions(props: { node: string; resources: Resource[] }) {
  const [pending, setPending] = useState<BulkAction | null>(null);
  const [force, setForce] = useState(false);
  const [vms, setVms] = useState("");
  const [timeout, setTimeout_] = useState("180");
  const [target, setTarget] = useState("");
  const [message, setMessage] = useState<{ text: string; error: boolean } | null>(null);
  const targets = props.resources.filter((r) => r.type === "node" && r.node !== props.node
    && r.status === "online").map((r) => r.node ?? "");
  const form = { force, vms, timeout, target };
  const checked = pending ? bulkParams(pending, form) : null;
  const open = (a: BulkAction) => {
    setMessage(null);
    setForce(false);
    setVms("");
    setTarget(targets[0] ?? "");
    setPending(a);
  };
  const run = async () => {
    const a = pending;
    if (!a || !checked || "error" in checked) return;
    setPending(null);
    try {
      const upid = await post<string>(path(props.node, a), checked.params);
      setMessage({ text: t("node.bulk.started", { upid }), error: false });
    } catch (e) {
      const detail = e instanceof ApiError && e.errors
        ? `${e.message} (${Object.entries(e.errors).map(([k, v]) => `${k}: ${v}`).join("; ")})`
        : (e as Error).message;
      setMessage({ text: t("node.bulk.failed", { action: t(`node.bulk.${a}` as StringKey), message: detail }), error: true });
    }
  };
  const bad = checked && "error" in checked ? checked.error : null;
  return (
    <>
      <div class="toolbar" role="toolbar" aria-label={t("node.bulk.startall")}>
        {(["startall", "stopall", "migrateall"] as const).map((a) => (
          <button key={a} id={`node-${a}`} onClick={() => open(a)}>{t(`node.bulk.${a}` as StringKey)}</button>
        ))}
      </div>
      {message && <p class={message.error ? "error" : "notice"} role="status" id="node-message">{message.text}</p>}
      {pending && (
        <Dialog title={t(`node.bulk.title.${pending}` as StringKey, { node: props.node })}
          danger={pending !== "startall"} okDisabled={bad !== null}
          okLabel={t(`node.bulk.${pending}` as StringKey)} onOk={run} onCancel={() => setPending(null)}>
          <p>{t(`node.bulk.confirm.${pending}` as StringKey, { node: props.node })}</p>
          {pending === "startall" && (
            <label class="check"><input type="checkbox" id="node-bulk-force" checked={force}
              onChange={(e) => setForce(e.currentTarget.checked)} />{t("node.bulk.force")}</label>
          )}
          {pending === "stopall" && (
            <label>{t("node.bulk.timeout")}
              <input id="node-bulk-timeout" value={timeout} aria-invalid={bad === "timeout"}
                onInput={(e) => setTimeout_(e.currentTarget.value)} /></label>
          )}
          {pending === "migrateall" && (targets.length === 0 ? <p>{t("node.bulk.notarget")}</p> : (
            <label>{t("node.bulk.target")}
              <select id="node-bulk-target" value={target} onChange={(e) => setTarget(e.currentTarget.value)}>
                {targets.map((n) => <option key={n} value={n}>{n}</option>)}
              </select></label>
          ))}
          <label>{t("node.bulk.vms")}
            <input id="node-bulk-vms" value={vms} aria-invalid={bad === "vms"}
              onInput={(e) => setVms(e.currentTarget.value)} /></label>
        </Dialog>
      )}
    </>
  );
}
