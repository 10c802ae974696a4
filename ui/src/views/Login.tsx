// Login: user name, password and realm (GET /access/domains), then the second factor
// when the API answers NeedTFA: a TOTP code, a recovery key, or, when the ticket's
// challenge offers `webauthn`, the security key by navigator.credentials.get. An OpenID Connect realm has no password: its button
// sends the browser to the provider (POST /access/openid/auth-url), which sends it back
// here with code and state for POST /access/openid/login, as PVE's login does.
import { useEffect, useRef, useState } from "preact/hooks";
import {
  ApiError, clearOpenIdReturn, get, login, loginOpenId, loginTfa, openIdAuthUrl, openIdReturn,
} from "../api";
import { t } from "../strings";
import { getAssertion, ticketChallenge, webauthnAvailable } from "../webauthn";

interface Realm {
  realm: string;
  type?: string;
  comment?: string;
  default?: number;
}

export function Login(props: { onLoggedIn: () => void }) {
  const [realms, setRealms] = useState<Realm[]>([]);
  const [realm, setRealm] = useState("pam");
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState("");
  const [tfa, setTfa] = useState<{ challenge: string; username: string } | null>(null);
  const [code, setCode] = useState("");
  const [recovery, setRecovery] = useState(false);
  const userRef = useRef<HTMLInputElement>(null);
  const codeRef = useRef<HTMLInputElement>(null);

  useEffect(() => {
    const back = openIdReturn();
    if (back === null) return;
    clearOpenIdReturn();
    if (!back.code) {
      setError(t("login.openid.refused", { message: back.error ?? "" }));
      return;
    }
    setBusy(true);
    loginOpenId(back.code, back.state).then(() => props.onLoggedIn(), (e: unknown) => {
      setError(explain(e, t("login.openid.failed")));
      setBusy(false);
    });
  }, []);

  useEffect(() => {
    get<Realm[]>("/access/domains").then((list) => {
      setRealms(list);
      const dflt = list.find((r) => r.default);
      if (dflt) setRealm(dflt.realm);
    }).catch(() => setRealms([{ realm: "pam" }, { realm: "pve" }]));
    userRef.current?.focus();
  }, []);
  useEffect(() => { if (tfa) codeRef.current?.focus(); }, [tfa]);

  const explain = (e: unknown, wrong: string) => {
    if (e instanceof ApiError && e.status === 401) {
      // the API's reason may name a lock-out or a rate limit: show it when it says more
      const m = e.message.replace(/^authentication failure\.?$/i, "");
      return m ? `${wrong} (${m})` : wrong;
    }
    return t("login.error", { message: (e as Error).message });
  };

  const submit = async (ev: Event) => {
    ev.preventDefault();
    setBusy(true);
    setError("");
    try {
      const r = await login(username, password, realm);
      if (r.needTfa) {
        setTfa({ challenge: r.challenge, username: r.username });
      } else {
        props.onLoggedIn();
      }
    } catch (e) {
      setError(explain(e, t("login.failed")));
      setPassword("");
    } finally {
      setBusy(false);
    }
  };

  const openid = realms.find((r) => r.realm === realm)?.type === "openid";

  const submitOpenId = async (ev: Event) => {
    ev.preventDefault();
    setBusy(true);
    setError("");
    try {
      location.href = await openIdAuthUrl(realm);   // the provider sends the browser back
    } catch (e) {
      setError(t("login.error", { message: (e as Error).message }));
      setBusy(false);
    }
  };

  const offersWebauthn = tfa !== null && !!ticketChallenge(tfa.challenge).webauthn;

  const submitWebauthn = async () => {
    if (!tfa) return;
    setBusy(true);
    setError("");
    let answer: string;
    try {
      answer = await getAssertion(ticketChallenge(tfa.challenge).webauthn);
    } catch (e) {
      setError(t("login.tfa.webauthn.failed", { message: (e as Error).message }));
      setBusy(false);
      return;
    }
    try {
      await loginTfa(tfa.username, tfa.challenge, answer);
      props.onLoggedIn();
    } catch (e) {
      setError(explain(e, t("login.tfa.failed")));
    } finally {
      setBusy(false);
    }
  };

  const submitTfa = async (ev: Event) => {
    ev.preventDefault();
    if (!tfa) return;
    setBusy(true);
    setError("");
    try {
      await loginTfa(tfa.username, tfa.challenge, `${recovery ? "recovery" : "totp"}:${code.trim()}`);
      props.onLoggedIn();
    } catch (e) {
      setError(explain(e, t("login.tfa.failed")));
      setCode("");
    } finally {
      setBusy(false);
    }
  };

  return (
    <main class="login">
      <div class="login-box">
        <h1><span class="logo" aria-hidden="true">◆</span> {t("app.title")}</h1>
        {tfa === null ? (
          <form onSubmit={openid ? submitOpenId : submit} aria-label={t("login.title")}>
            <h2>{t("login.title")}</h2>
            {!openid && <>
              <label>
                {t("login.username")}
                <input id="login-username" ref={userRef} autocomplete="username" required
                  value={username} onInput={(e) => setUsername(e.currentTarget.value)} />
              </label>
              <label>
                {t("login.password")}
                <input id="login-password" type="password" autocomplete="current-password"
                  required value={password} onInput={(e) => setPassword(e.currentTarget.value)} />
              </label>
            </>}
            <label>
              {t("login.realm")}
              <select id="login-realm" value={realm}
                onChange={(e) => setRealm(e.currentTarget.value)}>
                {realms.map((r) => (
                  <option key={r.realm} value={r.realm}>
                    {r.comment ? `${r.comment} (${r.realm})` : r.realm}
                  </option>
                ))}
              </select>
            </label>
            {error && <p class="error" role="alert" id="login-error">{error}</p>}
            {openid ? (
              <button id="login-openid" type="submit" class="primary" disabled={busy}>
                {busy ? t("login.busy") : t("login.openid", { realm })}
              </button>
            ) : (
              <button id="login-submit" type="submit" class="primary" disabled={busy}>
                {busy ? t("login.busy") : t("login.submit")}
              </button>
            )}
          </form>
        ) : (
          <form onSubmit={submitTfa} aria-label={t("login.tfa.title")}>
            <h2>{t("login.tfa.title")}</h2>
            {offersWebauthn && <>
              <p>{t("login.tfa.webauthn.help")}</p>
              <button id="login-webauthn" type="button" class="primary"
                disabled={busy || !webauthnAvailable()} onClick={submitWebauthn}>
                {t("login.tfa.webauthn")}
              </button>
            </>}
            <p>{t("login.tfa.help")}</p>
            <label>
              {recovery ? t("login.tfa.recoverykey") : t("login.tfa.code")}
              <input id="login-tfa-code" ref={codeRef} autocomplete="one-time-code" required
                inputMode={recovery ? "text" : "numeric"} value={code}
                onInput={(e) => setCode(e.currentTarget.value)} />
            </label>
            <label class="check">
              <input type="checkbox" checked={recovery}
                onChange={(e) => setRecovery(e.currentTarget.checked)} />
              {t("login.tfa.recovery")}
            </label>
            {error && <p class="error" role="alert" id="login-error">{error}</p>}
            <div class="dialog-buttons">
              <button type="button" onClick={() => { setTfa(null); setError(""); }}>
                {t("login.tfa.back")}
              </button>
              <button type="submit" class="primary" disabled={busy}>{t("login.tfa.submit")}</button>
            </div>
          </form>
        )}
      </div>
    </main>
  );
}
