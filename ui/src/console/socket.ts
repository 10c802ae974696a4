// A console's websocket: POST termproxy (serial) or vncproxy (VNC) for a one-time
// ticket, then wss://<this host>/.../vncwebsocket. binome relays raw bytes both ways
// (no PVE termproxy framing). The socket must be opened on the node that runs the
// guest: the ticket cookie belongs to this host only, so a guest elsewhere is opened
// from its own node's address (the view says so and links there).
import { get, post } from "../api";

export type ConsoleKind = "serial" | "vnc";

interface ProxyTicket {
  ticket: string;
  port: string;
}

interface ClusterStatusEntry {
  type: string;
  name: string;
  ip?: string;
  local?: number;
}

/** Which node this page talks to, and every node's address. */
export async function localNode(): Promise<{ local?: string; ips: Record<string, string> }> {
  const status = await get<ClusterStatusEntry[]>("/cluster/status");
  const ips: Record<string, string> = {};
  let local: string | undefined;
  for (const e of status) {
    if (e.type !== "node") continue;
    if (e.ip) ips[e.name] = e.ip;
    if (e.local) local = e.name;
  }
  return { local, ips };
}

/** The URL of a console websocket with a fresh ticket (valid 30 s, single use). */
export async function consoleUrl(node: string, vmid: number, kind: ConsoleKind): Promise<string> {
  const base = `/nodes/${encodeURIComponent(node)}/qemu/${vmid}`;
  const data = await post<ProxyTicket>(`${base}/${kind === "vnc" ? "vncproxy" : "termproxy"}`);
  const q = new URLSearchParams({ port: data.port, vncticket: data.ticket });
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/api2/json${base}/vncwebsocket?${q}`;
}
