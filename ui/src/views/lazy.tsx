// The editing pages (a VM's hardware, options, cloud-init, snapshots, backup and
// replication tabs;
// the datacenter's HA, availability, replicated volumes, backup jobs, notifications, ACME
// and resource mappings; a node's certificates)
// load their code when first opened, as
// the consoles and graphs do, so the login and the tree stay small.
import type { ComponentType } from "preact";
import { useEffect, useState } from "preact/hooks";
import { t } from "../strings";
import type { VmTab } from "../route";
import type { HaStatusEntry, Resource } from "../types";

function lazyView<P extends object>(load: () => Promise<ComponentType<P>>): ComponentType<P> {
  let loaded: ComponentType<P> | null = null;
  return function Lazy(props: P) {
    const [view, setView] = useState<{ c: ComponentType<P> } | null>(loaded ? { c: loaded } : null);
    const [error, setError] = useState<string | null>(null);
    useEffect(() => {
      if (view) return;
      let alive = true;
      load().then((c) => { loaded = c; if (alive) setView({ c }); },
        (e: Error) => { if (alive) setError(e.message); });
      return () => { alive = false; };
    }, []);
    if (error) return <p class="error">{t("common.error", { message: error })}</p>;
    if (!view) return <p>{t("common.loading")}</p>;
    const View = view.c;
    return <View {...props} />;
  };
}

const EDIT_TABS: VmTab[] = ["hardware", "options", "cloudinit", "snapshots", "backup"];
type EditTabProps = { tab: VmTab; base: string; node: string; vmid: number; running: boolean };
const LazyEditTab = lazyView<EditTabProps>(() => import("./vm/Tabs").then((m) => m.VmEditTab));

/** The VM view's editing tab, if `tab` is one (nothing is loaded for the others). */
export function VmEditTab(props: EditTabProps) {
  return EDIT_TABS.includes(props.tab) ? <LazyEditTab {...props} /> : null;
}

export const BackupJobs = lazyView<{ resources: Resource[] }>(
  () => import("./BackupJobs").then((m) => m.BackupJobs));
export const Notifications = lazyView<Record<string, never>>(
  () => import("./Notifications").then((m) => m.Notifications));
export const DcTasks = lazyView<{ resources: Resource[] }>(
  () => import("./dc/Tasks").then((m) => m.DcTasks));
export const HaPage = lazyView<{ resources: Resource[] }>(
  () => import("./dc/Ha").then((m) => m.HaPage));
export const NodeSyslog = lazyView<{ node: string }>(
  () => import("./node/NodeLogs").then((m) => m.NodeSyslog));
export const TaskHistory = lazyView<{ node: string; vmid?: number; id: string }>(
  () => import("./node/NodeLogs").then((m) => m.TaskHistory));
export const DcHealth = lazyView<{ resources: Resource[]; quorate?: boolean; ha?: HaStatusEntry[] }>(
  () => import("./dc/Health").then((m) => m.DcHealth));
export const Acme = lazyView<Record<string, never>>(
  () => import("./dc/Acme").then((m) => m.Acme));
export const Mappings = lazyView<{ resources: Resource[] }>(
  () => import("./dc/Mappings").then((m) => m.Mappings));
export const NodeCertificates = lazyView<{ node: string }>(
  () => import("./node/Certificates").then((m) => m.Certificates));
export const DcOptions = lazyView<Record<string, never>>(
  () => import("./dc/Options").then((m) => m.Options));
export const Availability = lazyView<Record<string, never>>(
  () => import("./dc/Availability").then((m) => m.Availability));
export const VmReplication = lazyView<{ base: string; node: string; vmid: number; resources: Resource[] }>(
  () => import("./vm/Replication").then((m) => m.Replication));
export const Volumes = lazyView<{ resources: Resource[] }>(
  () => import("./dc/Volumes").then((m) => m.Volumes));
export const StoragePage = lazyView<{ resources: Resource[] }>(
  () => import("./storage/Storage").then((m) => m.StoragePage));
export const StorageContent = lazyView<{ node: string; storage: string; resources: Resource[] }>(
  () => import("./storage/Storage").then((m) => m.StorageContent));
export const NodeStorages = lazyView<{ node: string }>(
  () => import("./storage/Storage").then((m) => m.NodeStorages));
