// What every Permissions page shares: the caller's privileges (GET /access/permissions,
// so write buttons show only where the API would allow them), the tab bar, a form field
// that shows the API's per-parameter error next to it, the outcome of an action, and a
// task's progress for actions that start one.
import type { ComponentChildren } from "preact";
import { useState } from "preact/hooks";
import { ApiError } from "../../api";
import { usePoll } from "../../poll";
import { href, type AccessView } from "../../route";
import { t } from "../../strings";
import { DcTabs } from "../DcViews";

export { useAnywhere, usePerms } from "./perms";

const VIEWS: AccessView[] = ["users", "groups", "roles", "acl", "tokens", "pools", "realms", "tfa"];

export function AccessTabs(props: { current: AccessView }) {
  return (
    <>
      <DcTabs current="access" />
      <nav class="tabs subtabs" role="tablist" aria-label={t("access.title")}>
        {VIEWS.map((v) => (
          <a key={v} role="tab" id={`access-tab-${v}`} aria-selected={props.current === v}
            href={href({ kind: "access", view: v })}>{t(`access.tab.${v}` as "access.tab.users")}</a>
        ))}
      </nav>
    </>
  );
}

export interface Outcome { text: string; error: boolean }

/** An action's state: its message, the API's per-parameter errors, and `run` that
 * calls the API and fills them. `run` answers whether the call succeeded. */
export function useAction() {
  const [message, setMessage] = useState<Outcome | null>(null);
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [busy, setBusy] = useState(false);
  const run = async <T,>(call: () => Promise<T>, done: (r: T) => string): Promise<boolean> => {
    setBusy(true);
    setErrors({});
    try {
      const r = await call();
      setMessage({ text: done(r), error: false });
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
  const reset = () => { setMessage(null); setErrors({}); };
  return { message, errors, busy, run, reset, setMessage, setErrors };
}

export function Message(props: { outcome: Outcome | null; id?: string }) {
  if (!props.outcome) return null;
  return (
    <p class={props.outcome.error ? "error" : "notice"} role={props.outcome.error ? "alert" : "status"}
      id={props.id ?? "access-message"}>{props.outcome.text}</p>
  );
}

/** A labelled input with the API's reason for `param` under it. */
export function Field(props: { label: string; param: string; errors: Record<string, string>;
                               children: ComponentChildren; check?: boolean }) {
  const error = props.errors[props.param];
  return (
    <label class={props.check ? "check field" : "field"} data-param={props.param}>
      {props.check ? <>{props.children}{props.label}</> : <>{props.label}{props.children}</>}
      {error && <span class="field-error error" id={`error-${props.param}`}>{error}</span>}
    </label>
  );
}

interface TaskStatus { status: string; exitstatus?: string }

/** The progress and result of a task the UI started (its UPID names the node). */
export function TaskResult(props: { upid: string }) {
  const node = props.upid.split(":")[1] ?? "";
  const { data } = usePoll<TaskStatus>(
    `/nodes/${encodeURIComponent(node)}/tasks/${encodeURIComponent(props.upid)}/status`, 1000);
  const done = data?.status === "stopped";
  const ok = done && data?.exitstatus === "OK";
  return (
    <p class={done && !ok ? "error" : "notice"} id="task-result" data-status={done ? data?.exitstatus : "running"}>
      {t("access.task", { upid: props.upid })}{" "}
      <strong>{done ? data?.exitstatus : t("tasks.running")}</strong>
    </p>
  );
}

/** epoch seconds <-> the value of an <input type=date> (0: never). */
export function dateOf(epoch?: number): string {
  if (!epoch) return "";
  return new Date(epoch * 1000).toISOString().slice(0, 10);
}
export function epochOf(date: string): number {
  return date ? Math.floor(Date.parse(date + "T23:59:59Z") / 1000) : 0;
}
export function expiry(epoch?: number): string {
  return epoch ? dateOf(epoch) : t("access.never");
}

export const enc = encodeURIComponent;
