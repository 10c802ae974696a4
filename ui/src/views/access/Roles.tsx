// Roles (/access/roles): built-in roles are read-only; custom roles are created and
// edited with a checkbox per privilege (the privileges are those the built-in roles
// name: Administrator holds every one). Writes need Sys.Modify on /access.
import { useState } from "preact/hooks";
import { post, request } from "../../api";
import { usePoll } from "../../poll";
import { t } from "../../strings";
import { Dialog } from "../Confirm";
import { AccessTabs, Field, Message, enc, useAction, usePerms } from "./common";

export interface Role { roleid: string; privs: string; special?: number }

export function RolesView() {
  const roles = usePoll<Role[]>("/access/roles", 10000);
  const can = usePerms();
  const write = can("/access", "Sys.Modify");
  const action = useAction();
  const [editing, setEditing] = useState<{ existing: boolean; roleid: string; privs: Set<string> } | null>(null);
  const [deleting, setDeleting] = useState<string | null>(null);
  const all = [...new Set((roles.data ?? []).flatMap((r) => r.privs.split(",").filter(Boolean)))].sort();

  const save = async () => {
    if (!editing) return;
    const { roleid } = editing;
    const privs = [...editing.privs].sort().join(",");
    const ok = editing.existing
      ? await action.run(() => request("PUT", `/access/roles/${enc(roleid)}`, { privs }),
                         () => t("access.role.updated", { roleid }))
      : await action.run(() => post("/access/roles", { roleid, privs }),
                         () => t("access.role.created", { roleid }));
    if (ok) { setEditing(null); roles.refresh(); }
  };
  const remove = async () => {
    const roleid = deleting;
    setDeleting(null);
    if (roleid && await action.run(() => request("DELETE", `/access/roles/${enc(roleid)}`),
                                   () => t("access.role.deleted", { roleid }))) roles.refresh();
  };
  const toggle = (p: string) => setEditing((x) => {
    if (!x) return x;
    const next = new Set(x.privs);
    if (next.has(p)) next.delete(p); else next.add(p);
    return { ...x, privs: next };
  });

  return (
    <div class="view" id="view-access-roles">
      <AccessTabs current="roles" />
      {!editing && <Message outcome={action.message} />}
      <div class="toolbar">
        {write && <button id="role-add" onClick={() => {
          action.reset(); setEditing({ existing: false, roleid: "", privs: new Set() });
        }}>{t("access.add")}</button>}
      </div>
      <div class="table-wrap">
        <table id="role-table">
          <thead><tr><th>{t("access.roleid")}</th><th>{t("access.builtin")}</th>
            <th>{t("access.privileges")}</th><th /></tr></thead>
          <tbody>
            {(roles.data ?? []).map((r) => (
              <tr key={r.roleid} data-roleid={r.roleid}>
                <td>{r.roleid}</td><td>{r.special ? "✓" : ""}</td>
                <td class="wrap">{r.privs.split(",").join(", ")}</td>
                <td class="row-actions">{write && !r.special && <>
                  <button class="role-edit" onClick={() => {
                    action.reset();
                    setEditing({ existing: true, roleid: r.roleid, privs: new Set(r.privs.split(",").filter(Boolean)) });
                  }}>{t("access.edit")}</button>
                  <button class="role-delete" onClick={() => setDeleting(r.roleid)}>{t("access.delete")}</button>
                </>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {editing && (
        <Dialog title={editing.existing ? t("access.role.edit", { roleid: editing.roleid }) : t("access.role.add")}
          okLabel={editing.existing ? t("access.save") : t("access.add")} okDisabled={action.busy}
          onOk={save} onCancel={() => setEditing(null)}>
          <Message outcome={action.message?.error ? action.message : null} id="dialog-message" />
          {!editing.existing && (
            <Field label={t("access.roleid")} param="roleid" errors={action.errors}>
              <input id="role-id" value={editing.roleid} required
                onInput={(e) => setEditing({ ...editing, roleid: e.currentTarget.value })} />
            </Field>
          )}
          <fieldset class="checks privs" data-param="privs">
            <legend>{t("access.privileges")}</legend>
            {all.map((p) => (
              <label key={p} class="check">
                <input type="checkbox" name="priv" value={p} checked={editing.privs.has(p)} onChange={() => toggle(p)} />
                {p}
              </label>
            ))}
            {action.errors.privs && <span class="field-error error" id="error-privs">{action.errors.privs}</span>}
          </fieldset>
        </Dialog>
      )}
      {deleting && (
        <Dialog title={t("access.delete")} danger onOk={remove} onCancel={() => setDeleting(null)}>
          <p>{t("access.role.confirm.delete", { roleid: deleting })}</p>
        </Dialog>
      )}
    </div>
  );
}
