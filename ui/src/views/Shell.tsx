// The app shell, laid out as Proxmox's: header, resource tree left, content right, task
// list at the bottom. It polls /cluster/resources about every second and feeds the tree
// and the views, so statuses change in place without a reload.
import { useEffect } from "preact/hooks";
import { currentSession, renewTicket } from "../api";
import { usePoll } from "../poll";
import { useRoute } from "../route";
import { t } from "../strings";
import type { Resource } from "../types";
import { CreateVm } from "./Create";
import { DatacenterSummary } from "./Datacenter";
import { ClusterLog } from "./DcViews";
import { Acme, Availability, BackupJobs, DcOptions, Mappings, DcTasks, HaPage, Notifications, StorageContent, StoragePage, Volumes } from "./lazy";
import { NodeSummary } from "./Node";
import { TaskList } from "./Tasks";
import { Tree } from "./Tree";
import { VmView } from "./Vm";
import { AccessPage } from "./access/lazy";
import { useAnywhere } from "./access/perms";
import { SearchPanel, TreeToolbar, useTreeOptions } from "./Search";

const RENEW_MS = 15 * 60 * 1000;

export function Shell(props: { theme: string; onTheme: () => void; onLogout: () => void }) {
  const [route, go] = useRoute();
  const { data, error } = usePoll<Resource[]>("/cluster/resources", 1000);
  const resources = data ?? [];
  const session = currentSession();
  const [treeView, setTreeView, filter, setFilter] = useTreeOptions();
  const anywhere = useAnywhere();

  useEffect(() => {
    const id = window.setInterval(() => { renewTicket().catch(() => {}); }, RENEW_MS);
    return () => window.clearInterval(id);
  }, []);

  let content;
  switch (route.kind) {
    case "node":
      content = <NodeSummary node={route.node} tab={route.tab} resources={resources}
        onVm={(vmid) => go({ kind: "vm", vmid })} />;
      break;
    case "storage":
      content = <StorageContent key={`${route.node}/${route.storage}`} node={route.node}
        storage={route.storage} resources={resources} />;
      break;
    case "vm":
      content = <VmView key={route.vmid} vmid={route.vmid} tab={route.tab ?? "summary"} resources={resources} />;
      break;
    case "dcview":
      content = route.view === "backup" ? <BackupJobs resources={resources} />
        : route.view === "notifications" ? <Notifications />
        : route.view === "log" ? <ClusterLog />
        : route.view === "tasks" ? <DcTasks resources={resources} />
        : route.view === "ha" ? <HaPage resources={resources} />
        : route.view === "availability" ? <Availability />
        : route.view === "options" ? <DcOptions />
        : route.view === "acme" ? <Acme />
        : route.view === "mappings" ? <Mappings resources={resources} />
        : route.view === "volumes" ? <Volumes resources={resources} />
        : <StoragePage resources={resources} />;
      break;
    case "create":
      content = <CreateVm resources={resources} onCreated={(vmid) => go({ kind: "vm", vmid })} />;
      break;
    case "access":
      content = <AccessPage route={route} resources={resources} go={go} />;
      break;
    case "search":
      content = <SearchPanel query={route.query} resources={resources} go={go} />;
      break;
    default:
      content = <DatacenterSummary resources={resources}
        onNode={(node) => go({ kind: "node", node })} />;
  }

  return (
    <div class="shell">
      <a class="skip" href="#content" onClick={(e) => {
        e.preventDefault(); document.getElementById("content")?.focus();
      }}>{t("shell.skip")}</a>
      <header class="header">
        <span class="brand"><span class="logo" aria-hidden="true">◆</span> {t("app.title")}</span>
        <span class="spacer" />
        {anywhere("VM.Allocate") && <a class="button" id="create-vm" href="#/create">{t("create.open")}</a>}
        {session && <span class="user" id="shell-user">{t("shell.user", { user: session.username })}</span>}
        <button id="theme-toggle" onClick={props.onTheme} title={t("shell.theme")}>
          {props.theme === "dark" ? t("shell.theme.light") : t("shell.theme.dark")}
        </button>
        <button id="logout" onClick={props.onLogout}>{t("shell.logout")}</button>
      </header>
      <nav class="sidebar" aria-label={t("tree.label")}>
        <TreeToolbar view={treeView} onView={setTreeView} filter={filter} onFilter={setFilter}
          onSearch={(query) => go({ kind: "search", query })} />
        <Tree resources={resources} clusterName={session?.clustername} route={route} onSelect={go}
          view={treeView} filter={filter} />
      </nav>
      <main class="content" id="content" tabIndex={-1}>
        {error && <p class="error banner" role="alert">{t("shell.offline", { message: error.message })}</p>}
        {content}
      </main>
      <TaskList />
    </div>
  );
}
