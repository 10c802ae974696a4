// The pure logic of a node's Syslog and Tasks tabs (tests/unit/ui runs it under Node.js):
// PVE's syslog paging (start/limit, `total`), its since/until date-times checked as the
// server checks them, the journal's cursors for the live follow, the search filter.

/** PVE's syslog since/until: `YYYY-MM-DD[ HH:MM[:SS]]` (local time). */
const DATE_TIME = /^\d{4}-\d{2}-\d{2}( \d{2}:\d{2}(:\d{2})?)?$/;

export interface SyslogForm { since: string; until: string; service: string }
export type Checked = { params: Record<string, string | number> } | { error: keyof SyslogForm };

/** A date-time field as the API takes it: a datetime-local value's `T` is a space. */
export function dateTime(text: string): string | null {
  const v = text.trim().replace("T", " ");
  return v === "" || DATE_TIME.test(v) ? v : null;
}

/** The parameters of GET /nodes/{node}/syslog for one page (0-based), or the bad field. */
export function syslogParams(page: number, size: number, form: SyslogForm): Checked {
  const params: Record<string, string | number> = { start: page * size, limit: size };
  for (const k of ["since", "until"] as const) {
    const v = dateTime(form[k]);
    if (v === null) return { error: k };
    if (v) params[k] = v;
  }
  if (form.since && form.until && dateTime(form.since)! > dateTime(form.until)!) {
    return { error: "until" };
  }
  if (form.service) params.service = form.service;
  return { params };
}

/** The number of pages of `total` lines, at least one. */
export function pageCount(total: number | undefined, size: number): number {
  return Math.max(1, Math.ceil((total ?? 0) / size));
}

/** The page that shows the newest lines (PVE's syslog view opens there). */
export function lastPage(total: number | undefined, size: number): number {
  return pageCount(total, size) - 1;
}

/** GET /nodes/{node}/journal's answer: first cursor, the lines, last cursor. */
export function parseJournal(answer: string[]): { lines: string[]; last?: string } {
  if (answer.length < 2) return { lines: [] };
  return { lines: answer.slice(1, -1), last: answer[answer.length - 1] };
}

/** The followed lines with the new ones appended, the oldest dropped beyond `max`. */
export function appendLines(shown: string[], added: string[], max: number): string[] {
  const all = added.length ? shown.concat(added) : shown;
  return all.length > max ? all.slice(all.length - max) : all;
}

/** The search filter: every word of it in the line, case-insensitive. */
export function matches(line: string, filter: string): boolean {
  const words = filter.toLowerCase().split(/\s+/).filter(Boolean);
  const l = line.toLowerCase();
  return words.every((w) => l.includes(w));
}
