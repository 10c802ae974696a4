// Datacenter → Notifications, in the API's shapes (/cluster/notifications): the targets
// (every endpoint: sendmail, smtp, gotify, webhook) with a Test button and delete, a new
// sendmail endpoint, smtp, gotify and webhook targets created and edited (dc/TargetEditor:
// their secrets write-only), and the matchers that route notifications to targets (create, edit,
// delete). Built-in entries (origin "builtin") can be changed but not removed.
import { useState } from "preact/hooks";
import { usePoll } from "../poll";
import { t } from "../strings";
import { Dialog } from "./Confirm";
import { DcTabs } from "./DcViews";
import { Field, OtherErrors, OutcomeMessage, useOutcome } from "./forms";
import { TARGET_TYPES, TargetDialog, type TargetType } from "./dc/TargetEditor";

const BASE = "/cluster/notifications";

interface Target { name: string; type: string; origin?: string; disable?: number; comment?: string }
interface Matcher {
  name: string; target?: string[]; "match-severity"?: string[]; "match-field"?: string[];
  "match-calendar"?: string[]; mode?: string; "invert-match"?: number; comment?: string;
  disable?: number; origin?: string;
}

const asList = (v: string[] | string | undefined) => (Array.isArray(v) ? v : v ? [v] : []);
const splitList = (text: string) => text.split(/[\s,]+/).filter(Boolean);

type Editing = { kind: "matcher"; matcher: Matcher | null } | { kind: "sendmail" }
  | { kind: "target"; type: TargetType; name: string | null }
  | { kind: "delete"; what: "matcher" | "endpoint"; name: string; type?: string };

export function Notifications() {
  const targets = usePoll<Target[]>(`${BASE}/targets`, 5000);
  const matchers = usePoll<Matcher[]>(`${BASE}/matchers`, 5000);
  const outcome = useOutcome(() => { targets.refresh(); matchers.refresh(); });
  const [editing, setEditing] = useState<Editing | null>(null);
  const [form, setForm] = useState<Record<string, string>>({});
  const set = (k: string) => (e: Event) =>
    setForm({ ...form, [k]: (e.currentTarget as HTMLInputElement).value });

  const openMatcher = (m: Matcher | null) => {
    outcome.clear();
    setForm({
      name: m?.name ?? "", target: asList(m?.target).join(", "),
      severity: asList(m?.["match-severity"]).join(", "), field: asList(m?.["match-field"]).join(", "),
      calendar: asList(m?.["match-calendar"]).join(", "), mode: m?.mode ?? "all",
      comment: m?.comment ?? "", disable: m?.disable ? "1" : "0",
    });
    setEditing({ kind: "matcher", matcher: m });
  };
  const save = async () => {
    if (!editing) return;
    let ok = false;
    if (editing.kind === "matcher") {
      const p: Record<string, string | string[] | boolean | undefined> = {
        target: splitList(form.target), "match-severity": splitList(form.severity),
        "match-field": splitList(form.field), "match-calendar": splitList(form.calendar),
        mode: form.mode, comment: form.comment || undefined, disable: form.disable === "1",
      };
      const empty = Object.entries(p).filter(([, v]) => Array.isArray(v) && !v.length).map(([k]) => k);
      for (const k of empty) delete p[k];
      if (editing.matcher) {
        const had = editing.matcher as unknown as Record<string, unknown>;
        const deletes = [...empty, ...(form.comment ? [] : ["comment"])].filter((k) => had[k] !== undefined);
        if (deletes.length) p.delete = deletes;
        ok = await outcome.send("PUT", `${BASE}/matchers/${encodeURIComponent(editing.matcher.name)}`, p,
          t("notif.saved", { name: editing.matcher.name }));
      } else {
        ok = await outcome.send("POST", `${BASE}/matchers`, { name: form.name, ...p },
          t("notif.saved", { name: form.name }));
      }
    } else if (editing.kind === "sendmail") {
      ok = await outcome.send("POST", `${BASE}/endpoints/sendmail`, {
        name: form.name, mailto: splitList(form.mailto), "mailto-user": splitList(form.mailtouser),
        comment: form.comment || undefined }, t("notif.saved", { name: form.name }));
    } else if (editing.kind === "delete") {
      const path = editing.what === "matcher" ? `${BASE}/matchers/${encodeURIComponent(editing.name)}`
        : `${BASE}/endpoints/${editing.type}/${encodeURIComponent(editing.name)}`;
      ok = await outcome.send("DELETE", path, {}, t("notif.deleted", { name: editing.name }));
    }
    if (ok) setEditing(null);
  };
  const test = (name: string) =>
    outcome.send("POST", `${BASE}/targets/${encodeURIComponent(name)}/test`, {},
      t("notif.tested", { name }));
  const errors = outcome.errors;

  return (
    <div class="view" id="view-dc-notifications">
      <DcTabs current="notifications" />
      <OutcomeMessage outcome={outcome} id="notif-message" />
      {!editing && <OtherErrors errors={errors} shown={[]} />}
      <section>
        <h2>{t("notif.targets")}</h2>
        <div class="toolbar" role="toolbar">
          <button id="notif-add-sendmail" onClick={() => {
            outcome.clear(); setForm({ name: "", mailto: "", mailtouser: "root@pam", comment: "" });
            setEditing({ kind: "sendmail" });
          }}>{t("notif.addsendmail")}</button>
          {TARGET_TYPES.map((type) => (
            <button key={type} id={`notif-add-${type}`} onClick={() => {
              outcome.clear(); setEditing({ kind: "target", type, name: null });
            }}>{t("notif.add")}: {t(`notif.add.${type}`)}</button>
          ))}
        </div>
        {targets.error && <p class="error">{t("common.error", { message: targets.error.message })}</p>}
        <div class="table-wrap">
          <table id="notif-target-table">
            <thead><tr><th>{t("col.name")}</th><th>{t("col.type")}</th><th>{t("storage.enabled")}</th>
              <th>{t("notif.origin")}</th><th>{t("opt.description")}</th><th /></tr></thead>
            <tbody>
              {(targets.data ?? []).map((e) => (
                <tr key={e.name} data-target={e.name}>
                  <td>{e.name}</td><td>{e.type}</td><td>{e.disable ? "" : "✓"}</td>
                  <td>{e.origin ?? ""}</td><td>{e.comment ?? ""}</td>
                  <td class="row-actions">
                    <button class="notif-test" disabled={outcome.busy} onClick={() => test(e.name)}>{t("notif.test")}</button>
                    {TARGET_TYPES.includes(e.type as TargetType) && <button class="notif-edit-target" onClick={() => {
                      outcome.clear(); setEditing({ kind: "target", type: e.type as TargetType, name: e.name });
                    }}>{t("hw.edit")}</button>}
                    {e.origin !== "builtin" && <button class="notif-delete" onClick={() => {
                      outcome.clear(); setEditing({ kind: "delete", what: "endpoint", name: e.name, type: e.type });
                    }}>{t("snap.delete")}</button>}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>
      <section>
        <h2>{t("notif.matchers")}</h2>
        <div class="toolbar" role="toolbar">
          <button id="notif-add-matcher" onClick={() => openMatcher(null)}>{t("notif.addmatcher")}</button>
        </div>
        {matchers.error && <p class="error">{t("common.error", { message: matchers.error.message })}</p>}
        <div class="table-wrap">
          <table id="notif-matcher-table">
            <thead><tr><th>{t("col.name")}</th><th>{t("storage.enabled")}</th><th>{t("notif.targets")}</th>
              <th>{t("notif.severity")}</th><th>{t("notif.fields")}</th><th>{t("notif.mode")}</th>
              <th>{t("opt.description")}</th><th /></tr></thead>
            <tbody>
              {(matchers.data ?? []).map((m) => (
                <tr key={m.name} data-matcher={m.name}>
                  <td>{m.name}</td><td>{m.disable ? "" : "✓"}</td><td>{asList(m.target).join(", ")}</td>
                  <td>{asList(m["match-severity"]).join(", ")}</td>
                  <td>{[...asList(m["match-field"]), ...asList(m["match-calendar"])].join(", ")}</td>
                  <td>{m.mode ?? "all"}{m["invert-match"] ? ` (${t("notif.inverted")})` : ""}</td>
                  <td>{m.comment ?? ""}</td>
                  <td class="row-actions">
                    <button class="notif-edit" onClick={() => openMatcher(m)}>{t("hw.edit")}</button>
                    {m.origin !== "builtin" && <button class="notif-delete" onClick={() => {
                      outcome.clear(); setEditing({ kind: "delete", what: "matcher", name: m.name });
                    }}>{t("snap.delete")}</button>}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>
      {editing?.kind === "matcher" && (
        <Dialog title={editing.matcher ? t("notif.editmatcher", { name: editing.matcher.name }) : t("notif.addmatcher")}
          onOk={save} okDisabled={outcome.busy} onCancel={() => setEditing(null)}>
          {!editing.matcher && <Field label={t("col.name")} param="name" errors={errors}>
            <input id="matcher-name" value={form.name} onInput={set("name")} /></Field>}
          <Field label={t("notif.targets")} param="target" errors={errors}>
            <input id="matcher-target" value={form.target} onInput={set("target")}
              placeholder={(targets.data ?? []).map((x) => x.name).join(", ")} /></Field>
          <Field label={t("notif.severity")} param="match-severity" errors={errors}>
            <input id="matcher-severity" value={form.severity} onInput={set("severity")}
              placeholder="error, warning" /></Field>
          <Field label={t("notif.fields")} param="match-field" errors={errors}>
            <input id="matcher-field" value={form.field} onInput={set("field")}
              placeholder="exact:type=vzdump" /></Field>
          <Field label={t("notif.calendar")} param="match-calendar" errors={errors}>
            <input id="matcher-calendar" value={form.calendar} onInput={set("calendar")}
              placeholder="mon..fri 8-17" /></Field>
          <Field label={t("notif.mode")} param="mode" errors={errors}>
            <select id="matcher-mode" value={form.mode} onChange={set("mode")}>
              <option value="all">all</option><option value="any">any</option></select></Field>
          <label class="check"><input type="checkbox" checked={form.disable === "1"}
            onChange={(e) => setForm({ ...form, disable: e.currentTarget.checked ? "1" : "0" })} />
            {t("notif.disabled")}</label>
          <Field label={t("opt.description")} param="comment" errors={errors}>
            <input id="matcher-comment" value={form.comment} onInput={set("comment")} /></Field>
          <OtherErrors errors={errors} shown={["name", "target", "match-severity", "match-field",
            "match-calendar", "mode", "comment"]} />
        </Dialog>
      )}
      {editing?.kind === "sendmail" && (
        <Dialog title={t("notif.addsendmail")} onOk={save} okDisabled={outcome.busy} onCancel={() => setEditing(null)}>
          <Field label={t("col.name")} param="name" errors={errors}>
            <input id="sendmail-name" value={form.name} onInput={set("name")} /></Field>
          <Field label={t("notif.mailto")} param="mailto" errors={errors}>
            <input id="sendmail-mailto" value={form.mailto} onInput={set("mailto")} /></Field>
          <Field label={t("notif.mailtouser")} param="mailto-user" errors={errors}>
            <input id="sendmail-mailtouser" value={form.mailtouser} onInput={set("mailtouser")} /></Field>
          <Field label={t("opt.description")} param="comment" errors={errors}>
            <input value={form.comment} onInput={set("comment")} /></Field>
          <OtherErrors errors={errors} shown={["name", "mailto", "mailto-user", "comment"]} />
        </Dialog>
      )}
      {editing?.kind === "target" && (
        <TargetDialog key={`${editing.type}-${editing.name ?? ""}`} type={editing.type} name={editing.name}
          outcome={outcome} onClose={() => setEditing(null)} />
      )}
      {editing?.kind === "delete" && (
        <Dialog title={t("snap.delete")} danger onOk={save} onCancel={() => setEditing(null)}>
          <p>{t("notif.confirm.delete", { name: editing.name })}</p>
          <OtherErrors errors={errors} shown={[]} />
        </Dialog>
      )}
    </div>
  );
}
