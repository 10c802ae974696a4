// The VM view's editing tabs in one place, so the VM view only hands over where the VM is.
import type { VmTab } from "../../route";
import { Backup } from "./Backup";
import { CloudInit } from "./CloudInit";
import { Hardware } from "./Hardware";
import { Options } from "./Options";
import { Snapshots } from "./Snapshots";

export function VmEditTab(props: { tab: VmTab; base: string; node: string; vmid: number; running: boolean }) {
  switch (props.tab) {
    case "hardware": return <Hardware base={props.base} node={props.node} vmid={props.vmid} />;
    case "options": return <Options base={props.base} />;
    case "cloudinit": return <CloudInit base={props.base} />;
    case "snapshots": return <Snapshots base={props.base} running={props.running} />;
    case "backup": return <Backup node={props.node} vmid={props.vmid} running={props.running} />;
    default: return null;
  }
}
