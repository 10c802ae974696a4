// Status icons: a shape and a colour (not colour alone) with a text for screen readers.
import { t } from "../strings";
import type { Resource } from "../types";

export function NodeIcon(props: { status?: string }) {
  const online = props.status === "online";
  return (
    <span class={`icon node ${online ? "ok" : "bad"}`} role="img"
      aria-label={online ? t("status.online") : t("status.offline")}
      title={online ? t("status.online") : t("status.offline")}>
      {online ? "●" : "✖"}
    </span>
  );
}

export function VmIcon(props: { vm: Resource }) {
  const s = props.vm.status ?? "unknown";
  const glyph = s === "running" ? "▶" : s === "paused" ? "❚❚" : s === "stopped" ? "■" : "?";
  const label = s in { running: 1, stopped: 1, paused: 1 }
    ? t(`status.${s}` as "status.running") : s;
  return (
    <span class={`icon vm ${s}`} role="img" aria-label={label} title={label}>{glyph}</span>
  );
}
