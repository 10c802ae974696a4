// Datacenter → Replicated volumes: every volume of every node (GET /nodes/{node}/volumes,
// each node asked about every 2 s), its two copies (role, disk state, connection, out of
// sync, open by a guest), the resync or verify in progress, the last split brain with its
// survivor and victim; and the guided resolution of a split brain: what happened in
// words, what each copy holds, the administrator's choice of the copy that keeps its
// data, a confirmation that names what will be discarded, then the API's calls of DRBD's
// recovery by hand (volumes.ts: resolutionPlan), each task followed to its end.
import { useEffect, useState } from "preact/hooks";
import { ApiError, get, post } from "../../api";
import * as fmt from "../../format";
import { t } from "../../strings";
import type { Resource } from "../../types";
import { Dialog } from "../Confirm";
import { DcTabs } from "../DcViews";
import { usePerms } from "../access/perms";
import { OutcomeMessage, TaskArea, TaskViewer, upidNode, useOutcome } from "../forms";
import {
  isConnected, mergeVolumes, needsResolution, resolutionPlan, type Copy, type Step, type Volume, type VolumeStatus,
} from "./volumes";

const POLL_MS = 2000;
const kib = (n: number | undefined) => (n === undefined ? "—" : fmt.bytes(n * 1024));

/** Every node's volume list, polled: node -> list, and node -> why it did not answer. */
export function useNodeVolumes(nodes: string[]) {
  const [lists, setLists] = useState<Record<string, VolumeStatus[]>>({});
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [loaded, setLoaded] = useState(false);
  const key = nodes.join(",");
  useEffect(() => {
    if (!nodes.length) return;          // the tree has not loaded yet
    let alive = true;
    let timer: number | undefined;
    const run = async () => {
      if (document.hidden) { timer = window.setTimeout(run, POLL_MS); return; }
      const answers = await Promise.allSettled(
        nodes.map((n) => get<VolumeStatus[]>(`/nodes/${encodeURIComponent(n)}/volumes`)));
      if (!alive) return;
      const l: Record<string, VolumeStatus[]> = {};
      const e: Record<string, string> = {};
      answers.forEach((a, i) => {
        if (a.status === "fulfilled") l[nodes[i]] = a.value ?? [];
        else e[nodes[i]] = (a.reason as Error).message;
      });
      setLists(l);
      setErrors(e);
      setLoaded(true);
      timer = window.setTimeout(run, POLL_MS);
    };
    run();
    return () => { alive = false; window.clearTimeout(timer); };
  }, [key]);
  return { lists, errors, loaded };
}

export function Volumes(props: { resources: Resource[] }) {
  const nodeRes = props.resources.filter((r) => r.type === "node" && r.node);
  // an offline node is not asked (its proxied request would only time out): its copies
  // show as its peer reports them
  const online = nodeRes.filter((r) => r.status === "online").map((r) => r.node as string).sort();
  const offline = nodeRes.filter((r) => r.status !== "online").map((r) => r.node as string).sort();
  const polled = useNodeVolumes(online);
  const lists = polled.lists;
  const errors: Record<string, string> = { ...polled.errors };
  for (const n of offline) errors[n] = t("status.offline");
  const loaded = polled.loaded;
  const volumes = mergeVolumes(lists);
  const can = usePerms();
  return (
    <div class="view" id="view-dc-volumes">
      <DcTabs current="volumes" />
      {Object.entries(errors).map(([node, message]) => (
        <p key={node} class="error" data-node={node}>{t("vol.unreachable", { node, message })}</p>
      ))}
      {loaded && !volumes.length && <p id="vol-none">{t("vol.none")}</p>}
      {volumes.map((v) => (
        <VolumeCard key={v.name} volume={v} resources={props.resources}
          write={can("/", "Volume.Modify")} />
      ))}
    </div>
  );
}

function VolumeCard(props: { volume: Volume; resources: Resource[]; write: boolean }) {
  const v = props.volume;
  const guest = v.vmid ? props.resources.find((r) => r.type === "qemu" && r.vmid === v.vmid) : undefined;
  const sb = v.splitBrain;
  // once a resolution has started, its panel stays (with its steps and tasks) after the
  // split brain is gone, until closed
  const [resolving, setResolving] = useState(false);
  return (
    <section class="card volume" id={`volume-${v.name}`} data-volume={v.name}
      data-splitbrain={needsResolution(v) ? "detected" : sb?.state ?? "none"}>
      <h2>{v.name}</h2>
      <dl>
        <dt>{t("vol.size")}</dt><dd>{fmt.bytes(v.size)}</dd>
        {v.storage && <><dt>{t("vol.storage")}</dt><dd>{v.storage}</dd></>}
        {v.vmid ? <><dt>{t("vol.vm")}</dt><dd><a href={`#/vm/${v.vmid}`}>{v.vmid}{guest?.name ? ` (${guest.name})` : ""}</a>
          {guest ? ` — ${guest.status} on ${guest.node}` : ""}</dd></> : null}
      </dl>
      <CopiesTable volume={v} />
      <SyncLine volume={v} />
      {v.verify && <p class="vol-verify" data-found={v.verify.result.found_blocks}>
        {t("vol.verify.last", { node: v.verify.node, time: fmt.time(v.verify.result.time),
          kib: kib(v.verify.result.verified_kib), found: v.verify.result.found_blocks })}
        {v.verify.result.stopped ? t("vol.verify.stopped") : v.verify.result.lost ? t("vol.verify.lost") : ""}
        {v.verify.result.found_blocks ? t("vol.verify.differ") : ""}</p>}
      {props.write && !needsResolution(v) && !resolving && <Controls volume={v} />}
      <p class="vol-splitbrain" data-state={sb?.state ?? "none"}>
        <strong>{t("vol.splitbrain.last")}:</strong>{" "}
        {!sb ? t("vol.splitbrain.none")
          : sb.state === "detected" ? t("vol.splitbrain.detected", { time: fmt.time(sb.time), policy: sb.policy })
          : t("vol.splitbrain.resolved", { time: fmt.time(sb.time), resolved: fmt.time(sb.resolved_time),
              policy: sb.policy, survivor: sb.survivor ?? "?", victim: sb.victim ?? "?" })}
      </p>
      {(needsResolution(v) || resolving) && <SplitBrain volume={v} resources={props.resources}
        write={props.write} onStart={() => setResolving(true)} onClose={() => setResolving(false)} />}
    </section>
  );
}

/** The volume's two copies: node, role, disk state, connection, out of sync, open count. */
export function CopiesTable(props: { volume: Volume }) {
  const v = props.volume;
  return (
    <div class="table-wrap">
      <table class="vol-copies">
        <thead><tr><th>{t("vol.node")}</th><th>{t("vol.role")}</th><th>{t("vol.disk")}</th>
          <th>{t("vol.cstate")}</th><th>{t("vol.oos")}</th><th>{t("vol.inuse")}</th></tr></thead>
        <tbody>
          {v.copies.map((c) => (
            <tr key={c.node} data-node={c.node} data-role={c.role} data-disk={c.disk} data-cstate={c.cstate ?? ""}>
              <td>{c.node}{!c.own && <span class="notice"> ({t("vol.seenfrom", {
                node: v.copies.find((o) => o.own)?.node ?? "?" })})</span>}</td>
              <td>{c.role}</td>
              <td class={c.disk === "UpToDate" ? "ok" : "bad"}>{c.disk}</td>
              <td class={c.cstate && !isConnected(c.cstate) ? "bad" : ""}>
                {c.cstate ?? "—"}{c.suspended ? ` — ${t("vol.suspended")}` : ""}</td>
              <td>{c.own ? kib(c.outOfSyncKib) : "—"}</td>
              <td>{c.own ? c.openCount ?? 0 : "—"}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

export function SyncLine(props: { volume: Volume }) {
  const s = props.volume.sync;
  if (!s) {
    const all = props.volume.copies.every((c) => c.own && c.cstate === "Connected" && c.disk === "UpToDate");
    return all ? <p class="ok vol-sync" data-state="insync">{t("vol.insync")}</p> : null;
  }
  const p = s.progress;
  const text = p.verify
    ? t("vol.verify", { from: s.from, done: p.done.toFixed(1), found: p.found })
    : t("vol.sync", { from: s.from, to: s.to, done: p.done.toFixed(1), left: kib(p.left_kib),
                      speed: kib(p.speed_kib) })
      + (p.eta_s !== null && !s.paused ? t("vol.sync.eta", { eta: p.eta_s }) : "")
      + (s.paused ? t("vol.sync.paused") : "");
  return (
    <p class="vol-sync" data-state={p.verify ? "verify" : "resync"}>
      <progress max={100} value={p.done} aria-label={text} /> {text}
    </p>
  );
}

/** Verify, pause/resume a resync, a copy's full resync: each a task, followed below. */
function Controls(props: { volume: Volume }) {
  const v = props.volume;
  const outcome = useOutcome();
  const [invalidate, setInvalidate] = useState<{ node: string; peer: string } | null>(null);
  const connected = v.copies.filter((c) => c.own && isConnected(c.cstate));
  const both = connected.length === 2;
  // the verify runs from the Primary's side when there is one (any side works)
  const from = (connected.find((c) => c.role === "Primary") ?? connected[0])?.node;
  const run = (node: string, action: string, label: string) =>
    outcome.send("POST", `/nodes/${encodeURIComponent(node)}/volumes/${encodeURIComponent(v.name)}/${action}`,
                 {}, t("vol.started", { action: label, node }));
  const verifying = v.sync?.progress.verify;
  return (
    <div class="vol-controls">
      <div class="toolbar" role="toolbar">
        {both && !v.sync && from && <button class="vol-verify-start" disabled={outcome.busy}
          onClick={() => run(from, "verify", t("vol.action.verify"))}>{t("vol.action.verify")}</button>}
        {verifying && <button class="vol-verify-stop" disabled={outcome.busy}
          onClick={() => run(v.sync!.from, "verify-stop", t("vol.action.verifystop"))}>{t("vol.action.verifystop")}</button>}
        {v.sync && !verifying && (v.sync.paused
          ? <button class="vol-resume" disabled={outcome.busy}
              onClick={() => run(v.sync!.from, "resume-sync", t("vol.action.resume"))}>{t("vol.action.resume")}</button>
          : <button class="vol-pause" disabled={outcome.busy}
              onClick={() => run(v.sync!.from, "pause-sync", t("vol.action.pause"))}>{t("vol.action.pause")}</button>)}
        {both && !v.sync && connected.map((c) => {
          const peer = connected.find((o) => o.node !== c.node)!;
          return peer.disk === "UpToDate" && <button key={c.node} class="vol-invalidate" data-node={c.node}
            disabled={outcome.busy} onClick={() => { outcome.clear(); setInvalidate({ node: c.node, peer: peer.node }); }}>
            {t("vol.action.invalidate", { node: c.node })}</button>;
        })}
      </div>
      <OutcomeMessage outcome={outcome} id={`vol-message-${v.name}`} />
      <TaskArea outcome={outcome} />
      {invalidate && (
        <Dialog title={t("vol.action.invalidate", { node: invalidate.node })} danger
          onOk={() => { const i = invalidate; setInvalidate(null);
                        run(i.node, "invalidate", t("vol.action.invalidate", { node: i.node })); }}
          onCancel={() => setInvalidate(null)}>
          <p>{t("vol.confirm.invalidate", { node: invalidate.node, peer: invalidate.peer, name: v.name })}</p>
        </Dialog>
      )}
    </div>
  );
}

type StepState = "pending" | "running" | "ok" | "failed";

/** The guided resolution of one volume's split brain. */
function SplitBrain(props: { volume: Volume; resources: Resource[]; write: boolean;
                             onStart: () => void; onClose: () => void }) {
  // once the resolution runs, the panel keeps the situation it was decided on (the live
  // state is in the card above it)
  const [frozen, setFrozen] = useState<Volume | null>(null);
  const v = frozen ?? props.volume;
  const sb = v.splitBrain!;
  const [survivor, setSurvivor] = useState<string | null>(null);
  const [confirming, setConfirming] = useState(false);
  const [run, setRun] = useState<{ steps: Step[]; states: StepState[]; upid: string | null;
                                   error: string | null; survivor: string; victim: string } | null>(null);
  const [a, b] = v.copies.map((c) => c.node);
  const plan = survivor ? resolutionPlan(v, survivor) : null;
  const victim = survivor ? v.copies.find((c) => c.node !== survivor)?.node ?? "" : "";
  const written = kib(v.copies.find((c) => c.node === victim)?.outOfSyncKib);
  const runningHere = (c: Copy) => props.resources.find((r) => r.type === "qemu" && r.vmid === v.vmid
    && r.node === c.node && r.status === "running");
  const stepText = (s: Step) => t(`sb.step.${s.key}`, { node: s.node });

  const resolve = async () => {
    setConfirming(false);
    if (!plan || !("steps" in plan) || !survivor) return;
    const steps = plan.steps;
    const states: StepState[] = steps.map(() => "pending");
    const state = { steps, states, upid: null as string | null, error: null as string | null, survivor, victim };
    props.onStart();
    setFrozen(props.volume);
    setRun({ ...state });
    for (let i = 0; i < steps.length; i++) {
      const s = steps[i];
      states[i] = "running";
      setRun({ ...state, states: [...states] });
      try {
        const upid = await post<string>(
          `/nodes/${encodeURIComponent(s.node)}/volumes/${encodeURIComponent(v.name)}/${s.action}`, s.params);
        state.upid = upid;
        setRun({ ...state, states: [...states] });
        const exit = await taskEnd(upid);
        if (exit !== "OK") throw new Error(exit);
        states[i] = "ok";
      } catch (e) {
        states[i] = "failed";
        state.error = t("sb.failed", { step: stepText(s) }) + " "
          + t("common.error", { message: e instanceof ApiError || e instanceof Error ? e.message : String(e) });
        setRun({ ...state, states: [...states] });
        return;
      }
      setRun({ ...state, states: [...states] });
    }
  };

  return (
    <div class="splitbrain" id={`splitbrain-${v.name}`} role="region" aria-label={t("sb.title", { name: v.name })}>
      <h3 class="bad">{t("sb.title", { name: v.name })}</h3>
      <p id="sb-explain">{t("sb.explain", { a: a ?? "?", b: b ?? "?", name: v.name, time: fmt.time(sb.time),
                                              policy: sb.policy })}</p>
      <p>{sb.primaries?.length ? t("sb.primaries", { nodes: sb.primaries.join(", ") }) : t("sb.noprimary")}</p>
      <h4>{t("sb.copies")}</h4>
      <div class="table-wrap">
        <table class="sb-copies">
          <thead><tr><th>{t("vol.node")}</th><th>{t("vol.role")}</th><th>{t("vol.disk")}</th>
            <th>{t("sb.written")}</th><th>{t("vol.inuse")}</th><th>{t("sb.guest")}</th><th>{t("sb.current")}</th></tr></thead>
          <tbody>
            {v.copies.map((c) => (
              <tr key={c.node} data-node={c.node}>
                <td>{c.node}</td><td>{c.role}</td><td>{c.disk}</td>
                <td class="sb-written">{c.own ? kib(c.outOfSyncKib) : "—"}</td>
                <td>{c.own ? t("sb.open", { count: c.openCount ?? 0 }) : "—"}</td>
                <td>{runningHere(c) ? t("sb.guest.here", { vmid: v.vmid ?? "" }) : t("sb.guest.none")}</td>
                <td><code>{(c.gi ?? "").split(":")[0] || "—"}</code></td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {!run && props.write && (
        <fieldset class="sb-choice">
          <legend>{t("sb.choose")}</legend>
          {v.copies.map((c) => (
            <label key={c.node} class="check">
              <input type="radio" name={`sb-survivor-${v.name}`} id={`sb-keep-${c.node}`} value={c.node}
                checked={survivor === c.node} onChange={() => setSurvivor(c.node)} />
              {t("sb.keep", { node: c.node, other: v.copies.find((o) => o.node !== c.node)?.node ?? "?" })}
            </label>
          ))}
          {plan && "refused" in plan && (
            <p class="error" id="sb-refused">{plan.refused === "inuse"
              ? t("sb.inuse", { node: plan.node, count: plan.count })
              : t("sb.offline", { nodes: plan.nodes.join(", ") })}</p>
          )}
          <div class="toolbar">
            <button id="sb-resolve" class="danger" disabled={!plan || !("steps" in plan)}
              onClick={() => setConfirming(true)}>{t("sb.resolve")}</button>
          </div>
        </fieldset>
      )}
      {run && (
        <div class="sb-run" id="sb-run" data-state={run.error ? "failed"
          : run.states.every((s) => s === "ok") ? "ok" : "running"}>
          <ol>
            {run.steps.map((s, i) => (
              <li key={i} class={run.states[i] === "failed" ? "bad" : run.states[i] === "ok" ? "ok" : ""}
                data-state={run.states[i]}>{stepText(s)}: {t(`sb.step.${run.states[i]}`)}</li>
            ))}
          </ol>
          {run.error && <p class="error" role="alert" id="sb-error">{run.error}</p>}
          {!run.error && run.states.every((s) => s === "ok") && (
            <p class="notice" role="status" id="sb-done">{t("sb.started", { victim: run.victim, survivor: run.survivor })}</p>
          )}
          {run.upid && <TaskViewer key={run.upid} upid={run.upid} onClose={() => setRun({ ...run, upid: null })} />}
          {(run.error || run.states.every((s) => s === "ok")) && (
            <button id="sb-close" onClick={() => { setRun(null); setFrozen(null); props.onClose(); }}>
              {t("taskview.close")}</button>)}
        </div>
      )}
      {confirming && survivor && plan && "steps" in plan && (
        <Dialog title={t("sb.confirm.title", { victim, name: v.name })} danger
          okLabel={t("sb.confirm.ok", { victim })} onOk={resolve} onCancel={() => setConfirming(false)}>
          <p id="sb-confirm-text">{t("sb.confirm.text", { survivor, victim, name: v.name, written })}</p>
          <p>{t("sb.confirm.steps")}</p>
          <ol>{plan.steps.map((s, i) => <li key={i}>{stepText(s)}</li>)}</ol>
        </Dialog>
      )}
    </div>
  );
}

/** Wait for a task to stop; its exit status. */
async function taskEnd(upid: string): Promise<string> {
  const base = `/nodes/${encodeURIComponent(upidNode(upid))}/tasks/${encodeURIComponent(upid)}/status`;
  for (;;) {
    const s = await get<{ status: string; exitstatus?: string }>(base);
    if (s.status === "stopped") return s.exitstatus ?? "unknown";
    await new Promise((r) => window.setTimeout(r, 500));
  }
}
