// Resource pools (/pools): the list, create, delete (an empty pool), and a pool's page
// (#/access/pools/<id>: GET /pools?poolid=) with its members, where VMs and storages
// are added or removed (PUT /pools with vms/storage, and delete=1 to remove) and the
// comment edited. Writes need Pool.Allocate on the pool.
import { useState } from "preact/hooks";
import { get, post, request } from "../../api";
import { usePoll } from "../../poll";
import { href } from "../../route";
import { t } from "../../strings";
import type { Resource } from "../../types";
import { Dialog } from "../Confirm";
import { VmIcon } from "../Status";
import { AccessTabs, Field, Message, useAction, usePerms } from "./common";

interface Pool { poolid: string; comment?: string }
interface PoolDetail extends Pool { members: Resource[] }
interface StorageDef { storage: string }

export function PoolsView(props: { onOpen: (poolid: string) => void }) {
  const pools = usePoll<Pool[]>("/pools", 5000);
  const can = usePerms();
  const action = useAction();
  const [adding, setAdding] = useState<{ poolid: string; comment: string } | null>(null);
  const [deleting, setDeleting] = useState<string | null>(null);

  const add = async () => {
    if (!adding) return;
    const { poolid, comment } = adding;
    if (await action.run(() => post("/pools", { poolid, comment: comment || undefined }),
                         () => t("access.pool.created", { poolid }))) {
      setAdding(null);
      pools.refresh();
    }
  };
  const remove = async () => {
    const poolid = deleting;
    setDeleting(null);
    if (poolid && await action.run(() => request("DELETE", "/pools", { poolid }),
                                   () => t("access.pool.deleted", { poolid }))) pools.refresh();
  };

  return (
    <div class="view" id="view-access-pools">
      <AccessTabs current="pools" />
      {!adding && <Message outcome={action.message} />}
      {pools.error && <p class="error">{t("common.error", { message: pools.error.message })}</p>}
      <div class="toolbar">
        {can("/pool", "Pool.Allocate") && <button id="pool-add" onClick={() => {
          action.reset(); setAdding({ poolid: "", comment: "" });
        }}>{t("access.add")}</button>}
      </div>
      <div class="table-wrap">
        <table id="pool-table">
          <thead><tr><th>{t("access.poolid")}</th><th>{t("access.comment")}</th><th /></tr></thead>
          <tbody>
            {(pools.data ?? []).map((p) => (
              <tr key={p.poolid} data-poolid={p.poolid}>
                <td><a href={href({ kind: "access", view: "pools", id: p.poolid })}
                  onClick={(e) => { e.preventDefault(); props.onOpen(p.poolid); }}>{p.poolid}</a></td>
                <td>{p.comment ?? ""}</td>
                <td class="row-actions">{can(`/pool/${p.poolid}`, "Pool.Allocate") &&
                  <button class="pool-delete" onClick={() => setDeleting(p.poolid)}>{t("access.delete")}</button>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {adding && (
        <Dialog title={t("access.pool.add")} okLabel={t("access.add")} okDisabled={action.busy}
          onOk={add} onCancel={() => setAdding(null)}>
          <Message outcome={action.message?.error ? action.message : null} id="dialog-message" />
          <Field label={t("access.poolid")} param="poolid" errors={action.errors}>
            <input id="pool-id" value={adding.poolid} required
              onInput={(e) => setAdding({ ...adding, poolid: e.currentTarget.value })} />
          </Field>
          <Field label={t("access.comment")} param="comment" errors={action.errors}>
            <input id="pool-comment" value={adding.comment}
              onInput={(e) => setAdding({ ...adding, comment: e.currentTarget.value })} />
          </Field>
        </Dialog>
      )}
      {deleting && (
        <Dialog title={t("access.delete")} danger onOk={remove} onCancel={() => setDeleting(null)}>
          <p>{t("access.pool.confirm.delete", { poolid: deleting })}</p>
        </Dialog>
      )}
    </div>
  );
}

export function PoolView(props: { poolid: string; resources: Resource[] }) {
  const poolid = props.poolid;
  const pool = usePoll<PoolDetail[]>("/pools", 3000, { poolid });
  const can = usePerms();
  const write = can(`/pool/${poolid}`, "Pool.Allocate");
  const action = useAction();
  const [adding, setAdding] = useState<{ kind: "vms" | "storage"; choices: string[]; picked: Set<string>;
                                         allowMove: boolean } | null>(null);
  const [comment, setComment] = useState<string | null>(null);
  const detail = pool.data?.[0];
  const members = detail?.members ?? [];

  const openAdd = async (kind: "vms" | "storage") => {
    action.reset();
    const inPool = new Set(members.map((m) => kind === "vms" ? String(m.vmid) : m.storage));
    let choices: string[];
    if (kind === "vms") {
      choices = props.resources.filter((r) => r.type === "qemu").map((r) => String(r.vmid));
    } else {
      choices = (await get<StorageDef[]>("/storage").catch(() => [])).map((s) => s.storage);
    }
    setAdding({ kind, choices: choices.filter((c) => !inPool.has(c)), picked: new Set(), allowMove: false });
  };
  const add = async () => {
    if (!adding) return;
    const list = [...adding.picked].join(",");
    if (await action.run(() => request("PUT", "/pools", { poolid, [adding.kind]: list,
        "allow-move": adding.kind === "vms" && adding.allowMove ? 1 : undefined }),
        () => t("access.pool.membersadded", { poolid, list }))) {
      setAdding(null);
      pool.refresh();
    }
  };
  const removeMember = async (m: Resource) => {
    const param = m.type === "storage" ? { storage: m.storage } : { vms: m.vmid };
    if (await action.run(() => request("PUT", "/pools", { poolid, delete: 1, ...param }),
        () => t("access.pool.memberremoved", { poolid, member: m.type === "storage" ? m.storage ?? "" : String(m.vmid) })))
      pool.refresh();
  };
  const saveComment = async () => {
    const c = comment ?? "";
    if (await action.run(() => request("PUT", "/pools", { poolid, comment: c }),
                         () => t("access.pool.updated", { poolid }))) {
      setComment(null);
      pool.refresh();
    }
  };
  const label = (m: Resource) => m.type === "storage" ? m.storage
    : props.resources.find((r) => r.vmid === m.vmid)?.name ?? m.name;

  return (
    <div class="view" id="view-pool" data-poolid={poolid}>
      <AccessTabs current="pools" />
      <h1>{t("access.pool.title", { poolid })}</h1>
      {!adding && comment === null && <Message outcome={action.message} />}
      {pool.error && <p class="error">{t("common.error", { message: pool.error.message })}</p>}
      <p>{detail?.comment ?? ""}</p>
      <div class="toolbar">
        {write && <>
          <button id="pool-add-vms" onClick={() => openAdd("vms")}>{t("access.pool.addvms")}</button>
          <button id="pool-add-storage" onClick={() => openAdd("storage")}>{t("access.pool.addstorage")}</button>
          <button id="pool-edit" onClick={() => { action.reset(); setComment(detail?.comment ?? ""); }}>
            {t("access.edit")}</button>
        </>}
      </div>
      <div class="table-wrap">
        <table id="pool-members">
          <thead><tr><th>{t("col.type")}</th><th>{t("access.member")}</th><th>{t("col.name")}</th>
            <th>{t("col.node")}</th><th>{t("col.status")}</th><th /></tr></thead>
          <tbody>
            {members.length === 0 && <tr><td colSpan={6}>{pool.data ? t("access.pool.empty") : t("common.loading")}</td></tr>}
            {members.map((m) => (
              <tr key={m.id} data-member={m.type === "storage" ? `storage/${m.storage}` : `vm/${m.vmid}`}>
                <td>{m.type}</td>
                <td>{m.type === "qemu" ? <a href={href({ kind: "vm", vmid: m.vmid ?? 0 })}>
                  <VmIcon vm={m} /> {m.vmid}</a> : m.storage}</td>
                <td>{label(m) ?? ""}</td><td>{m.node ?? ""}</td><td>{m.status ?? ""}</td>
                <td class="row-actions">{write &&
                  <button class="pool-member-remove" onClick={() => removeMember(m)}>{t("access.remove")}</button>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {adding && (
        <Dialog title={adding.kind === "vms" ? t("access.pool.addvms") : t("access.pool.addstorage")}
          okLabel={t("access.add")} okDisabled={action.busy || adding.picked.size === 0}
          onOk={add} onCancel={() => setAdding(null)}>
          <Message outcome={action.message?.error ? action.message : null} id="dialog-message" />
          <fieldset class="checks" data-param={adding.kind}>
            <legend>{adding.kind === "vms" ? t("access.pool.vms") : t("access.pool.storages")}</legend>
            {adding.choices.length === 0 && <span>{t("common.none")}</span>}
            {adding.choices.map((c) => (
              <label key={c} class="check">
                <input type="checkbox" name="member" value={c} checked={adding.picked.has(c)} onChange={() => {
                  const next = new Set(adding.picked);
                  if (next.has(c)) next.delete(c); else next.add(c);
                  setAdding({ ...adding, picked: next });
                }} />
                {c}{adding.kind === "vms" ? ` (${props.resources.find((r) => String(r.vmid) === c)?.name ?? ""})` : ""}
              </label>
            ))}
            {action.errors[adding.kind] && <span class="field-error error" id={`error-${adding.kind}`}>
              {action.errors[adding.kind]}</span>}
          </fieldset>
          {adding.kind === "vms" && (
            <Field label={t("access.pool.allowmove")} param="allow-move" errors={action.errors} check>
              <input type="checkbox" id="pool-allow-move" checked={adding.allowMove}
                onChange={(e) => setAdding({ ...adding, allowMove: e.currentTarget.checked })} />
            </Field>
          )}
        </Dialog>
      )}
      {comment !== null && (
        <Dialog title={t("access.pool.edit", { poolid })} okLabel={t("access.save")} okDisabled={action.busy}
          onOk={saveComment} onCancel={() => setComment(null)}>
          <Message outcome={action.message?.error ? action.message : null} id="dialog-message" />
          <Field label={t("access.comment")} param="comment" errors={action.errors}>
            <input id="pool-edit-comment" value={comment} onInput={(e) => setComment(e.currentTarget.value)} />
          </Field>
        </Dialog>
      )}
    </div>
  );
}
