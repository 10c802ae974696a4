// The VNC console (the guest's display) in noVNC. Loaded on demand (its own chunk).
import RFB from "@novnc/novnc";
import { useEffect, useRef } from "preact/hooks";
import type { ConsoleProps } from "./SerialConsole";
import { consoleUrl } from "./socket";
import { t } from "../strings";

export default function VncConsole(props: ConsoleProps) {
  const host = useRef<HTMLDivElement>(null);
  useEffect(() => {
    if (!host.current) return;
    let rfb: RFB | null = null;
    let alive = true;
    props.onState("connecting");
    consoleUrl(props.node, props.vmid, "vnc").then((url) => {
      if (!alive || !host.current) return;
      // the socket is opened here and handed to noVNC, which keeps the server's close
      // reason to its debug log: the tab shows it ("access revoked: ...", the guest's
      // display closed) as the serial console does
      const ws = new WebSocket(url, ["binary"]);
      let closed: string | undefined;
      ws.addEventListener("close", (e) => {
        closed = e.reason || (e.code !== 1000 && e.code !== 1005 ? t("console.closecode", { code: e.code }) : undefined);
      });
      rfb = new RFB(host.current, ws);
      rfb.scaleViewport = true;
      rfb.addEventListener("connect", () => props.onState("connected"));
      rfb.addEventListener("disconnect", () => { if (alive) props.onState("closed", closed); });
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
