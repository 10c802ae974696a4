// Usage graphs of a node or a VM from its rrddata (PVE's timeframes hour..year, 60 s
// samples at best), refreshed live. uPlot and the charts load on demand.
import type { ComponentType } from "preact";
import { useEffect, useMemo, useState } from "preact/hooks";
import type { ChartProps } from "../charts/Chart";
import * as fmt from "../format";
import { usePoll } from "../poll";
import { t } from "../strings";

type Timeframe = "hour" | "day" | "week" | "month" | "year";
const TIMEFRAMES: Timeframe[] = ["hour", "day", "week", "month", "year"];
// a refresh about as often as the timeframe's rows change (an hour: every minute)
const REFRESH_MS: Record<Timeframe, number> = {
  hour: 15_000, day: 60_000, week: 300_000, month: 600_000, year: 3_600_000,
};

type Row = Record<string, number | undefined> & { time: number };

interface ChartSpec {
  id: string;
  title: string;
  fields: { key: string; label: string; color: string; scale?: number }[];
  format: (v: number | null) => string;
}

const pct = (v: number | null) => (v == null ? "—" : `${(v * 100).toFixed(1)} %`);
const size = (v: number | null) => (v == null ? "—" : fmt.bytes(v));
const rate = (v: number | null) => (v == null ? "—" : `${fmt.bytes(v)}/s`);

const NODE: ChartSpec[] = [
  { id: "cpu", title: "graphs.cpu", fields: [
    { key: "cpu", label: "CPU", color: "#2f7ed8" },
    { key: "iowait", label: "IO wait", color: "#d8542f" }], format: pct },
  { id: "mem", title: "graphs.mem", fields: [
    { key: "memtotal", label: "Total", color: "#888888" },
    { key: "memused", label: "Used", color: "#2f7ed8" }], format: size },
  { id: "net", title: "graphs.net", fields: [
    { key: "netin", label: "In", color: "#2f7ed8" },
    { key: "netout", label: "Out", color: "#d8542f" }], format: rate },
  { id: "disk", title: "graphs.rootfs", fields: [
    { key: "roottotal", label: "Total", color: "#888888" },
    { key: "rootused", label: "Used", color: "#2f7ed8" }], format: size },
];

const VM: ChartSpec[] = [
  { id: "cpu", title: "graphs.cpu", fields: [{ key: "cpu", label: "CPU", color: "#2f7ed8" }],
    format: pct },
  { id: "mem", title: "graphs.mem", fields: [
    { key: "maxmem", label: "Total", color: "#888888" },
    { key: "mem", label: "Used", color: "#2f7ed8" }], format: size },
  { id: "net", title: "graphs.net", fields: [
    { key: "netin", label: "In", color: "#2f7ed8" },
    { key: "netout", label: "Out", color: "#d8542f" }], format: rate },
  { id: "disk", title: "graphs.diskio", fields: [
    { key: "diskread", label: "Read", color: "#2f7ed8" },
    { key: "diskwrite", label: "Write", color: "#d8542f" }], format: rate },
];

export function Graphs(props: { path: string; kind: "node" | "vm" }) {
  const [timeframe, setTimeframe] = useState<Timeframe>("hour");
  const { data, error } = usePoll<Row[]>(props.path, REFRESH_MS[timeframe], { timeframe });
  const [Chart, setChart] = useState<ComponentType<ChartProps> | null>(null);
  useEffect(() => {
    let alive = true;
    import("../charts/Chart").then((m) => { if (alive) setChart(() => m.default); });
    return () => { alive = false; };
  }, []);
  const specs = props.kind === "vm" ? VM : NODE;
  const columns = useMemo(() => {
    const rows = data ?? [];
    const x = rows.map((r) => r.time);
    return specs.map((s) => [x, ...s.fields.map((f) => rows.map((r) => r[f.key] ?? null))]);
  }, [data, specs]);

  return (
    <section class="graphs" id="graphs" aria-label={t("vm.tab.graphs")}
      data-points={data?.length ?? 0}>
      <div class="toolbar">
        <label>{t("graphs.timeframe")}{" "}
          <select id="graphs-timeframe" value={timeframe}
            onChange={(e) => setTimeframe(e.currentTarget.value as Timeframe)}>
            {TIMEFRAMES.map((tf) => <option key={tf} value={tf}>{t(`graphs.${tf}` as "graphs.hour")}</option>)}
          </select>
        </label>
      </div>
      {error && <p class="error">{t("common.error", { message: error.message })}</p>}
      {!Chart || !data ? <p>{t("common.loading")}</p> : (
        <div class="chart-grid">
          {specs.map((s, i) => (
            <Chart key={s.id} id={`chart-${s.id}`} title={t(s.title as "graphs.cpu")}
              series={s.fields.map((f) => ({ label: f.label, color: f.color }))}
              data={columns[i]} format={s.format} />
          ))}
        </div>
      )}
    </section>
  );
}
