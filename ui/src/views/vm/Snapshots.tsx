// The VM's Snapshots tab: the snapshot tree (GET .../snapshot: each names its parent;
// "current" is where the VM is now), take one (with the RAM when the VM runs), roll back
// and delete after a confirmation, edit a description. Each change is a task, followed
// in the task viewer.
import { useState } from "preact/hooks";
import { usePoll } from "../../poll";
import { t } from "../../strings";
import * as fmt from "../../format";
import { Dialog } from "../Confirm";
import { Field, OtherErrors, OutcomeMessage, TaskArea, useOutcome } from "../forms";

interface Snapshot { name: string; parent?: string; snaptime?: number; vmstate?: number; description?: string; running?: number }

type Editing = { kind: "take" } | { kind: "rollback"; name: string } | { kind: "delete"; name: string }
  | { kind: "describe"; name: string };

/** The snapshots depth-first from the roots, each with its depth in the tree. */
export function snapshotTree(list: Snapshot[]): { snap: Snapshot; depth: number }[] {
  const names = new Set(list.map((s) => s.name));
  const children = (parent: string | undefined) => list
    .filter((s) => (s.parent && names.has(s.parent) ? s.parent : undefined) === parent)
    .sort((a, b) => (a.name === "current" ? 1 : b.name === "current" ? -1 : (a.snaptime ?? 0) - (b.snaptime ?? 0)));
  const out: { snap: Snapshot; depth: number }[] = [];
  const walk = (parent: string | undefined, depth: number) => {
    for (const s of children(parent)) {
      out.push({ snap: s, depth });
      walk(s.name, depth + 1);
    }
  };
  walk(undefined, 0);
  return out;
}

export function Snapshots(props: { base: string; running: boolean }) {
  const list = usePoll<Snapshot[]>(`${props.base}/snapshot`, 3000);
  const outcome = useOutcome(() => list.refresh());
  const [editing, setEditing] = useState<Editing | null>(null);
  const [name, setName] = useState("");
  const [vmstate, setVmstate] = useState(false);
  const [description, setDescription] = useState("");
  const snaps = list.data ?? [];
  const open = (e: Editing) => {
    outcome.clear();
    if (e.kind === "take") { setName(""); setVmstate(props.running); setDescription(""); }
    if (e.kind === "describe") setDescription(snaps.find((s) => s.name === e.name)?.description ?? "");
    setEditing(e);
  };
  const path = (snap: string) => `${props.base}/snapshot/${encodeURIComponent(snap)}`;
  const save = async () => {
    if (!editing) return;
    let ok = false;
    if (editing.kind === "take") {
      ok = await outcome.send("POST", `${props.base}/snapshot`, {
        snapname: name, vmstate: props.running ? vmstate : undefined,
        description: description || undefined });
    } else if (editing.kind === "rollback") {
      ok = await outcome.send("POST", `${path(editing.name)}/rollback`);
    } else if (editing.kind === "delete") {
      ok = await outcome.send("DELETE", path(editing.name));
    } else {
      ok = await outcome.send("PUT", `${path(editing.name)}/config`, { description },
        t("snap.described", { name: editing.name }));
    }
    if (ok) setEditing(null);
  };
  const errors = outcome.errors;
  return (
    <section class="card" id="vm-snapshots" aria-label={t("vm.tab.snapshots")}>
      <div class="toolbar" role="toolbar">
        <button id="snap-take" onClick={() => open({ kind: "take" })}>{t("snap.take")}</button>
      </div>
      <OutcomeMessage outcome={outcome} id="snap-message" />
      {!editing && <OtherErrors errors={errors} shown={[]} />}
      {list.error && <p class="error">{t("common.error", { message: list.error.message })}</p>}
      <div class="table-wrap">
        <table id="snap-table">
          <thead><tr><th>{t("col.name")}</th><th>{t("snap.ram")}</th><th>{t("snap.date")}</th>
            <th>{t("opt.description")}</th><th /></tr></thead>
          <tbody>
            {snapshotTree(snaps).map(({ snap, depth }) => (
              <tr key={snap.name} data-snap={snap.name}>
                <td style={{ paddingLeft: `${0.5 + depth * 1.2}em` }}>
                  {snap.name === "current" ? t("snap.now") : snap.name}</td>
                <td>{snap.vmstate ? "✓" : ""}</td>
                <td>{snap.name === "current" ? "" : fmt.time(snap.snaptime)}</td>
                <td>{snap.description ?? ""}</td>
                <td class="row-actions">{snap.name !== "current" && <>
                  <button class="snap-rollback" onClick={() => open({ kind: "rollback", name: snap.name })}>{t("snap.rollback")}</button>
                  <button class="snap-describe" onClick={() => open({ kind: "describe", name: snap.name })}>{t("hw.edit")}</button>
                  <button class="snap-delete" onClick={() => open({ kind: "delete", name: snap.name })}>{t("snap.delete")}</button>
                </>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {editing?.kind === "take" && (
        <Dialog title={t("snap.take")} onOk={save} okDisabled={outcome.busy || !name} onCancel={() => setEditing(null)}>
          <Field label={t("col.name")} param="snapname" errors={errors}>
            <input id="snap-name" value={name} onInput={(e) => setName(e.currentTarget.value)} />
          </Field>
          {props.running && <label class="check"><input type="checkbox" id="snap-vmstate" checked={vmstate}
            onChange={(e) => setVmstate(e.currentTarget.checked)} />{t("snap.withram")}</label>}
          <Field label={t("opt.description")} param="description" errors={errors}>
            <textarea id="snap-description" rows={2} value={description}
              onInput={(e) => setDescription(e.currentTarget.value)} />
          </Field>
          <OtherErrors errors={errors} shown={["snapname", "description"]} />
        </Dialog>
      )}
      {editing?.kind === "describe" && (
        <Dialog title={t("snap.describe", { name: editing.name })} onOk={save} onCancel={() => setEditing(null)}>
          <Field label={t("opt.description")} param="description" errors={errors}>
            <textarea id="snap-edit-description" rows={3} value={description}
              onInput={(e) => setDescription(e.currentTarget.value)} />
          </Field>
          <OtherErrors errors={errors} shown={["description"]} />
        </Dialog>
      )}
      {(editing?.kind === "rollback" || editing?.kind === "delete") && (
        <Dialog title={t(editing.kind === "rollback" ? "snap.rollback" : "snap.delete")} danger
          onOk={save} onCancel={() => setEditing(null)}>
          <p>{t(editing.kind === "rollback" ? "snap.confirm.rollback" : "snap.confirm.delete",
            { name: editing.name })}</p>
          <OtherErrors errors={errors} shown={[]} />
        </Dialog>
      )}
      <TaskArea outcome={outcome} onDone={list.refresh} />
    </section>
  );
}
