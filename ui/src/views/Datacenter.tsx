// Datacenter summary: cluster and quorum (/cluster/status), nodes with usage (from the
// shell's /cluster/resources), the HA manager's view (/cluster/ha/status/current), the
// replicated volumes' health and the active alerts (dc/Health.tsx, a lazy chunk).
import { usePoll } from "../poll";
import { t } from "../strings";
import * as fmt from "../format";
import type { ClusterStatusEntry, HaStatusEntry, Resource } from "../types";
import { DcTabs } from "./DcViews";
import { NodeIcon } from "./Status";
import { DcHealth } from "./lazy";

export function DatacenterSummary(props: { resources: Resource[]; onNode: (n: string) => void }) {
  const status = usePoll<ClusterStatusEntry[]>("/cluster/status", 3000);
  const ha = usePoll<HaStatusEntry[]>("/cluster/ha/status/current", 2000);
  const cluster = status.data?.find((e) => e.type === "cluster");
  const members = status.data?.filter((e) => e.type === "node") ?? [];
  const nodes = props.resources.filter((r) => r.type === "node")
    .sort((a, b) => (a.node ?? "").localeCompare(b.node ?? ""));
  const vms = props.resources.filter((r) => r.type === "qemu");
  const running = vms.filter((v) => v.status === "running").length;

  return (
    <div class="view" id="view-datacenter">
      <h1>{t("dc.summary")}</h1>
      <DcTabs current="summary" />
      <div class="cards">
        <section class="card" aria-labelledby="dc-cluster">
          <h2 id="dc-cluster">{t("dc.cluster")}</h2>
          {status.error && <p class="error">{t("common.error", { message: status.error.message })}</p>}
          <dl>
            <dt>{t("dc.name")}</dt><dd>{cluster?.name ?? t("common.none")}</dd>
            <dt>{t("dc.quorum")}</dt>
            <dd id="dc-quorum" class={cluster?.quorate ? "ok" : "bad"}>
              {cluster ? (cluster.quorate ? t("dc.quorate") : t("dc.notquorate")) : t("common.loading")}
            </dd>
            <dt>{t("dc.members")}</dt>
            <dd>{members.map((m) => (
              <span key={m.name} class="member">
                <NodeIcon status={m.online ? "online" : "offline"} /> {m.name}
                {m.level ? ` (${m.level})` : ""}
              </span>
            ))}</dd>
            <dt>{t("dc.guests")}</dt>
            <dd>{t("dc.guests.count", { running, stopped: vms.length - running })}</dd>
          </dl>
        </section>
        <section class="card" aria-labelledby="dc-ha">
          <h2 id="dc-ha">{t("dc.ha")}</h2>
          {ha.error && <p class="error">{t("common.error", { message: ha.error.message })}</p>}
          {ha.data && ha.data.length === 0 && <p>{t("dc.ha.none")}</p>}
          <ul class="ha-list" id="dc-ha-status">
            {(ha.data ?? []).map((e) => (
              <li key={e.id} data-type={e.type}>
                <span class="ha-type">{e.type}</span> {e.status}
              </li>
            ))}
          </ul>
        </section>
        <DcHealth resources={props.resources} quorate={cluster ? !!cluster.quorate : undefined}
          ha={ha.data} />
      </div>
      <section aria-labelledby="dc-nodes">
        <h2 id="dc-nodes">{t("dc.nodes")}</h2>
        <div class="table-wrap">
          <table id="dc-node-table">
            <thead><tr>
              <th>{t("col.name")}</th><th>{t("col.status")}</th><th>{t("col.cpu")}</th>
              <th>{t("col.mem")}</th><th>{t("col.disk")}</th><th>{t("col.uptime")}</th>
            </tr></thead>
            <tbody>
              {nodes.map((n) => (
                <tr key={n.id}>
                  <td><a href={`#/node/${encodeURIComponent(n.node ?? "")}`}
                    onClick={(e) => { e.preventDefault(); props.onNode(n.node ?? ""); }}>
                    <NodeIcon status={n.status} /> {n.node}</a></td>
                  <td>{n.status}</td>
                  <td><Meter value={n.cpu} max={1} text={fmt.cpu(n.cpu, n.maxcpu)} /></td>
                  <td><Meter value={n.mem} max={n.maxmem}
                    text={`${fmt.bytes(n.mem)} / ${fmt.bytes(n.maxmem)}`} /></td>
                  <td><Meter value={n.disk} max={n.maxdisk}
                    text={`${fmt.bytes(n.disk)} / ${fmt.bytes(n.maxdisk)}`} /></td>
                  <td>{fmt.uptime(n.uptime)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>
    </div>
  );
}

export function Meter(props: { value?: number; max?: number; text: string }) {
  const frac = props.max && props.value !== undefined ? Math.min(1, props.value / props.max) : 0;
  return (
    <span class="meter" title={props.text}>
      <span class={`meter-bar${frac > 0.9 ? " high" : ""}`} style={{ width: `${frac * 100}%` }} />
      <span class="meter-text">{props.text}</span>
    </span>
  );
}
