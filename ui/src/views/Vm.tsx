// VM view: summary (GET status/current on the VM's node, the API proxies) and the
// actions start / shutdown / reboot / stop / migrate / clone / convert to template /
// destroy, each confirmed before it is sent.
import { useState } from "preact/hooks";
import { ApiError, get, post, request } from "../api";
import { usePoll } from "../poll";
import { t } from "../strings";
import * as fmt from "../format";
import type { Resource } from "../types";
import { Dialog } from "./Confirm";
import { Meter } from "./Datacenter";
import { VmIcon } from "./Status";
import { VmConsole } from "./VmConsole";
import { Graphs } from "./Graphs";
import { href, VM_TABS as TABS, type VmTab } from "../route";
import { TaskHistory, VmEditTab, VmReplication } from "./lazy";

interface VmStatus {
  status: string;
  name?: string;
  cpu?: number;
  cpus?: number;
  mem?: number;
  maxmem?: number;
  uptime?: number;
  qmpstatus?: string;
  ha?: { managed: number; state?: string; request_state?: string; group?: string };
}

type Action = "start" | "shutdown" | "reboot" | "stop" | "migrate" | "clone" | "template" | "destroy";

export function VmView(props: { vmid: number; tab: VmTab; resources: Resource[] }) {
  const entry = props.resources.find((r) => r.type === "qemu" && r.vmid === props.vmid);
  const node = entry?.node;
  const base = node ? `/nodes/${encodeURIComponent(node)}/qemu/${props.vmid}` : null;
  const { data, error, refresh } = usePoll<VmStatus>(base && `${base}/status/current`, 1500);
  const [pending, setPending] = useState<Action | null>(null);
  const [target, setTarget] = useState("");
  const [online, setOnline] = useState(true);
  // the VM's local disks (PVE's GET .../migrate): a live migration copies them too, so it
  // asks `with-local-disks` as PVE's window does
  const [localDisks, setLocalDisks] = useState<string[]>([]);
  const [message, setMessage] = useState<{ text: string; error: boolean } | null>(null);
  // a template's clone is linked by default (PVE's clone window: mode Linked / Full)
  const [clone, setClone] = useState({ newid: "", name: "", full: false });
  const [purge, setPurge] = useState(true);

  if (!entry) {
    return (
      <div class="view" id="view-vm">
        <p>{props.resources.length ? t("vm.gone", { vmid: props.vmid }) : t("common.loading")}</p>
      </div>
    );
  }
  const status = data?.status ?? entry.status ?? "unknown";
  const running = status === "running";
  const targets = props.resources.filter((r) => r.type === "node" && r.node !== node
    && r.status === "online").map((r) => r.node ?? "");

  const open = (a: Action) => {
    setMessage(null);
    if (a === "migrate") {
      setTarget(targets[0] ?? "");
      setOnline(running);
      setLocalDisks([]);
      if (base) {
        get<{ local_disks?: { volid: string }[] }>(`${base}/migrate`)
          .then((p) => setLocalDisks((p.local_disks ?? []).map((d) => d.volid)), () => {});
      }
    }
    if (a === "clone") {
      setClone({ newid: "", name: `${entry.name ?? "vm"}-clone`, full: !entry.template });
      setTarget(node ?? "");
      get<string | number>("/cluster/nextid").then((id) => setClone((c) => ({ ...c, newid: String(id) })),
        () => {});
    }
    if (a === "destroy") setPurge(true);
    setPending(a);
  };
  const run = async () => {
    const a = pending;
    setPending(null);
    if (!a || !base) return;
    try {
      const upid = a === "migrate"
        ? await post<string>(`${base}/migrate`, { target, online: running && online,
          "with-local-disks": running && online && localDisks.length ? 1 : undefined })
        : a === "clone"
        ? await post<string>(`${base}/clone`, { newid: clone.newid, name: clone.name || undefined,
          target: target && target !== node ? target : undefined,
          full: entry.template ? (clone.full ? 1 : 0) : undefined })
        : a === "template" ? await post<string>(`${base}/template`)
        : a === "destroy" ? await request<string>("DELETE", base, { purge })
        : await post<string>(`${base}/status/${a}`);
      setMessage({ text: t("vm.action.started", { upid }), error: false });
      refresh();
    } catch (e) {
      const label = t(`vm.${a}` as "vm.start");
      const detail = e instanceof ApiError && e.errors
        ? `${e.message} (${Object.entries(e.errors).map(([k, v]) => `${k}: ${v}`).join("; ")})`
        : (e as Error).message;
      setMessage({ text: t("vm.action.failed", { action: label, message: detail }), error: true });
    }
  };

  const ha = data?.ha;
  const haText = !ha ? t("common.none") : ha.managed
    ? t("vm.ha.managed", { state: ha.state ?? "?", request: ha.request_state ?? "?" })
    : t("vm.ha.unmanaged");

  return (
    <div class="view" id="view-vm" data-vmid={props.vmid}>
      <h1><VmIcon vm={{ ...entry, status }} />{" "}
        {t("vm.title", { vmid: props.vmid, name: entry.name ?? "", node: node ?? "?" })}</h1>
      <div class="toolbar" role="toolbar" aria-label={t("vm.summary")}>
        <button id="vm-start" disabled={running} onClick={() => open("start")}>{t("vm.start")}</button>
        <button id="vm-shutdown" disabled={!running} onClick={() => open("shutdown")}>{t("vm.shutdown")}</button>
        <button id="vm-reboot" disabled={!running} onClick={() => open("reboot")}>{t("vm.reboot")}</button>
        <button id="vm-stop" disabled={!running} onClick={() => open("stop")}>{t("vm.stop")}</button>
        <button id="vm-migrate" onClick={() => open("migrate")}>{t("vm.migrate")}</button>
        <button id="vm-clone" onClick={() => open("clone")}>{t("vm.clone")}</button>
        <button id="vm-template" disabled={running || !!entry.template} onClick={() => open("template")}>{t("vm.template")}</button>
        <button id="vm-destroy" disabled={running} onClick={() => open("destroy")}>{t("vm.destroy")}</button>
      </div>
      {message && <p class={message.error ? "error" : "notice"} role="status" id="vm-message">{message.text}</p>}
      {error && !movedAway(error) && <p class="error">{t("common.error", { message: error.message })}</p>}
      <nav class="tabs" role="tablist" aria-label={t("vm.summary")}>
        {TABS.map((tab) => (
          <a key={tab} role="tab" id={`vm-tab-${tab}`} aria-selected={props.tab === tab}
            href={href({ kind: "vm", vmid: props.vmid, tab })}>{t(`vm.tab.${tab}` as "vm.tab.summary")}</a>
        ))}
      </nav>
      {props.tab === "console" && node && <VmConsole key="serial" kind="serial" node={node}
        vmid={props.vmid} running={running} />}
      {props.tab === "vnc" && node && <VmConsole key="vnc" kind="vnc" node={node}
        vmid={props.vmid} running={running} />}
      {props.tab === "graphs" && node && <Graphs path={`/nodes/${encodeURIComponent(node)}/qemu/${props.vmid}/rrddata`}
        kind="vm" />}
      {props.tab === "replication" && base && node && <VmReplication base={base} node={node}
        vmid={props.vmid} resources={props.resources} />}
      {props.tab === "tasks" && node && <TaskHistory key={node} node={node} vmid={props.vmid} id="vm-tasks" />}
      {base && node && <VmEditTab tab={props.tab} base={base} node={node} vmid={props.vmid}
        running={running} />}
      {props.tab === "summary" && <section class="card" aria-label={t("vm.summary")}>
        <h2>{t("vm.summary")}</h2>
        <dl>
          <dt>{t("vm.status")}</dt><dd id="vm-status">{status}{data?.qmpstatus && data.qmpstatus !== status ? ` (${data.qmpstatus})` : ""}</dd>
          <dt>{t("vm.node")}</dt><dd>{node}</dd>
          <dt>{t("vm.ha")}</dt><dd id="vm-ha">{haText}</dd>
          <dt>{t("vm.cpu")}</dt><dd><Meter value={data?.cpu} max={1} text={fmt.cpu(data?.cpu, data?.cpus)} /></dd>
          <dt>{t("vm.mem")}</dt>
          <dd><Meter value={data?.mem} max={data?.maxmem}
            text={`${fmt.bytes(data?.mem)} / ${fmt.bytes(data?.maxmem)}`} /></dd>
          <dt>{t("vm.uptime")}</dt><dd>{fmt.uptime(data?.uptime)}</dd>
        </dl>
      </section>}
      {pending && pending !== "migrate" && pending !== "clone" && (
        <Dialog title={t(`vm.${pending}` as "vm.start")} danger={pending === "stop" || pending === "destroy"}
          onOk={run} onCancel={() => setPending(null)}>
          <p>{t(`vm.confirm.${pending}` as "vm.confirm.start", { vmid: props.vmid })}</p>
          {pending === "destroy" && <label class="check"><input type="checkbox" id="vm-destroy-purge"
            checked={purge} onChange={(e) => setPurge(e.currentTarget.checked)} />{t("vm.destroy.purge")}</label>}
        </Dialog>
      )}
      {pending === "clone" && (
        <Dialog title={t("vm.clone.title", { vmid: props.vmid })} okLabel={t("vm.clone")}
          okDisabled={!/^\d+$/.test(clone.newid)} onOk={run} onCancel={() => setPending(null)}>
          <label>{t("vm.clone.newid")}
            <input id="vm-clone-newid" value={clone.newid} inputMode="numeric"
              onInput={(e) => setClone({ ...clone, newid: e.currentTarget.value })} /></label>
          <label>{t("vm.clone.name")}
            <input id="vm-clone-name" value={clone.name}
              onInput={(e) => setClone({ ...clone, name: e.currentTarget.value })} /></label>
          {!!entry.template && (
            <label>{t("vm.clone.mode")}
              <select id="vm-clone-mode" value={clone.full ? "full" : "linked"}
                onChange={(e) => setClone({ ...clone, full: e.currentTarget.value === "full" })}>
                <option value="linked">{t("vm.clone.linked")}</option>
                <option value="full">{t("vm.clone.full")}</option>
              </select></label>)}
          <label>{t("vm.migrate.target")}
            <select id="vm-clone-target" value={target} onChange={(e) => setTarget(e.currentTarget.value)}>
              {[node ?? "", ...targets].filter(Boolean).map((n) => <option key={n} value={n}>{n}</option>)}
            </select></label>
        </Dialog>
      )}
      {pending === "migrate" && (
        <Dialog title={t("vm.migrate.title", { vmid: props.vmid })} okLabel={t("vm.migrate")}
          okDisabled={!target} onOk={run} onCancel={() => setPending(null)}>
          {targets.length === 0 ? <p>{t("vm.migrate.none")}</p> : (
            <>
              <label>{t("vm.migrate.target")}
                <select value={target} onChange={(e) => setTarget(e.currentTarget.value)}>
                  {targets.map((n) => <option key={n} value={n}>{n}</option>)}
                </select>
              </label>
              {running && (
                <label class="check">
                  <input type="checkbox" checked={online}
                    onChange={(e) => setOnline(e.currentTarget.checked)} />
                  {t("vm.migrate.online")}
                </label>
              )}
              {running && online && localDisks.length > 0 && (
                <p class="notice" id="vm-migrate-local">
                  {t("vm.migrate.localdisks", { disks: localDisks.join(", ") })}</p>
              )}
            </>
          )}
        </Dialog>
      )}
    </div>
  );
}

/** The VM left the node just asked (a migration, a failover): the next poll of
 * /cluster/resources names its new node; not an error to show. */
function movedAway(e: ApiError): boolean {
  return e.status === 500 && /does not exist/.test(e.message);
}
