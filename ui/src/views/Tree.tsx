// The resource tree, fed by the shell's poll of /cluster/resources: the server view
// (datacenter > nodes > VMs), or the pool and tag views (Search.tsx builds those), each
// narrowed by the search box's filter. Keyboard: a single tab stop (roving tabindex); Up/Down/Home/End
// move, Enter or Space opens, Left/Right collapse and expand a node.
import type { ComponentChild } from "preact";
import { useMemo, useRef, useState } from "preact/hooks";
import { t } from "../strings";
import { type Route, routeKey } from "../route";
import type { Resource } from "../types";
import { NodeIcon, VmIcon } from "./Status";
import { groupedItems, matches, type TreeView } from "./Search";

export interface Item {
  key: string;
  select?: string;       // the route key it selects, when it is not `key` (a VM under a tag)
  route: Route;
  level: number;
  label: string;
  icon: ComponentChild;
  expandable?: string;   // the node name whose children this item shows or hides
  expanded?: boolean;
  status?: string;
}

export function Tree(props: {
  resources: Resource[];
  clusterName?: string;
  route: Route;
  onSelect: (r: Route) => void;
  view?: TreeView;
  filter?: string;
}) {
  const [collapsed, setCollapsed] = useState<Set<string>>(new Set());
  const [focus, setFocus] = useState<string | null>(null);
  const listRef = useRef<HTMLUListElement>(null);

  const items = useMemo(() => {
    const filter = props.filter?.trim() ?? "";
    let nodes = props.resources.filter((r) => r.type === "node")
      .sort((a, b) => (a.node ?? "").localeCompare(b.node ?? ""));
    const vms = props.resources.filter((r) => r.type === "qemu" && matches(r, filter))
      .sort((a, b) => (a.vmid ?? 0) - (b.vmid ?? 0));
    const root: Item = {
      key: routeKey({ kind: "dc" }), route: { kind: "dc" }, level: 1,
      label: props.clusterName ? t("tree.datacenter.named", { name: props.clusterName })
        : t("tree.datacenter"),
      icon: <span class="icon dc" aria-hidden="true">▦</span>,
    };
    if (props.view === "pool" || props.view === "tag") {
      return [root, ...groupedItems(props.view, props.resources, vms, filter, collapsed)];
    }
    const out: Item[] = [root];
    // filtered: a node shows when it matches or holds a VM that does
    if (filter) nodes = nodes.filter((n) => matches(n, filter) || vms.some((v) => v.node === n.node));
    const names = new Set(nodes.map((n) => n.node));
    // a VM whose node is not listed (yet) still shows, under a node entry of its own
    for (const vm of vms) {
      if (vm.node && !names.has(vm.node)) {
        names.add(vm.node);
        nodes.push({ id: `node/${vm.node}`, type: "node", node: vm.node, status: "unknown" });
      }
    }
    for (const n of nodes) {
      const name = n.node ?? "?";
      const open = !collapsed.has(name);
      const route: Route = { kind: "node", node: name };
      out.push({ key: routeKey(route), route, level: 2, label: name, status: n.status,
        icon: <NodeIcon status={n.status} />, expandable: name, expanded: open });
      if (!open) continue;
      for (const vm of vms.filter((v) => v.node === name)) {
        const r: Route = { kind: "vm", vmid: vm.vmid ?? 0 };
        out.push({ key: routeKey(r), route: r, level: 3, status: vm.status,
          label: `${vm.vmid} (${vm.name ?? ""})`, icon: <VmIcon vm={vm} /> });
      }
    }
    return out;
  }, [props.resources, props.clusterName, collapsed, props.view, props.filter]);

  const selected = routeKey(props.route);
  const isSelected = (i: Item) => (i.select ?? i.key) === selected;
  const active = focus && items.some((i) => i.key === focus) ? focus
    : items.find(isSelected)?.key ?? items[0].key;

  const moveTo = (key: string) => {
    setFocus(key);
    const el = listRef.current?.querySelector<HTMLElement>(`[data-key="${CSS.escape(key)}"]`);
    el?.focus();
  };
  const toggle = (name: string, open: boolean) => {
    const next = new Set(collapsed);
    if (open) next.delete(name); else next.add(name);
    setCollapsed(next);
  };

  const onKey = (e: KeyboardEvent) => {
    const i = items.findIndex((x) => x.key === active);
    const item = items[i];
    switch (e.key) {
      case "ArrowDown": if (i < items.length - 1) moveTo(items[i + 1].key); break;
      case "ArrowUp": if (i > 0) moveTo(items[i - 1].key); break;
      case "Home": moveTo(items[0].key); break;
      case "End": moveTo(items[items.length - 1].key); break;
      case "Enter": case " ": props.onSelect(item.route); break;
      case "ArrowLeft":
        if (item.expandable && item.expanded) toggle(item.expandable, false);
        else if (item.level > 1) {
          const parent = items.slice(0, i).reverse().find((x) => x.level < item.level);
          if (parent) moveTo(parent.key);
        }
        break;
      case "ArrowRight":
        if (item.expandable && !item.expanded) toggle(item.expandable, true);
        break;
      default: return;
    }
    e.preventDefault();
  };

  return (
    <ul class="tree" role="tree" aria-label={t("tree.label")} ref={listRef} onKeyDown={onKey}>
      {items.map((item) => (
        <li key={item.key} role="treeitem" data-key={item.key} data-route={item.select ?? item.key}
          aria-level={item.level}
          aria-selected={isSelected(item)} aria-expanded={item.expandable ? item.expanded : undefined}
          data-status={item.status} tabIndex={item.key === active ? 0 : -1}
          class={`tree-item level-${item.level}${isSelected(item) ? " selected" : ""}`}
          onClick={() => { setFocus(item.key); props.onSelect(item.route); }}>
          {item.expandable ? (
            <span class="twisty" aria-hidden="true"
              onClick={(e) => { e.stopPropagation(); toggle(item.expandable!, !item.expanded); }}>
              {item.expanded ? "▾" : "▸"}
            </span>
          ) : <span class="twisty" aria-hidden="true" />}
          {item.icon}
          <span class="label">{item.label}</span>
        </li>
      ))}
    </ul>
  );
}
