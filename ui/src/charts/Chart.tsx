// One time-series chart with uPlot (about 20 KB gzipped), loaded on demand with the
// graphs. It re-uses its uPlot instance on new data (a live refresh redraws in place)
// and follows its container's width.
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { useEffect, useRef } from "preact/hooks";

export interface Series {
  label: string;
  color: string;
  /** false: a line alone (a target), not an area */
  fill?: boolean;
  dash?: number[];
}

export interface ChartProps {
  id: string;
  title: string;
  series: Series[];
  /** x (unix seconds) then one array per series; null is a gap */
  data: (number | null)[][];
  format: (v: number | null) => string;
  /** the y axis' fixed range (availability: near 100 %); default 0 to the maximum */
  yRange?: [number, number];
  /** the y axis' width in pixels, for its longest label (default 70) */
  yAxisSize?: number;
}

export default function Chart(props: ChartProps) {
  const host = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const shape = props.series.map((s) => s.label).join("|") + (props.yRange ?? []).join(",");

  useEffect(() => {
    if (!host.current) return;
    const fmt = props.format;
    const yRange = props.yRange;
    const opts: uPlot.Options = {
      width: Math.max(host.current.clientWidth, 200),
      height: 180,
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
      series: [{}, ...props.series.map((s) => ({
        label: s.label, stroke: s.color, fill: s.fill === false ? undefined : s.color + "22",
        dash: s.dash, width: 1.5, spanGaps: false,
        value: (_u: uPlot, v: number | null) => fmt(v),
      }))],
      axes: [{ stroke: "currentColor" },
             { stroke: "currentColor", size: props.yAxisSize ?? 70, values: (_u, vals) => vals.map((v) => fmt(v)) }],
      scales: { y: { range: (_u, _min, max): uPlot.Range.MinMax =>
        yRange ?? [0, max > 0 ? max * 1.1 : 1] } },
    };
    const u = new uPlot(opts, props.data as uPlot.AlignedData, host.current);
    plot.current = u;
    const resize = new ResizeObserver(() => {
      if (host.current) u.setSize({ width: Math.max(host.current.clientWidth, 200), height: 180 });
    });
    resize.observe(host.current);
    return () => {
      resize.disconnect();
      u.destroy();
      plot.current = null;
    };
  }, [shape]);

  useEffect(() => {
    plot.current?.setData(props.data as uPlot.AlignedData);
  }, [props.data]);

  return (
    <figure class="chart" id={props.id}>
      <figcaption>{props.title}</figcaption>
      <div ref={host} />
    </figure>
  );
}
