// Where the user is, in the URL's hash (#/dc, #/node/n1, #/vm/100): back/forward work
// and a view can be bookmarked. A VM is addressed by its id alone: it may move nodes.
import { useEffect, useState } from "preact/hooks";

export type Route =
  | { kind: "dc" }
  | { kind: "node"; node: string }
  | { kind: "vm"; vmid: number };

export function parseRoute(hash: string): Route {
  const parts = hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "node" && parts[1]) return { kind: "node", node: parts[1] };
  if (parts[0] === "vm" && /^\d+$/.test(parts[1] ?? "")) return { kind: "vm", vmid: Number(parts[1]) };
  return { kind: "dc" };
}

export function href(r: Route): string {
  switch (r.kind) {
    case "dc": return "#/dc";
    case "node": return `#/node/${encodeURIComponent(r.node)}`;
    case "vm": return `#/vm/${r.vmid}`;
  }
}

export function routeKey(r: Route): string {
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
