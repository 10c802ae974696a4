// WebAuthn in the browser, in PVE's formats: the creation options come as a JSON string
// (binary fields base64url, `user.id` as text), the credential goes back as JSON with
// base64url fields; at login the NeedTFA ticket carries the request options and the
// assertion goes back as `webauthn:{json}` with the challenge it answers.

export function b64urlToBytes(s: string): Uint8Array {
  const b64 = s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4);
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

export function bytesToB64url(buf: ArrayBuffer): string {
  let s = "";
  for (const b of new Uint8Array(buf)) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export function webauthnAvailable(): boolean {
  return typeof window !== "undefined" && window.isSecureContext && !!navigator.credentials
    && typeof PublicKeyCredential !== "undefined";
}

type Json = any;

/** navigator.credentials.create for the options of the first POST: the challenge and
 * the credential JSON for the second. */
export async function createCredential(optionsJson: string): Promise<{ challenge: string; value: string }> {
  const options: Json = JSON.parse(optionsJson);
  const pk = options.publicKey;
  const challenge: string = pk.challenge;
  pk.challenge = b64urlToBytes(challenge);
  pk.user.id = new TextEncoder().encode(pk.user.id);
  for (const c of pk.excludeCredentials ?? []) c.id = b64urlToBytes(c.id);
  const cred = await navigator.credentials.create(options) as PublicKeyCredential | null;
  if (!cred) throw new Error("no credential");
  const rsp = cred.response as AuthenticatorAttestationResponse;
  return {
    challenge,
    value: JSON.stringify({
      id: cred.id, type: cred.type, rawId: bytesToB64url(cred.rawId),
      response: {
        attestationObject: bytesToB64url(rsp.attestationObject),
        clientDataJSON: bytesToB64url(rsp.clientDataJSON),
      },
    }),
  };
}

/** The TFA challenge a NeedTFA ticket (`PVE:!tfa!<json>:<time>::<sig>`) carries. */
export function ticketChallenge(ticket: string): { totp?: boolean; recovery?: number[]; webauthn?: Json } {
  try {
    const part = ticket.split(":")[1] ?? "";
    return part.startsWith("!tfa!") ? JSON.parse(decodeURIComponent(part.slice(5))) : {};
  } catch {
    return {};
  }
}

/** navigator.credentials.get for the ticket's `webauthn` options: the `webauthn:{json}`
 * answer for POST /access/ticket. */
export async function getAssertion(webauthn: Json): Promise<string> {
  const options: Json = JSON.parse(JSON.stringify(webauthn));
  const pk = options.publicKey;
  const challenge: string = pk.challenge;
  pk.challenge = b64urlToBytes(challenge);
  for (const c of pk.allowCredentials ?? []) c.id = b64urlToBytes(c.id);
  const cred = await navigator.credentials.get(options) as PublicKeyCredential | null;
  if (!cred) throw new Error("no credential");
  const rsp = cred.response as AuthenticatorAssertionResponse;
  const response: Record<string, string> = {
    authenticatorData: bytesToB64url(rsp.authenticatorData),
    clientDataJSON: bytesToB64url(rsp.clientDataJSON),
    signature: bytesToB64url(rsp.signature),
  };
  if (rsp.userHandle) response.userHandle = bytesToB64url(rsp.userHandle);
  return "webauthn:" + JSON.stringify({
    id: cred.id, type: cred.type, challenge, rawId: bytesToB64url(cred.rawId), response,
  });
}
