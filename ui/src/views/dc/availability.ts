// The availability report of an HA service (GET /cluster/ha/availability) as a time
// series, for the charts: the report gives the period, the seconds monitored (from the
// service's first recorded state to now, without gaps) and every outage and planned stop
// with its start and end; cut into buckets, that is the availability per bucket and since
// the period's start, by the API's own rule: up / (monitored - planned).

export interface Span { start: number; end: number; duration: number; cause: string; node?: string; ongoing?: number }

export interface Report {
  sid: string; since: number; until: number; monitored: number; planned_downtime: number;
  downtime: number; availability: number | null; class: string; outages: number;
  longest: number; mttr: number; outage_list: Span[]; planned_list: Span[];
  budget?: { target: number; allowed: number; used: number; used_percent: number; left: number; scope?: string };
  period: string; state: string;
}

export type Period = "day" | "week" | "month" | "year";
export const PERIODS: Period[] = ["day", "week", "month", "year"];
/** bucket length in seconds and its name's string key, per period */
export const BUCKETS: Record<Period, { seconds: number; name: "hour" | "sixhours" | "day" | "week" }> = {
  day: { seconds: 3600, name: "hour" },
  week: { seconds: 6 * 3600, name: "sixhours" },
  month: { seconds: 86400, name: "day" },
  year: { seconds: 7 * 86400, name: "week" },
};

const overlap = (a0: number, a1: number, b0: number, b1: number) =>
  Math.max(0, Math.min(a1, b1) - Math.max(a0, b0));
const within = (spans: Span[], a0: number, a1: number) =>
  spans.reduce((sum, s) => sum + overlap(a0, a1, s.start, s.end), 0);

function percent(monitored: number, planned: number, down: number): number | null {
  const counted = monitored - planned;
  return counted > 0 ? 100 * (1 - down / counted) : null;
}

export interface AvailabilitySeries {
  x: number[];
  bucket: (number | null)[];
  cumulative: (number | null)[];
}

/** The report cut into buckets of `seconds` from its start to `now` (epoch seconds). */
export function series(rep: Report, seconds: number, now: number): AvailabilitySeries {
  // the report ends at the server's now: an ongoing outage ends there too
  const lastEnd = Math.max(0, ...rep.outage_list.map((o) => o.end), ...rep.planned_list.map((o) => o.end));
  const end = Math.min(rep.until, Math.max(now, lastEnd));
  const monitoredFrom = end - rep.monitored;
  const out: AvailabilitySeries = { x: [], bucket: [], cumulative: [] };
  for (let b0 = rep.since; b0 < end; b0 += seconds) {
    const b1 = Math.min(b0 + seconds, end);
    out.x.push(b0);
    out.bucket.push(percent(overlap(b0, b1, monitoredFrom, end), within(rep.planned_list, b0, b1),
                            within(rep.outage_list, b0, b1)));
    out.cumulative.push(percent(overlap(rep.since, b1, monitoredFrom, end),
                                within(rep.planned_list, rep.since, b1),
                                within(rep.outage_list, rep.since, b1)));
  }
  return out;
}

/** The y axis' range: from a little below the lowest value (or the target) to 100 %. */
export function yRange(values: (number | null)[], target?: number): [number, number] {
  const known = values.filter((v): v is number => v !== null);
  const lo = Math.min(100, ...known, target ?? 100);
  const span = Math.max(100 - lo, 0.01);
  return [Math.max(0, lo - span * 0.3), 100 + span * 0.1];
}

/** Enough decimals to tell the values of that range apart. */
export function percentFormat(range: [number, number]): (v: number | null) => string {
  const span = range[1] - range[0];
  const digits = span < 0.05 ? 4 : span < 0.5 ? 3 : span < 5 ? 2 : 1;
  return (v) => (v == null ? "—" : `${v.toFixed(digits)} %`);
}

/** A duration as an administrator reads it: 8.7 s, 44 min 38 s, 2 h 5 min, 3 d 4 h. */
export function duration(seconds: number): string {
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m} min ${Math.round(seconds % 60)} s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}
