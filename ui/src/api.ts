// The only way the UI talks to binome: /api2/json with the ticket cookie and, on writes,
// the CSRFPreventionToken header, as any Proxmox client does.
import { t } from "./strings";

const PREFIX = "/api2/json";
const SESSION_KEY = "binome.session";
const COOKIE = "PVEAuthCookie";

export interface Session {
  username: string;
  csrf: string;
  clustername?: string;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly errors?: Record<string, string>,
  ) {
    super(message);
  }
}

let session: Session | null = loadSession();
let onLoggedOut: (() => void) | null = null;

function loadSession(): Session | null {
  try {
    const raw = localStorage.getItem(SESSION_KEY);
    return raw ? (JSON.parse(raw) as Session) : null;
  } catch {
    return null;
  }
}

export function currentSession(): Session | null {
  return session;
}

export function setLoggedOutHandler(fn: () => void): void {
  onLoggedOut = fn;
}

function setTicket(ticket: string, data: Session): void {
  document.cookie = `${COOKIE}=${encodeURIComponent(ticket)}; path=/; secure; SameSite=Strict`;
  session = data;
  localStorage.setItem(SESSION_KEY, JSON.stringify(data));
}

export function logout(): void {
  document.cookie = `${COOKIE}=; path=/; secure; SameSite=Strict; max-age=0`;
  session = null;
  localStorage.removeItem(SESSION_KEY);
}

/** A parameter list: an array is sent as the key repeated (PVE's array parameters). */
export type Params = Record<string, string | number | boolean | string[] | undefined>;

function encode(params: Params): string {
  const form = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined) continue;
    if (Array.isArray(v)) {
      for (const item of v) form.append(k, item);
      continue;
    }
    form.set(k, typeof v === "boolean" ? (v ? "1" : "0") : String(v));
  }
  return form.toString();
}

export async function request<T>(method: string, path: string, params: Params = {}): Promise<T> {
  return (await requestPage<T>(method, path, params)).data;
}

/** A PVE list answer with its top-level `total` (paged lists: tasks, syslog). */
export interface Page<T> { data: T; total?: number }

async function requestPage<T>(method: string, path: string, params: Params = {}): Promise<Page<T>> {
  const headers: Record<string, string> = {};
  let url = PREFIX + path;
  let body: string | undefined;
  if (method === "GET" || method === "DELETE") {
    const q = encode(params);
    if (q) url += "?" + q;
  } else {
    body = encode(params);
    headers["Content-Type"] = "application/x-www-form-urlencoded";
  }
  if (method !== "GET" && session) headers["CSRFPreventionToken"] = session.csrf;
  let res: Response;
  try {
    res = await fetch(url, { method, headers, body, credentials: "same-origin" });
  } catch (e) {
    throw new ApiError(0, (e as Error).message || "network error");
  }
  let payload: { data?: T; total?: number; message?: string; errors?: Record<string, string> } = {};
  try {
    payload = await res.json();
  } catch {
    /* a body that is not JSON: the status text says what happened */
  }
  if (!res.ok) {
    const message = (payload.message || res.statusText || `HTTP ${res.status}`).trim();
    if (res.status === 401 && path !== "/access/ticket") {
      logout();
      onLoggedOut?.();
    }
    // a refusal for want of privileges says so plainly, whatever page shows it
    throw new ApiError(res.status, res.status === 403 ? t("common.denied", { message }) : message,
      payload.errors);
  }
  return { data: payload.data as T, total: payload.total };
}

export const get = <T>(path: string, params?: Params) => request<T>("GET", path, params);
export const getPage = <T>(path: string, params?: Params) => requestPage<T>("GET", path, params);
export const post = <T>(path: string, params?: Params) => request<T>("POST", path, params);

interface TicketAnswer {
  username: string;
  ticket: string;
  CSRFPreventionToken: string;
  NeedTFA?: number;
  clustername?: string;
}

/** Step one. Returns "ok", or a challenge ticket when the second factor is needed. */
export async function login(
  username: string,
  password: string,
  realm: string,
): Promise<{ needTfa: false } | { needTfa: true; challenge: string; username: string }> {
  const data = await post<TicketAnswer>("/access/ticket", { username, password, realm });
  if (data.NeedTFA) return { needTfa: true, challenge: data.ticket, username: data.username };
  setTicket(data.ticket, {
    username: data.username,
    csrf: data.CSRFPreventionToken,
    clustername: data.clustername,
  });
  return { needTfa: false };
}

/** Step two: the challenge ticket of step one with the factor's response. */
export async function loginTfa(username: string, challenge: string, response: string) {
  const data = await post<TicketAnswer>("/access/ticket", {
    username,
    password: response,
    "tfa-challenge": challenge,
  });
  setTicket(data.ticket, {
    username: data.username,
    csrf: data.CSRFPreventionToken,
    clustername: data.clustername,
  });
}

/** The page's own address, the `redirect-url` of an OpenID login (PVE's UI sends the
 * same, and the provider must allow it). */
const openIdRedirect = () => location.origin;

/** The provider's answer in this page's address after an OpenID login, or null. */
export function openIdReturn(): { state: string; code?: string; error?: string } | null {
  const q = new URLSearchParams(location.search);
  const state = q.get("state");
  if (!state || !(q.has("code") || q.has("error"))) return null;
  return { state, code: q.get("code") ?? undefined,
           error: q.get("error_description") || q.get("error") || undefined };
}

/** Forget the provider's answer in the address bar (a reload must not replay it). */
export function clearOpenIdReturn(): void {
  history.replaceState(null, "", location.pathname + location.hash);
}

/** Step one of an OpenID login: the provider's authorization URL for `realm`. */
export async function openIdAuthUrl(realm: string): Promise<string> {
  return post<string>("/access/openid/auth-url", { realm, "redirect-url": openIdRedirect() });
}

/** Step two, back from the provider: the code and state for a ticket. */
export async function loginOpenId(code: string, state: string): Promise<void> {
  const data = await post<TicketAnswer>("/access/openid/login", {
    code, state, "redirect-url": openIdRedirect(),
  });
  setTicket(data.ticket, {
    username: data.username,
    csrf: data.CSRFPreventionToken,
    clustername: data.clustername,
  });
}

/** A ticket lasts two hours: renew it with itself (PVE's renewal) well before then. */
export async function renewTicket(): Promise<void> {
  if (!session) return;
  const m = document.cookie.match(/(?:^|;\s*)PVEAuthCookie=([^;]*)/);
  if (!m) return;
  const data = await post<TicketAnswer>("/access/ticket", {
    username: session.username,
    password: decodeURIComponent(m[1]),
  });
  setTicket(data.ticket, { ...session, csrf: data.CSRFPreventionToken });
}
