// Where the user is, in the URL's hash (#/dc, #/node/n1, #/vm/100): back/forward work
// and a view can be bookmarked. A VM is addressed by its id alone: it may move nodes.
import { useEffect, useState } from "preact/hooks";

export type Route =
  | { kind: "dc" }
  | { kind: "node"; node: string; tab?: NodeTab }
  | { kind: "storage"; node: string; storage: string }
  | { kind: "vm"; vmid: number; tab?: VmTab }
  | { kind: "dcview"; view: DcView }
  | { kind: "create" }
  | { kind: "access"; view: AccessView; id?: string }
  | { kind: "search"; query: string };

/** The node view's tabs; the summary is the node's own address (#/node/n1). */
export type NodeTab = "summary" | "tasks" | "syslog" | "network" | "system" | "certificates";
export const NODE_TABS: NodeTab[] = ["summary", "tasks", "syslog", "network", "system", "certificates"];
/** The VM view's tabs; the summary is the VM's own address (#/vm/100). */
export type VmTab = "summary" | "console" | "vnc" | "graphs" | "hardware" | "options"
  | "cloudinit" | "snapshots" | "backup" | "replication" | "tasks";
export const VM_TABS: VmTab[] = ["summary", "hardware", "options", "cloudinit", "snapshots",
  "backup", "replication", "console", "vnc", "graphs", "tasks"];
/** The datacenter's sub-views beside its summary. */
export type DcView = "log" | "tasks" | "ha" | "availability" | "storage" | "volumes" | "backup"
  | "notifications" | "acme" | "mappings" | "options";
const DC_VIEWS: DcView[] = ["log", "tasks", "ha", "availability", "storage", "volumes", "backup",
  "notifications", "acme", "mappings", "options"];
/** The datacenter's Permissions pages (#/access/users, a pool's page #/access/pools/p1). */
export type AccessView = "users" | "groups" | "roles" | "acl" | "tokens" | "pools" | "realms" | "tfa";
const ACCESS_VIEWS: AccessView[] = ["users", "groups", "roles", "acl", "tokens", "pools", "realms", "tfa"];

export function parseRoute(hash: string): Route {
  const parts = hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "node" && parts[1] && parts[2] === "storage" && parts[3]) {
    return { kind: "storage", node: parts[1], storage: parts[3] };
  }
  if (parts[0] === "node" && parts[1]) {
    const tab = NODE_TABS.find((x) => x === parts[2]);
    return tab && tab !== "summary" ? { kind: "node", node: parts[1], tab } : { kind: "node", node: parts[1] };
  }
  if (parts[0] === "vm" && /^\d+$/.test(parts[1] ?? "")) {
    const tab = VM_TABS.find((x) => x === parts[2]) ?? "summary";
    return { kind: "vm", vmid: Number(parts[1]), tab };
  }
  if (parts[0] === "dc") {
    const view = DC_VIEWS.find((x) => x === parts[1]);
    if (view) return { kind: "dcview", view };
  }
  if (parts[0] === "create") return { kind: "create" };
  if (parts[0] === "access") {
    const view = ACCESS_VIEWS.find((x) => x === parts[1]) ?? "users";
    return parts[2] ? { kind: "access", view, id: parts.slice(2).join("/") } : { kind: "access", view };
  }
  if (parts[0] === "search") return { kind: "search", query: parts.slice(1).join("/") };
  return { kind: "dc" };
}

export function href(r: Route): string {
  switch (r.kind) {
    case "dc": return "#/dc";
    case "node": return `#/node/${encodeURIComponent(r.node)}` + (r.tab && r.tab !== "summary" ? `/${r.tab}` : "");
    case "storage": return `#/node/${encodeURIComponent(r.node)}/storage/${encodeURIComponent(r.storage)}`;
    case "vm": return r.tab && r.tab !== "summary" ? `#/vm/${r.vmid}/${r.tab}` : `#/vm/${r.vmid}`;
    case "dcview": return `#/dc/${r.view}`;
    case "create": return "#/create";
    case "access": return `#/access/${r.view}` + (r.id ? `/${r.id.split("/").map(encodeURIComponent).join("/")}` : "");
    case "search": return r.query ? `#/search/${encodeURIComponent(r.query)}` : "#/search";
  }
}

/** The tree item a route belongs to: a VM's tabs all select the VM. */
export function routeKey(r: Route): string {
  if (r.kind === "vm") return `#/vm/${r.vmid}`;
  if (r.kind === "node") return href({ kind: "node", node: r.node });
  if (r.kind === "storage") return href({ kind: "node", node: r.node });
  if (r.kind === "dcview" || r.kind === "create" || r.kind === "search") return "#/dc";
  if (r.kind === "access") return r.id && r.view === "pools" ? href(r) : "#/dc";
  return href(r);
}

export function useRoute(): [Route, (r: Route) => void] {
  const [route, setRoute] = useState(() => parseRoute(location.hash));
  useEffect(() => {
    const on = () => setRoute(parseRoute(location.hash));
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return [route, (r: Route) => { location.hash = href(r); }];
}
