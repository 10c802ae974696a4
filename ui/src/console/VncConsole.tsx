// The VNC console (the guest's display) in noVNC. Loaded on demand (its own chunk).
import RFB from "@novnc/novnc";
import { useEffect, useRef } from "preact/hooks";
import type { ConsoleProps } from "./SerialConsole";
import { consoleUrl } from "./socket";

export default function VncConsole(props: ConsoleProps) {
  const host = useRef<HTMLDivElement>(null);
  useEffect(() => {
    if (!host.current) return;
    let rfb: RFB | null = null;
    let alive = true;
    props.onState("connecting");
    consoleUrl(props.node, props.vmid, "vnc").then((url) => {
      if (!alive || !host.current) return;
      rfb = new RFB(host.current, url, { wsProtocols: ["binary"] });
      rfb.scaleViewport = true;
      rfb.addEventListener("connect", () => props.onState("connected"));
      rfb.addEventListener("disconnect", () => { if (alive) props.onState("closed"); });
      rfb.addEventListener("securityfailure", (e) =>
        props.onState("closed", String((e as CustomEvent).detail?.reason ?? "security failure")));
    }, (e: Error) => { if (alive) props.onState("closed", e.message); });
    return () => {
      alive = false;
      rfb?.disconnect();
    };
  }, [props.node, props.vmid]);
  return <div class="console-vnc" id="vnc-console" ref={host} />;
}
