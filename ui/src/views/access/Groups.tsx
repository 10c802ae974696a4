// Groups (/access/groups): list with members, create, edit the comment, delete.
// Writes need Group.Allocate on /access/groups.
import { useState } from "preact/hooks";
import { post, request } from "../../api";
import { usePoll } from "../../poll";
import { t } from "../../strings";
import { Dialog } from "../Confirm";
import { AccessTabs, Field, Message, enc, useAction, usePerms } from "./common";

interface Group { groupid: string; users?: string; comment?: string }

export function GroupsView() {
  const groups = usePoll<Group[]>("/access/groups", 5000);
  const can = usePerms();
  const write = can("/access/groups", "Group.Allocate");
  const action = useAction();
  const [editing, setEditing] = useState<{ existing: boolean; groupid: string; comment: string } | null>(null);
  const [deleting, setDeleting] = useState<string | null>(null);

  const save = async () => {
    if (!editing) return;
    const { groupid, comment } = editing;
    const ok = editing.existing
      ? await action.run(() => request("PUT", `/access/groups/${enc(groupid)}`, { comment }),
                         () => t("access.group.updated", { groupid }))
      : await action.run(() => post("/access/groups", { groupid, comment: comment || undefined }),
                         () => t("access.group.created", { groupid }));
    if (ok) { setEditing(null); groups.refresh(); }
  };
  const remove = async () => {
    const groupid = deleting;
    setDeleting(null);
    if (groupid && await action.run(() => request("DELETE", `/access/groups/${enc(groupid)}`),
                                    () => t("access.group.deleted", { groupid }))) groups.refresh();
  };

  return (
    <div class="view" id="view-access-groups">
      <AccessTabs current="groups" />
      {!editing && <Message outcome={action.message} />}
      {groups.error && <p class="error">{t("common.error", { message: groups.error.message })}</p>}
      <div class="toolbar">
        {write && <button id="group-add" onClick={() => {
          action.reset(); setEditing({ existing: false, groupid: "", comment: "" });
        }}>{t("access.add")}</button>}
      </div>
      <div class="table-wrap">
        <table id="group-table">
          <thead><tr><th>{t("access.groupid")}</th><th>{t("access.members")}</th>
            <th>{t("access.comment")}</th><th /></tr></thead>
          <tbody>
            {(groups.data ?? []).map((g) => (
              <tr key={g.groupid} data-groupid={g.groupid}>
                <td>{g.groupid}</td><td>{g.users ?? ""}</td><td>{g.comment ?? ""}</td>
                <td class="row-actions">{write && <>
                  <button class="group-edit" onClick={() => {
                    action.reset(); setEditing({ existing: true, groupid: g.groupid, comment: g.comment ?? "" });
                  }}>{t("access.edit")}</button>
                  <button class="group-delete" onClick={() => setDeleting(g.groupid)}>{t("access.delete")}</button>
                </>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {editing && (
        <Dialog title={editing.existing ? t("access.group.edit", { groupid: editing.groupid }) : t("access.group.add")}
          okLabel={editing.existing ? t("access.save") : t("access.add")} okDisabled={action.busy}
          onOk={save} onCancel={() => setEditing(null)}>
          <Message outcome={action.message?.error ? action.message : null} id="dialog-message" />
          {!editing.existing && (
            <Field label={t("access.groupid")} param="groupid" errors={action.errors}>
              <input id="group-id" value={editing.groupid} required
                onInput={(e) => setEditing({ ...editing, groupid: e.currentTarget.value })} />
            </Field>
          )}
          <Field label={t("access.comment")} param="comment" errors={action.errors}>
            <input id="group-comment" value={editing.comment}
              onInput={(e) => setEditing({ ...editing, comment: e.currentTarget.value })} />
          </Field>
        </Dialog>
      )}
      {deleting && (
        <Dialog title={t("access.delete")} danger onOk={remove} onCancel={() => setDeleting(null)}>
          <p>{t("access.group.confirm.delete", { groupid: deleting })}</p>
        </Dialog>
      )}
    </div>
  );
}
