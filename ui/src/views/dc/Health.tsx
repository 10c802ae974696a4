// The datacenter summary's cards beyond PVE's: the replicated volumes' health (every
// online node's GET /nodes/{node}/volumes, merged as Datacenter → Replicated volumes
// does) and the active alerts (alerts.ts: no quorum, a node offline, HA disarmed or a
// node in maintenance, an HA service in error/fence/recovery, a volume in split brain,
// degraded or resyncing). A lazy chunk, with the Replicated volumes page's poller.
import { t, type StringKey } from "../../strings";
import type { HaStatusEntry, Resource } from "../../types";
import { href } from "../../route";
import { activeAlerts, volumeHealth } from "./alerts";
import { mergeVolumes } from "./volumes";
import { useNodeVolumes } from "./Volumes";

export function DcHealth(props: { resources: Resource[]; quorate?: boolean; ha?: HaStatusEntry[] }) {
  const nodes = props.resources.filter((r) => r.type === "node" && r.node);
  const online = nodes.filter((r) => r.status === "online").map((r) => r.node as string).sort();
  const { lists, errors, loaded } = useNodeVolumes(online);
  // a user who may not read volumes (Volume.Audit) gets 403s: no volume card for them
  // (nor for one who sees no node at all)
  const denied = online.length === 0 || (loaded && online.every((n) => n in errors));
  const volumes = loaded && !denied ? mergeVolumes(lists) : null;
  const health = volumes ? volumeHealth(volumes) : null;
  const alerts = activeAlerts({ quorate: props.quorate, nodes, ha: props.ha ?? [], volumes });
  return (
    <>
      {!denied && (
        <section class="card" aria-labelledby="dc-volumes">
          <h2 id="dc-volumes"><a href={href({ kind: "dcview", view: "volumes" })}>{t("dc.vol.title")}</a></h2>
          <p id="dc-volume-health" data-total={health?.total ?? ""} data-bad={health?.bad ?? ""}>
            {!health ? t("common.loading") : health.total === 0 ? t("dc.vol.none")
              : t("dc.vol.counts", { ...health })}</p>
        </section>
      )}
      <section class="card" aria-labelledby="dc-alerts">
        <h2 id="dc-alerts">{t("dc.alerts")}</h2>
        {alerts.length === 0 ? <p id="dc-alerts-none" class="ok">{t("dc.alerts.none")}</p> : (
          <ul id="dc-alert-list">
            {alerts.map((a) => (
              <li key={a.id} data-id={a.id} class={a.level}>{t(a.key as StringKey, a.args)}</li>
            ))}
          </ul>
        )}
      </section>
    </>
  );
}
