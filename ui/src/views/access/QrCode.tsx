// A QR code of a text (the otpauth:// URI of a new TOTP factor) for an authenticator
// app's camera. `qrcode` is loaded on demand (its own chunk) and renders SVG, shown as
// an <img> from a data: URL (no markup of ours is injected into the page). The text
// stays shown beside it for apps that take it typed or pasted.
import { useEffect, useState } from "preact/hooks";

export function QrCode(props: { text: string; id?: string; label: string }) {
  const [src, setSrc] = useState<string | null>(null);
  const [failed, setFailed] = useState(false);
  useEffect(() => {
    let alive = true;
    setSrc(null);
    import("qrcode").then((QRCode) => QRCode.toString(props.text, {
      type: "svg", errorCorrectionLevel: "M", margin: 2,
    })).then((svg) => {
      if (alive) setSrc(`data:image/svg+xml;charset=utf-8,${encodeURIComponent(svg)}`);
    }, () => { if (alive) setFailed(true); });
    return () => { alive = false; };
  }, [props.text]);
  if (failed) return null;           // the URI and the secret are shown anyway
  return src ? <img class="qr-code" id={props.id} src={src} alt={props.label} width={200} height={200} />
    : <div class="qr-code" aria-busy="true" />;
}
