// The task list at the bottom: the cluster's recent tasks (GET /cluster/tasks), live.
import { usePoll } from "../poll";
import { t } from "../strings";
import * as fmt from "../format";
import type { Task } from "../types";

export function TaskList() {
  const { data, error } = usePoll<Task[]>("/cluster/tasks", 1500);
  const tasks = (data ?? []).slice().sort((a, b) => b.starttime - a.starttime).slice(0, 50);
  return (
    // focusable: a scrolled region must be reachable by keyboard (axe-core, WCAG 2.1.1)
    <section class="tasks" aria-label={t("tasks.title")} tabIndex={0}>
      <h2>{t("tasks.title")}</h2>
      {error && <p class="error">{t("common.error", { message: error.message })}</p>}
      <div class="table-wrap">
        <table id="task-list">
          <thead>
            <tr>
              <th>{t("col.start")}</th><th>{t("col.end")}</th><th>{t("col.node")}</th>
              <th>{t("col.user")}</th><th>{t("col.description")}</th><th>{t("col.status")}</th>
            </tr>
          </thead>
          <tbody>
            {tasks.length === 0 && !error && (
              <tr><td colSpan={6}>{data ? t("tasks.none") : t("common.loading")}</td></tr>
            )}
            {tasks.map((task) => {
              const running = !task.endtime;
              const ok = task.status === "OK";
              return (
                <tr key={task.upid} data-upid={task.upid}
                  class={running ? "running" : ok ? "" : "failed"}>
                  <td>{fmt.time(task.starttime)}</td>
                  <td>{running ? "" : fmt.time(task.endtime)}</td>
                  <td>{task.node}</td>
                  <td>{task.user}</td>
                  <td>{task.type}{task.id ? ` ${task.id}` : ""}</td>
                  <td>{running ? t("tasks.running") : task.status}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
    </section>
  );
}
