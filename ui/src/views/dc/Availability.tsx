// Datacenter → Availability: each HA service's availability report for a calendar
// period (GET /cluster/ha/availability, as `binome ha availability`): availability,
// class, downtime, outages, MTTR, the downtime budget, and a chart of the availability
// per bucket and since the period's start, with the service's target (its own, or the
// datacenter's) drawn as a line. The charts are the graphs' uPlot chunk, loaded here.
import type { ComponentType } from "preact";
import { useEffect, useState } from "preact/hooks";
import type { ChartProps } from "../../charts/Chart";
import * as fmt from "../../format";
import { usePoll } from "../../poll";
import { t } from "../../strings";
import { DcTabs } from "../DcViews";
import { BUCKETS, PERIODS, duration, percentFormat, series, yRange, type Period, type Report } from "./availability";

// an outage shows within seconds on the day's chart, within a minute on the year's
const REFRESH_MS: Record<Period, number> = { day: 5_000, week: 10_000, month: 15_000, year: 60_000 };

export function Availability() {
  const [period, setPeriod] = useState<Period>("month");
  const { data, error } = usePoll<Report[]>("/cluster/ha/availability", REFRESH_MS[period], { period });
  const [Chart, setChart] = useState<ComponentType<ChartProps> | null>(null);
  useEffect(() => {
    let alive = true;
    import("../../charts/Chart").then((m) => { if (alive) setChart(() => m.default); });
    return () => { alive = false; };
  }, []);
  return (
    <div class="view" id="view-dc-availability">
      <DcTabs current="availability" />
      <div class="toolbar">
        <label>{t("avail.period")}{" "}
          <select id="avail-period" value={period} onChange={(e) => setPeriod(e.currentTarget.value as Period)}>
            {PERIODS.map((p) => <option key={p} value={p}>{t(`avail.period.${p}`)}</option>)}
          </select>
        </label>
      </div>
      {error && <p class="error">{t("common.error", { message: error.message })}</p>}
      {data && !data.length && <p id="avail-none">{t("avail.none")}</p>}
      <div class="table-wrap">
        <table id="avail-table">
          <thead><tr><th>{t("ha.sid")}</th><th>{t("avail.availability")}</th><th>{t("avail.class")}</th>
            <th>{t("avail.downtime")}</th><th>{t("avail.outages")}</th><th>{t("avail.mttr")}</th>
            <th>{t("avail.planned")}</th><th>{t("avail.budget")}</th></tr></thead>
          <tbody>
            {(data ?? []).map((r) => (
              <tr key={r.sid} data-sid={r.sid}>
                <td>{r.sid}</td>
                <td class="avail-percent">{r.availability === null ? "—" : `${r.availability.toFixed(4)} %`}</td>
                <td>{r.class}</td><td>{duration(r.downtime)}</td><td>{r.outages}</td>
                <td>{r.outages ? duration(r.mttr) : "—"}</td><td>{duration(r.planned_downtime)}</td>
                <td class="avail-budget">{r.budget ? t("avail.budget.text", {
                  used: duration(r.budget.used), allowed: duration(r.budget.allowed),
                  percent: r.budget.used_percent, target: r.budget.target, scope: r.budget.scope ?? "" })
                  : t("avail.budget.none")}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {data && data.length > 0 && (!Chart ? <p>{t("common.loading")}</p> : (
        <div class="chart-grid" id="avail-charts">
          {data.map((r) => <ServiceChart key={`${r.sid}-${period}`} report={r} period={period} Chart={Chart} />)}
        </div>
      ))}
      {(data ?? []).filter((r) => r.outage_list.length || r.planned_list.length).map((r) => (
        <details key={r.sid} class="avail-outages" data-sid={r.sid}>
          <summary>{r.sid}: {t("avail.outage.list")} ({r.outage_list.length + r.planned_list.length})</summary>
          <table>
            <thead><tr><th>{t("avail.outage.start")}</th><th>{t("avail.outage.duration")}</th>
              <th>{t("avail.outage.kind")}</th><th>{t("avail.outage.cause")}</th><th>{t("col.node")}</th></tr></thead>
            <tbody>
              {[...r.outage_list.map((o) => ({ ...o, planned: false })),
                ...r.planned_list.map((o) => ({ ...o, planned: true }))]
                .sort((a, b) => a.start - b.start).map((o) => (
                  <tr key={`${o.start}-${o.planned}`} class={o.planned ? "" : "bad"}>
                    <td>{fmt.time(o.start)}</td>
                    <td>{duration(o.duration)}{o.ongoing ? ` (${t("avail.outage.ongoing")})` : ""}</td>
                    <td>{o.planned ? t("avail.outage.plannedkind") : t("avail.outage.unplanned")}</td>
                    <td>{o.cause}</td><td>{o.node ?? ""}</td>
                  </tr>))}
            </tbody>
          </table>
        </details>
      ))}
    </div>
  );
}

function ServiceChart(props: { report: Report; period: Period; Chart: ComponentType<ChartProps> }) {
  const { report: r, period, Chart } = props;
  const bucket = BUCKETS[period];
  const s = series(r, bucket.seconds, Date.now() / 1000);
  const target = r.budget?.target;
  const range = yRange([...s.bucket, ...s.cumulative], target);
  const bucketName = t(`avail.bucket.${bucket.name}`);
  const lines = [
    { label: t("avail.series.bucket", { bucket: bucketName }), color: "#2f7ed8" },
    { label: t("avail.series.cumulative"), color: "#3a9a4a", fill: false },
    ...(target !== undefined ? [{ label: `${t("avail.series.target")} ${target} % (${r.budget?.scope ?? ""})`,
                                  color: "#d8542f", fill: false, dash: [6, 4] }] : []),
  ];
  const columns = [s.x, s.bucket, s.cumulative, ...(target !== undefined ? [s.x.map(() => target)] : [])];
  return (
    <div class="avail-chart" data-sid={r.sid} data-points={s.x.length} data-target={target ?? ""}>
      <Chart id={`avail-chart-${r.sid.replace(":", "-")}`} title={t("avail.chart", { sid: r.sid, bucket: bucketName })}
        series={lines} data={columns} format={percentFormat(range)} yRange={range} yAxisSize={90} />
      {r.state && <p class="notice">{t("avail.state", { state: r.state })}</p>}
    </div>
  );
}
