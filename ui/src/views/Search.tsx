// Finding things: the tree's view selector (server, pool, tag view, as PVE's) and its
// search box that narrows the tree, the pool and tag views' items, and the Search panel
// (#/search/<text>) listing every /cluster/resources entry that matches.
import type { ComponentChild } from "preact";
import { useEffect, useState } from "preact/hooks";
import { href, type Route } from "../route";
import { t } from "../strings";
import * as fmt from "../format";
import type { Resource } from "../types";
import { NodeIcon, VmIcon } from "./Status";
import type { Item } from "./Tree";
import "./access/access.css";

export type TreeView = "server" | "pool" | "tag";
const VIEW_KEY = "binome.treeview";

/** The tree's view and filter; the view is remembered across reloads. */
export function useTreeOptions(): [TreeView, (v: TreeView) => void, string, (f: string) => void] {
  const [view, setView] = useState<TreeView>(() => {
    const saved = localStorage.getItem(VIEW_KEY);
    return saved === "pool" || saved === "tag" ? saved : "server";
  });
  const [filter, setFilter] = useState("");
  const pick = (v: TreeView) => {
    localStorage.setItem(VIEW_KEY, v);
    setView(v);
  };
  return [view, pick, filter, setFilter];
}

export function tagsOf(r: Resource): string[] {
  return (r.tags ?? "").split(/[;, ]+/).filter(Boolean);
}

/** Case-insensitive substring match on what an administrator would type: id, name,
 * VMID, node, storage, pool, tags, type, status. An empty text matches everything. */
export function matches(r: Resource, text: string): boolean {
  const q = text.trim().toLowerCase();
  if (!q) return true;
  return [r.id, r.name, r.vmid, r.node, r.storage, r.pool, r.tags, r.type, r.status]
    .some((v) => v !== undefined && String(v).toLowerCase().includes(q));
}

function vmItem(parent: string, vm: Resource, level: number): Item {
  const r: Route = { kind: "vm", vmid: vm.vmid ?? 0 };
  return { key: `${parent}${href(r)}`, select: href(r), route: r, level, status: vm.status,
    label: `${vm.vmid} (${vm.name ?? ""})`, icon: <VmIcon vm={vm} /> };
}

function group(key: string, route: Route, label: string, icon: ComponentChild,
               open: boolean): Item {
  return { key, route, level: 2, label, icon, expandable: key, expanded: open };
}

/** The pool view (datacenter > pools > their VMs) or the tag view (datacenter > tags >
 * their VMs; a VM shows under each of its tags, untagged VMs directly under the
 * datacenter). `vms` is already filtered; a group shows when its name matches or it
 * holds a VM that does. */
export function groupedItems(view: "pool" | "tag", resources: Resource[], vms: Resource[],
                             filter: string, collapsed: Set<string>): Item[] {
  const out: Item[] = [];
  const q = filter.trim().toLowerCase();
  if (view === "pool") {
    const pools = resources.filter((r) => r.type === "pool" && r.pool)
      .map((r) => r.pool ?? "").sort();
    for (const pool of pools) {
      const members = vms.filter((v) => v.pool === pool);
      if (q && !pool.toLowerCase().includes(q) && members.length === 0) continue;
      const route: Route = { kind: "access", view: "pools", id: pool };
      const key = href(route);
      const open = !collapsed.has(key);
      out.push(group(key, route, pool, <span class="icon pool" aria-hidden="true">◫</span>, open));
      if (open) out.push(...members.map((vm) => vmItem(key, vm, 3)));
    }
    return out;
  }
  const tags = [...new Set(vms.flatMap(tagsOf))].sort();
  for (const tag of tags) {
    const key = `tag:${tag}`;
    const open = !collapsed.has(key);
    out.push(group(key, { kind: "search", query: tag }, tag,
      <span class="icon tag" aria-hidden="true">#</span>, open));
    if (open) out.push(...vms.filter((v) => tagsOf(v).includes(tag)).map((vm) => vmItem(key, vm, 3)));
  }
  out.push(...vms.filter((v) => tagsOf(v).length === 0).map((vm) => vmItem("untagged", vm, 2)));
  return out;
}

/** Above the tree: the view selector and the search box (Enter opens the Search panel). */
export function TreeToolbar(props: { view: TreeView; onView: (v: TreeView) => void;
                                     filter: string; onFilter: (f: string) => void;
                                     onSearch: (q: string) => void }) {
  return (
    <div class="tree-toolbar">
      <select id="tree-view" aria-label={t("search.view")} value={props.view}
        onChange={(e) => props.onView(e.currentTarget.value as TreeView)}>
        <option value="server">{t("search.view.server")}</option>
        <option value="pool">{t("search.view.pool")}</option>
        <option value="tag">{t("search.view.tag")}</option>
      </select>
      <input id="tree-search" type="search" aria-label={t("search.label")} placeholder={t("search.placeholder")}
        value={props.filter} onInput={(e) => props.onFilter(e.currentTarget.value)}
        onKeyDown={(e) => { if (e.key === "Enter") props.onSearch(e.currentTarget.value); }} />
    </div>
  );
}

function routeOf(r: Resource): Route {
  switch (r.type) {
    case "qemu": return { kind: "vm", vmid: r.vmid ?? 0 };
    case "node": return { kind: "node", node: r.node ?? "" };
    case "pool": return { kind: "access", view: "pools", id: r.pool ?? "" };
    case "storage": return { kind: "dcview", view: "storage" };
    default: return { kind: "dc" };
  }
}

function describe(r: Resource): string {
  switch (r.type) {
    case "qemu": return `${r.vmid} (${r.name ?? ""})`;
    case "node": return r.node ?? "";
    case "storage": return `${r.storage} (${r.node})`;
    case "pool": return r.pool ?? "";
    default: return r.id;
  }
}

function icon(r: Resource): ComponentChild {
  if (r.type === "qemu") return <VmIcon vm={r} />;
  if (r.type === "node") return <NodeIcon status={r.status} />;
  return null;
}

/** The Search panel: every resource matching the text, live (the shell's poll). */
export function SearchPanel(props: { query: string; resources: Resource[]; go: (r: Route) => void }) {
  const [text, setText] = useState(props.query);
  useEffect(() => setText(props.query), [props.query]);
  const found = props.resources.filter((r) => matches(r, text))
    .sort((a, b) => a.type.localeCompare(b.type) || describe(a).localeCompare(describe(b)));
  return (
    <div class="view" id="view-search">
      <h1>{t("search.title")}</h1>
      <div class="toolbar">
        <input id="search-query" type="search" aria-label={t("search.label")} value={text}
          placeholder={t("search.placeholder")} autoFocus
          onInput={(e) => {
            setText(e.currentTarget.value);
            history.replaceState(null, "", href({ kind: "search", query: e.currentTarget.value }));
          }} />
        <span class="muted" id="search-count">{t("search.count", { count: found.length })}</span>
      </div>
      <div class="table-wrap">
        <table id="search-results">
          <thead><tr><th>{t("col.type")}</th><th>{t("search.description")}</th><th>{t("col.node")}</th>
            <th>{t("search.pool")}</th><th>{t("search.tags")}</th><th>{t("col.status")}</th>
            <th>{t("col.cpu")}</th><th>{t("col.mem")}</th></tr></thead>
          <tbody>
            {found.map((r) => (
              <tr key={r.id} data-id={r.id} class="clickable" tabIndex={0}
                onClick={() => props.go(routeOf(r))}
                onKeyDown={(e) => { if (e.key === "Enter") props.go(routeOf(r)); }}>
                <td>{r.type}</td>
                <td>{icon(r)} <a href={href(routeOf(r))}>{describe(r)}</a></td>
                <td>{r.node ?? ""}</td><td>{r.pool ?? ""}</td><td>{tagsOf(r).join(", ")}</td>
                <td>{r.status ?? ""}</td>
                <td>{r.cpu !== undefined ? fmt.cpu(r.cpu) : ""}</td>
                <td>{r.maxmem ? `${fmt.bytes(r.mem)} / ${fmt.bytes(r.maxmem)}` : ""}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </div>
  );
}
