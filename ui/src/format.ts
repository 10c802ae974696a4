// Numbers as an administrator reads them.
export function bytes(n: number | undefined): string {
  if (n === undefined || n === null || isNaN(n)) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : v < 10 ? 2 : 1)} ${units[i]}`;
}

export function percent(part: number | undefined, whole: number | undefined): string {
  if (!whole || part === undefined) return "—";
  return `${((100 * part) / whole).toFixed(1)} %`;
}

export function cpu(fraction: number | undefined, cpus?: number): string {
  if (fraction === undefined) return "—";
  const p = `${(fraction * 100).toFixed(1)} %`;
  return cpus ? `${p} of ${cpus} CPU${cpus === 1 ? "" : "s"}` : p;
}

export function uptime(seconds: number | undefined): string {
  if (!seconds) return "—";
  const d = Math.floor(seconds / 86400);
  const h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = Math.floor(seconds % 60);
  const hms = [h, m, s].map((x) => String(x).padStart(2, "0")).join(":");
  return d ? `${d}d ${hms}` : hms;
}

export function time(epoch: number | undefined): string {
  if (!epoch) return "—";
  const d = new Date(epoch * 1000);
  const pad = (x: number) => String(x).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
