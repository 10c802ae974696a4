// The datacenter's Permissions area (#/access/<page>), as PVE's: users, groups, roles,
// ACL, API tokens, pools, realms, two-factor. Each page polls what it shows.
import type { Route } from "../../route";
import type { Resource } from "../../types";
import { AclView } from "./Acl";
import { GroupsView } from "./Groups";
import { PoolView, PoolsView } from "./Pools";
import { RealmsView } from "./Realms";
import { RolesView } from "./Roles";
import { TfaView } from "./Tfa";
import { TokensView } from "./Tokens";
import { UsersView } from "./Users";
import "./access.css";

export function AccessPage(props: { route: Extract<Route, { kind: "access" }>; resources: Resource[];
                                    go: (r: Route) => void }) {
  const { view, id } = props.route;
  switch (view) {
    case "groups": return <GroupsView />;
    case "roles": return <RolesView />;
    case "acl": return <AclView resources={props.resources} />;
    case "tokens": return <TokensView />;
    case "pools": return id ? <PoolView key={id} poolid={id} resources={props.resources} />
      : <PoolsView onOpen={(poolid) => props.go({ kind: "access", view: "pools", id: poolid })} />;
    case "realms": return <RealmsView />;
    case "tfa": return <TfaView />;
    default: return <UsersView />;
  }
}
