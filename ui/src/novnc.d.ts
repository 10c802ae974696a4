// The part of noVNC's RFB API the VNC console uses (the package ships no types).
declare module "@novnc/novnc" {
  export default class RFB extends EventTarget {
    /** `urlOrChannel`: a URL, or a WebSocket already opened (noVNC attaches to it) */
    constructor(target: HTMLElement, urlOrChannel: string | WebSocket, options?: { wsProtocols?: string[] });
    scaleViewport: boolean;
    disconnect(): void;
  }
}
