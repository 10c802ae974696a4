// The serial console (the guest's ttyS0) in xterm.js. Loaded on demand (its own chunk).
import { Terminal } from "@xterm/xterm";
import "@xterm/xterm/css/xterm.css";
import { useEffect, useRef } from "preact/hooks";
import { consoleUrl } from "./socket";
import { t } from "../strings";

export interface ConsoleProps {
  node: string;
  vmid: number;
  onState: (state: "connecting" | "connected" | "closed", detail?: string) => void;
}

export default function SerialConsole(props: ConsoleProps) {
  const host = useRef<HTMLDivElement>(null);
  useEffect(() => {
    if (!host.current) return;
    const term = new Terminal({ cols: 100, rows: 30, fontSize: 14, scrollback: 2000,
                                fontFamily: "ui-monospace, monospace" });
    term.open(host.current);
    term.focus();
    let ws: WebSocket | null = null;
    let alive = true;
    const encoder = new TextEncoder();
    const input = term.onData((d) => {
      if (ws?.readyState === WebSocket.OPEN) ws.send(encoder.encode(d));
    });
    props.onState("connecting");
    consoleUrl(props.node, props.vmid, "serial").then((url) => {
      if (!alive) return;
      ws = new WebSocket(url, ["binary"]);
      ws.binaryType = "arraybuffer";
      ws.onopen = () => {
        props.onState("connected");
        // an empty line: the guest's prompt answers, so the screen is not blank
        ws?.send(encoder.encode("\r"));
      };
      ws.onmessage = (e) => term.write(new Uint8Array(e.data as ArrayBuffer));
      // the server's reason, e.g. "access revoked: user 'x@pve' was disabled"
      ws.onclose = (e) => {
        if (alive) props.onState("closed", e.reason || (e.code !== 1000 && e.code !== 1005
          ? t("console.closecode", { code: e.code }) : undefined));
      };
    }, (e: Error) => { if (alive) props.onState("closed", e.message); });
    return () => {
      alive = false;
      input.dispose();
      ws?.close();
      term.dispose();
    };
  }, [props.node, props.vmid]);
  return <div class="console-terminal" id="serial-console" ref={host} />;
}
