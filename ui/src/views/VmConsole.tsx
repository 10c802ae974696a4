// A VM's console tab (serial or VNC): checks the guest runs on the node this page talks
// to (the websocket must be opened there), then loads xterm.js or noVNC on demand.
import type { ComponentType } from "preact";
import { useEffect, useState } from "preact/hooks";
import type { ConsoleKind } from "../console/socket";
import { localNode } from "../console/socket";
import type { ConsoleProps } from "../console/SerialConsole";
import { t } from "../strings";

type State = "loading" | "connecting" | "connected" | "closed";

export function VmConsole(props: { kind: ConsoleKind; node: string; vmid: number; running: boolean }) {
  const [view, setView] = useState<ComponentType<ConsoleProps> | null>(null);
  const [elsewhere, setElsewhere] = useState<string | null>(null);
  const [state, setState] = useState<State>("loading");
  const [detail, setDetail] = useState<string | undefined>();
  const [attempt, setAttempt] = useState(0);

  useEffect(() => {
    let alive = true;
    setView(null);
    setElsewhere(null);
    setState("loading");
    const load = props.kind === "vnc" ? import("../console/VncConsole")
      : import("../console/SerialConsole");
    Promise.all([localNode(), load]).then(([nodes, mod]) => {
      if (!alive) return;
      if (nodes.local && nodes.local !== props.node) {
        const ip = nodes.ips[props.node];
        setElsewhere(ip ? `https://${ip.includes(":") ? `[${ip}]` : ip}:${location.port || 443}/`
          + `#/vm/${props.vmid}/${props.kind === "vnc" ? "vnc" : "console"}` : "");
        return;
      }
      setView(() => mod.default);
    }, (e: Error) => { if (alive) { setState("closed"); setDetail(e.message); } });
    return () => { alive = false; };
  }, [props.kind, props.node, props.vmid]);

  if (!props.running) return <p class="notice" id="console-state">{t("console.notrunning")}</p>;
  if (elsewhere !== null) {
    return (
      <p class="notice" id="console-state">{t("console.elsewhere", { node: props.node })}{" "}
        {elsewhere && <a href={elsewhere} target="_blank" rel="noopener">{elsewhere}</a>}</p>
    );
  }
  const View = view;
  return (
    <section class="console" aria-label={t(props.kind === "vnc" ? "vm.tab.vnc" : "vm.tab.console")}>
      <div class="toolbar">
        <span id="console-state" data-state={state}>
          {t(`console.${state}` as "console.loading")}{detail ? `: ${detail}` : ""}
        </span>
        {state === "closed" && (
          <button id="console-reconnect" onClick={() => { setDetail(undefined); setAttempt(attempt + 1); }}>
            {t("console.reconnect")}
          </button>
        )}
      </div>
      {View && <View key={attempt} node={props.node} vmid={props.vmid}
        onState={(s, d) => { setState(s); setDetail(d); }} />}
    </section>
  );
}
