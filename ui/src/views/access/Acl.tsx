// The ACL (GET/PUT /access/acl): the entries on paths the caller may delegate, add a
// user, group or API token permission (path, role, propagate), remove one. Add shows
// where the caller holds Permissions.Modify somewhere; the API checks the path.
import { useState } from "preact/hooks";
import { request } from "../../api";
import { usePoll } from "../../poll";
import { t } from "../../strings";
import type { Resource } from "../../types";
import { Dialog } from "../Confirm";
import { AccessTabs, Field, Message, useAction, useAnywhere } from "./common";
import type { Role } from "./Roles";
import type { UserEntry } from "./Users";

interface AclEntry { path: string; type: "user" | "group" | "token"; ugid: string; roleid: string; propagate: number }
type Kind = AclEntry["type"];
const PARAM: Record<Kind, string> = { user: "users", group: "groups", token: "tokens" };

export function AclView(props: { resources: Resource[] }) {
  const acl = usePoll<AclEntry[]>("/access/acl", 5000);
  const users = usePoll<UserEntry[]>("/access/users", 10000, { full: 1 });
  const groups = usePoll<{ groupid: string }[]>("/access/groups", 10000);
  const roles = usePoll<Role[]>("/access/roles", 30000);
  const anywhere = useAnywhere();
  const action = useAction();
  const [adding, setAdding] = useState<{ kind: Kind; path: string; ugid: string; role: string; propagate: boolean } | null>(null);
  const [removing, setRemoving] = useState<AclEntry | null>(null);

  const choices: Record<Kind, string[]> = {
    user: (users.data ?? []).map((u) => u.userid),
    group: (groups.data ?? []).map((g) => g.groupid),
    token: (users.data ?? []).flatMap((u) => (u.tokens ?? []).map((tk) => `${u.userid}!${tk.tokenid}`)),
  };
  const paths = ["/", "/access", "/access/groups", "/nodes", "/pool", "/storage", "/vms",
    ...props.resources.map((r) => r.type === "qemu" ? `/vms/${r.vmid}`
      : r.type === "node" ? `/nodes/${r.node}` : r.type === "storage" ? `/storage/${r.storage}`
      : r.type === "pool" ? `/pool/${r.pool}` : "").filter(Boolean)];

  const open = (kind: Kind) => {
    action.reset();
    setAdding({ kind, path: "/", ugid: choices[kind][0] ?? "", role: "PVEAuditor", propagate: true });
  };
  const add = async () => {
    if (!adding) return;
    const a = adding;
    const ok = await action.run(() => request("PUT", "/access/acl", {
      path: a.path, roles: a.role, propagate: a.propagate, [PARAM[a.kind]]: a.ugid,
    }), () => t("access.acl.added", { role: a.role, ugid: a.ugid, path: a.path }));
    if (ok) { setAdding(null); acl.refresh(); }
  };
  const remove = async () => {
    const e = removing;
    setRemoving(null);
    if (e && await action.run(() => request("PUT", "/access/acl", {
      path: e.path, roles: e.roleid, delete: 1, [PARAM[e.type]]: e.ugid,
    }), () => t("access.acl.removed", { role: e.roleid, ugid: e.ugid, path: e.path }))) acl.refresh();
  };
  const write = anywhere("Permissions.Modify");
  const err = action.errors;

  return (
    <div class="view" id="view-access-acl">
      <AccessTabs current="acl" />
      {!adding && <Message outcome={action.message} />}
      {acl.error && <p class="error">{t("common.error", { message: acl.error.message })}</p>}
      <div class="toolbar">
        {write && (["user", "group", "token"] as Kind[]).map((k) => (
          <button key={k} id={`acl-add-${k}`} onClick={() => open(k)}>{t(`access.acl.add.${k}` as "access.acl.add.user")}</button>
        ))}
      </div>
      <div class="table-wrap">
        <table id="acl-table">
          <thead><tr><th>{t("access.path")}</th><th>{t("access.acl.type")}</th>
            <th>{t("access.acl.ugid")}</th><th>{t("access.role")}</th><th>{t("access.propagate")}</th><th /></tr></thead>
          <tbody>
            {(acl.data ?? []).map((e) => (
              <tr key={`${e.path} ${e.type} ${e.ugid} ${e.roleid}`} data-path={e.path} data-ugid={e.ugid} data-role={e.roleid}>
                <td>{e.path}</td><td>{e.type}</td><td>{e.ugid}</td><td>{e.roleid}</td>
                <td>{e.propagate ? "✓" : ""}</td>
                <td class="row-actions">
                  <button class="acl-remove" onClick={() => setRemoving(e)}>{t("access.remove")}</button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {adding && (
        <Dialog title={t(`access.acl.add.${adding.kind}` as "access.acl.add.user")} okLabel={t("access.add")}
          okDisabled={action.busy || !adding.ugid} onOk={add} onCancel={() => setAdding(null)}>
          <Message outcome={action.message?.error ? action.message : null} id="dialog-message" />
          <Field label={t("access.path")} param="path" errors={err}>
            <input id="acl-path" list="acl-paths" value={adding.path}
              onInput={(e) => setAdding({ ...adding, path: e.currentTarget.value })} />
            <datalist id="acl-paths">{paths.map((p) => <option key={p} value={p} />)}</datalist>
          </Field>
          <Field label={t(`access.acl.${adding.kind}` as "access.acl.user")} param={PARAM[adding.kind]} errors={err}>
            <select id="acl-ugid" value={adding.ugid} onChange={(e) => setAdding({ ...adding, ugid: e.currentTarget.value })}>
              {choices[adding.kind].map((x) => <option key={x} value={x}>{x}</option>)}
            </select>
          </Field>
          <Field label={t("access.role")} param="roles" errors={err}>
            <select id="acl-role" value={adding.role} onChange={(e) => setAdding({ ...adding, role: e.currentTarget.value })}>
              {(roles.data ?? []).map((r) => <option key={r.roleid} value={r.roleid}>{r.roleid}</option>)}
            </select>
          </Field>
          <Field label={t("access.propagate")} param="propagate" errors={err} check>
            <input id="acl-propagate" type="checkbox" checked={adding.propagate}
              onChange={(e) => setAdding({ ...adding, propagate: e.currentTarget.checked })} />
          </Field>
        </Dialog>
      )}
      {removing && (
        <Dialog title={t("access.remove")} danger onOk={remove} onCancel={() => setRemoving(null)}>
          <p>{t("access.acl.confirm.remove", { role: removing.roleid, ugid: removing.ugid, path: removing.path })}</p>
        </Dialog>
      )}
    </div>
  );
}
