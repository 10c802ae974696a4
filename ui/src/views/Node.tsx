// Node view: the summary (GET /nodes/{node}/status, proxied to that node by the API) and
// its guests; the Tasks, Syslog, Network, System and Certificates tabs (#/node/n1/syslog...) and the
// bulk actions (views/node/).
import { usePoll } from "../poll";
import { t } from "../strings";
import * as fmt from "../format";
import type { Resource } from "../types";
import { Meter } from "./Datacenter";
import { Graphs } from "./Graphs";
import { NodeCertificates, NodeStorages, NodeSyslog, TaskHistory } from "./lazy";
import { NodeIcon, VmIcon } from "./Status";
import { BulkActions, NodeNetwork, NodeSystem } from "./node/NodeSystem";
import { href, NODE_TABS, type NodeTab } from "../route";

interface NodeStatus {
  cpu?: number;
  cpuinfo?: { cpus?: number; model?: string };
  loadavg?: string[];
  memory?: { used?: number; total?: number };
  swap?: { used?: number; total?: number };
  rootfs?: { used?: number; total?: number };
  uptime?: number;
  kversion?: string;
  pveversion?: string;
}

export function NodeSummary(props: { node: string; tab?: NodeTab; resources: Resource[];
                                     onVm: (vmid: number) => void }) {
  const tab = props.tab ?? "summary";
  const { data, error } = usePoll<NodeStatus>(tab === "summary" ? `/nodes/${encodeURIComponent(props.node)}/status` : null, 2000);
  const entry = props.resources.find((r) => r.type === "node" && r.node === props.node);
  const vms = props.resources.filter((r) => r.type === "qemu" && r.node === props.node)
    .sort((a, b) => (a.vmid ?? 0) - (b.vmid ?? 0));
  return (
    <div class="view" id="view-node">
      <h1><NodeIcon status={entry?.status} /> {t("node.summary", { node: props.node })}</h1>
      {error && <p class="error">{t("node.unreachable", { node: props.node, message: error.message })}</p>}
      <BulkActions node={props.node} resources={props.resources} />
      <nav class="tabs" role="tablist" aria-label={t("node.summary", { node: props.node })}>
        {NODE_TABS.map((x) => (
          <a key={x} role="tab" id={`node-tab-${x}`} aria-selected={tab === x}
            href={href({ kind: "node", node: props.node, tab: x })}>{t(`node.tab.${x}` as "node.tab.summary")}</a>
        ))}
      </nav>
      {tab === "tasks" && <TaskHistory key={props.node} node={props.node} id="node-tasks" />}
      {tab === "syslog" && <NodeSyslog key={props.node} node={props.node} />}
      {tab === "network" && <NodeNetwork node={props.node} />}
      {tab === "system" && <NodeSystem node={props.node} />}
      {tab === "certificates" && <NodeCertificates key={props.node} node={props.node} />}
      {tab === "summary" && <>
      <section class="card">
        <dl>
          <dt>{t("node.cpu")}</dt>
          <dd><Meter value={data?.cpu} max={1} text={fmt.cpu(data?.cpu, data?.cpuinfo?.cpus)} /></dd>
          <dt>{t("node.load")}</dt><dd>{data?.loadavg?.join(", ") ?? t("common.none")}</dd>
          <dt>{t("node.mem")}</dt>
          <dd><Meter value={data?.memory?.used} max={data?.memory?.total}
            text={`${fmt.bytes(data?.memory?.used)} / ${fmt.bytes(data?.memory?.total)}`} /></dd>
          <dt>{t("node.swap")}</dt>
          <dd><Meter value={data?.swap?.used} max={data?.swap?.total}
            text={`${fmt.bytes(data?.swap?.used)} / ${fmt.bytes(data?.swap?.total)}`} /></dd>
          <dt>{t("node.rootfs")}</dt>
          <dd><Meter value={data?.rootfs?.used} max={data?.rootfs?.total}
            text={`${fmt.bytes(data?.rootfs?.used)} / ${fmt.bytes(data?.rootfs?.total)}`} /></dd>
          <dt>{t("node.uptime")}</dt><dd>{fmt.uptime(data?.uptime)}</dd>
          <dt>{t("node.kernel")}</dt><dd>{data?.kversion ?? t("common.none")}</dd>
          <dt>{t("node.version")}</dt><dd>{data?.pveversion ?? t("common.none")}</dd>
        </dl>
      </section>
      <section>
        <h2>{t("node.guests")}</h2>
        <div class="table-wrap">
          <table>
            <thead><tr>
              <th>{t("col.name")}</th><th>{t("col.status")}</th><th>{t("col.cpu")}</th>
              <th>{t("col.mem")}</th><th>{t("col.uptime")}</th>
            </tr></thead>
            <tbody>
              {vms.map((vm) => (
                <tr key={vm.id}>
                  <td><a href={`#/vm/${vm.vmid}`}
                    onClick={(e) => { e.preventDefault(); props.onVm(vm.vmid ?? 0); }}>
                    <VmIcon vm={vm} /> {vm.vmid} ({vm.name})</a></td>
                  <td>{vm.status}{vm.hastate ? ` (HA: ${vm.hastate})` : ""}</td>
                  <td>{fmt.cpu(vm.cpu, vm.maxcpu)}</td>
                  <td>{fmt.bytes(vm.mem)} / {fmt.bytes(vm.maxmem)}</td>
                  <td>{fmt.uptime(vm.uptime)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>
      <section>
        <h2>{t("storage.node.list")}</h2>
        <NodeStorages node={props.node} />
      </section>
      <section>
        <h2>{t("vm.tab.graphs")}</h2>
        <Graphs kind="node" path={`/nodes/${encodeURIComponent(props.node)}/rrddata`} />
      </section>
      </>}
    </div>
  );
}
