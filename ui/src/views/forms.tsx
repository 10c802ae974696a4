// What every editing page shares: a labelled field that shows the API's per-parameter
// error beside it, a hook that sends one change and keeps its outcome (the message, the
// per-field errors, the task it started), and the task viewer that follows that task's
// status and log until it ends.
import type { ComponentChildren } from "preact";
import { useEffect, useState } from "preact/hooks";
import { ApiError, get, request, type Params } from "../api";
import { t } from "../strings";

/** A form field: label, control, and the API's error for `param` when there is one. */
export function Field(props: { label: string; param: string; errors: Record<string, string>;
                               children: ComponentChildren }) {
  const error = props.errors[props.param];
  return (
    <label class="field" data-param={props.param}>
      {props.label}
      {props.children}
      {error && <span class="field-error error" id={`error-${props.param}`}>{error}</span>}
    </label>
  );
}

export interface Outcome {
  /** the last failure's message, or a notice of what was done */
  message: { text: string; error: boolean } | null;
  /** the last failure's per-parameter errors, shown next to their fields */
  errors: Record<string, string>;
  /** the task the last change started, shown in the task viewer */
  upid: string | null;
  busy: boolean;
  /** send a change; resolves true when the API accepted it */
  send: (method: string, path: string, params?: Params, done?: string) => Promise<boolean>;
  clear: () => void;
  /** show a message of the page's own (a refusal before anything is sent) */
  note: (text: string, error: boolean) => void;
  closeTask: () => void;
}

export function useOutcome(onChanged?: () => void): Outcome {
  const [message, setMessage] = useState<Outcome["message"]>(null);
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [upid, setUpid] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const send = async (method: string, path: string, params?: Params, done?: string) => {
    setBusy(true);
    setErrors({});
    setMessage(null);
    try {
      const answer = await request<unknown>(method, path, params);
      if (typeof answer === "string" && answer.startsWith("UPID:")) setUpid(answer);
      if (done) setMessage({ text: done, error: false });
      onChanged?.();
      return true;
    } catch (e) {
      const err = e instanceof ApiError ? e : new ApiError(0, String(e));
      setErrors(err.errors ?? {});
      setMessage({ text: t("common.error", { message: err.message }), error: true });
      return false;
    } finally {
      setBusy(false);
    }
  };
  return {
    message, errors, upid, busy, send,
    clear: () => { setErrors({}); setMessage(null); },
    note: (text: string, error: boolean) => setMessage({ text, error }),
    closeTask: () => setUpid(null),
  };
}

/** The outcome's message, if any. */
export function OutcomeMessage(props: { outcome: Outcome; id: string }) {
  const m = props.outcome.message;
  return m ? <p class={m.error ? "error" : "notice"} role="status" id={props.id}>{m.text}</p> : null;
}

interface TaskStatus { status: string; exitstatus?: string; type?: string; id?: string }
interface LogLine { n: number; t: string }

/** The node a UPID ran on: its second field (UPID:node:pid:...). */
export function upidNode(upid: string): string {
  return upid.split(":")[1] ?? "";
}

/** Follows one task: its status and its log, live, until it stops (then it stops asking). */
export function TaskViewer(props: { upid: string; onClose: () => void; onDone?: () => void }) {
  const base = `/nodes/${encodeURIComponent(upidNode(props.upid))}/tasks/${encodeURIComponent(props.upid)}`;
  const [status, setStatus] = useState<TaskStatus | null>(null);
  const [log, setLog] = useState<LogLine[]>([]);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    let alive = true;
    let timer: number | undefined;
    const run = async () => {
      let stopped = false;
      try {
        const [s, l] = await Promise.all([get<TaskStatus>(`${base}/status`),
          get<LogLine[]>(`${base}/log`, { limit: 1000 })]);
        if (!alive) return;
        stopped = s.status === "stopped";
        setStatus(s);
        setLog(l);
        setError(null);
        if (stopped) props.onDone?.();
      } catch (e) {
        if (alive) setError((e as Error).message);
      }
      if (alive && !stopped) timer = window.setTimeout(run, 700);
    };
    run();
    return () => { alive = false; window.clearTimeout(timer); };
  }, [base]);
  const exit = status?.exitstatus;
  // PVE's "WARNINGS: n": done, with warnings in the log (not a failure)
  const state = !status ? "loading" : status.status !== "stopped" ? "running"
    : exit === "OK" ? "ok" : exit?.startsWith("WARNINGS") ? "warning" : "failed";
  return (
    <section class="card task-viewer" id="task-viewer" data-upid={props.upid} data-state={state}
      aria-label={t("taskview.title")}>
      <h2>{t("taskview.title")}: {status?.type ?? ""} {status?.id ?? ""}
        <button type="button" class="close" id="task-viewer-close" onClick={props.onClose}>
          {t("taskview.close")}</button></h2>
      {error && <p class="error">{t("common.error", { message: error })}</p>}
      <p id="task-viewer-status" class={state === "failed" ? "error" : state === "ok" ? "ok"
        : state === "warning" ? "warning" : ""}>
        {state === "running" || state === "loading" ? t("tasks.running")
          : t("taskview.finished", { status: exit ?? "?" })}</p>
      <pre class="task-log" id="task-viewer-log">{log.map((l) => l.t).join("\n")}</pre>
    </section>
  );
}

/** The outcome's task viewer, when the last change started a task. */
export function TaskArea(props: { outcome: Outcome; onDone?: () => void }) {
  const upid = props.outcome.upid;
  return upid ? <TaskViewer key={upid} upid={upid} onClose={props.outcome.closeTask}
    onDone={props.onDone} /> : null;
}

/** The per-parameter errors no field on the form shows (so none is lost). */
export function OtherErrors(props: { errors: Record<string, string>; shown: string[] }) {
  const rest = Object.entries(props.errors).filter(([k]) => !props.shown.includes(k));
  if (!rest.length) return null;
  return <ul class="error">{rest.map(([k, v]) => <li key={k}>{k}: {v}</li>)}</ul>;
}
