"""ACME (RFC 8555) for the nodes' certificates: accounts, challenge plugins, orders.

Owns the etcd keys under `/binome/priv/acme/` (PVE's `/etc/pve/priv/acme`):
- `accounts/<name>`: one account (PVE's account file): the CA's account object, the
  directory URL, the account URL (`location`), the agreed terms of service URL, and the
  account's private key. The key is a secret: never returned, logged or put in a task
  log. A deactivated account is kept as `_deactivated_<name>_<i>` (PVE's rename), which
  the listing leaves out (no valid config ID).
- `plugins`: PVE's `plugins.cfg` section-config text (its SHA-1 is the `digest`); the
  `standalone` plugin is always there (PVE adds it on read). `dns` plugins are stored
  with PVE's fields (`api`, `data`: base64, `validation-delay`, `nodes`, `disable`);
  binome does not run DNS provider scripts, so an order with one fails, naming it.

The protocol is the `acme` library's (certbot's; JWS by `josepy`): everything here that
talks to a CA is synchronous and runs in a worker thread (`asyncio.to_thread`). The
`standalone` plugin answers http-01 on port 80 of the node's API address (PVE's
HTTP::Daemon on port 80) for the time of the order only.

Trust for the CA's directory: the system's CAs, or, when the node has the file
`<state>/pki/acme-directory-ca.pem`, that file's CAs only (binome's: a test CA such as
pebble's; PVE has no such setting).

`get_acme_conf` is PVE's NodeConfig::get_acme_conf; `renewal_due` is pveupdate's daily
decision (renew when the custom certificate ends within 30 days).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.server
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from binome.cluster import node_config
from binome.errors import BinomeError
from binome.schema import register_format
from binome.store import keys
from binome.store.client import Conflict

if TYPE_CHECKING:
    from binome.store.client import Store

ACCOUNTS = keys.ACME_ACCOUNTS
PLUGINS = keys.ACME_PLUGINS
DIRECTORIES = [
    {"name": "Let's Encrypt V2", "url": "https://acme-v02.api.letsencrypt.org/directory"},
    {"name": "Let's Encrypt V2 Staging",
     "url": "https://acme-staging-v02.api.letsencrypt.org/directory"},
]
DEFAULT_DIRECTORY = DIRECTORIES[0]["url"]
ACCOUNT_KEY_BITS = 4096        # PVE: $acme->init(4096)
CERT_KEY_BITS = 4096           # PVE's generate_csr default
RENEW_WITHIN = 30 * 86400      # pveupdate: renew when ending within 30 days
HTTP_PORT = 80
TRUST_FILE = "acme-directory-ca.pem"
PLUGIN_TYPES = ("dns", "standalone")
PLUGIN_OPTIONS = {"standalone": ("nodes", "disable"),
                  "dns": ("api", "data", "nodes", "disable", "validation-delay")}
REQUIRED = {"dns": ("api",)}
_INTEGER_KEYS = ("validation-delay", "disable")

_EMAIL_RE = re.compile(r"[\w+\-~]+(?:\.[\w+\-~]+)*@[a-zA-Z0-9\-]+(?:\.[a-zA-Z0-9\-]+)*")


def _email(value: str) -> str:
    if not _EMAIL_RE.fullmatch(value):
        raise ValueError("value does not look like a valid email address")
    return value


register_format("email", _email)


class AcmeError(BinomeError):
    """A refused request or a failed exchange with the CA, PVE's text (the API's 500)."""


def account_key(name: str) -> str:
    return keys.acme_account(name)


def contact_urls(text: str) -> list[str]:
    """PVE's account_contact_from_param: `mailto:` URLs of an email list."""
    return [f"mailto:{a}" for a in re.split(r"[,;\s]+", text or "") if a]


# ---------------------------------------------------------------- plugins.cfg


def parse_plugins(raw: str) -> dict[str, dict[str, Any]]:
    """PVE's section config text; the `standalone` plugin added when missing."""
    ids: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in raw.splitlines():
        if not line.strip():
            current = None
            continue
        m = re.fullmatch(r"(\S+):\s*(\S+)\s*", line)
        if m and not line[0].isspace():
            current = {"type": m.group(1)}
            ids[m.group(2)] = current
            continue
        if current is not None:
            key, _, value = line.strip().partition(" ")
            value = value.strip()
            # typed as PVE's schema parses them: integers, booleans as 0/1
            current[key] = int(value) if key in _INTEGER_KEYS and value.isdigit() else value
    if ids.get("standalone", {}).get("type") != "standalone":
        ids["standalone"] = {"type": "standalone"}
    return ids


def format_plugins(ids: Mapping[str, Mapping[str, Any]]) -> str:
    out = []
    for pid in sorted(ids):
        conf = ids[pid]
        lines = [f"{conf['type']}: {pid}"]
        for key in sorted(k for k in conf if k != "type"):
            value = conf[key]
            value = int(value) if isinstance(value, bool) else value
            lines.append(f"\t{key} {value}")
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


@dataclass(frozen=True)
class Plugins:
    ids: dict[str, dict[str, Any]]
    raw: str
    revision: int

    @property
    def digest(self) -> str:
        return hashlib.sha1(self.raw.encode()).hexdigest()

    def api_view(self, pid: str) -> dict[str, Any]:
        """PVE's modify_cfg_for_api: the options, `plugin` and the file's `digest`; a
        `dns` plugin's `data` (the DNS provider's credentials) is never returned (PVE
        returns it; binome keeps secrets write-only): `has-data` says whether it is set."""
        if pid not in self.ids:
            raise AcmeError(f"ACME plugin '{pid}' not defined")
        view = {k: v for k, v in self.ids[pid].items() if k != "data"}
        if self.ids[pid].get("type") == "dns":
            view["has-data"] = 1 if self.ids[pid].get("data") else 0
        return {**view, "plugin": pid, "digest": self.digest}


def check_plugin_options(ptype: str, values: Mapping[str, Any], create: bool
                         ) -> dict[str, str]:
    """Per-parameter errors of a plugin's options for its type (PVE's check_config)."""
    errors = {}
    allowed = PLUGIN_OPTIONS[ptype]
    for key in values:
        if key not in allowed:
            errors[key] = f"property is not allowed for plugin type '{ptype}'"
    if create:
        for key in REQUIRED.get(ptype, ()):
            if values.get(key) in (None, ""):
                errors[key] = "property is missing and it is not optional"
    return errors


# ---------------------------------------------------------------- the etcd records


class AcmeConfig:
    """Accounts and plugins in etcd (module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def account_names(self) -> list[str]:
        entries = await self.store.get_prefix(ACCOUNTS)
        names = [e.key[len(ACCOUNTS):] for e in entries]
        return sorted(n for n in names if node_config.is_configid(n))

    async def account(self, name: str) -> dict[str, Any] | None:
        value = await self.store.get_value(account_key(name))
        return dict(value) if value else None

    async def create_account(self, name: str, record: Mapping[str, Any]) -> bool:
        return await self.store.create(account_key(name), dict(record))

    async def put_account(self, name: str, record: Mapping[str, Any]) -> None:
        await self.store.put(account_key(name), dict(record))

    async def retire_account(self, name: str, record: Mapping[str, Any]) -> str | None:
        """PVE's rename of a deactivated account file to `_deactivated_<name>_<i>`."""
        for i in range(101):
            candidate = f"_deactivated_{name}_{i}"
            entry = await self.store.get(account_key(candidate))
            if entry is None:
                cur = await self.store.get(account_key(name))
                rev = 0 if cur is None else cur.mod_revision
                if await self.store.commit({account_key(name): rev,
                                            account_key(candidate): 0},
                                           {account_key(candidate): dict(record)},
                                           [account_key(name)]):
                    return candidate
        return None

    async def plugins(self) -> Plugins:
        entry = await self.store.get(PLUGINS)
        raw = "" if entry is None else str(entry.value)
        return Plugins(parse_plugins(raw), raw, 0 if entry is None else entry.mod_revision)

    async def change_plugins(self, mutate: Callable[[Plugins], dict[str, dict[str, Any]]]
                             ) -> None:
        """`mutate(current) -> new ids`, written if nobody changed the file meanwhile."""
        for _ in range(10):
            cur = await self.plugins()
            raw = format_plugins(mutate(cur))
            if await self.store.commit({PLUGINS: cur.revision}, {PLUGINS: raw}):
                return
        raise Conflict(f"{PLUGINS}: too many concurrent updates")


# ---------------------------------------------------------------- node config


def get_acme_conf(values: Mapping[str, Any], plugins: Plugins | None) -> dict[str, Any]:
    """PVE's get_acme_conf: `{account, domains: {domain: {plugin, alias?, _configkey}}}`;
    AcmeError with PVE's texts (duplicates, a plugin that does not exist)."""
    res: dict[str, Any] = {"account": "default", "domains": {}}
    if values.get("acme"):
        acme = node_config.parse_property(node_config.ACME, str(values["acme"]))
        res["account"] = acme.get("account") or "default"
        for domain in (d.lower() for d in str(acme.get("domains") or "").split(";") if d):
            if domain in res["domains"]:
                raise AcmeError(f"duplicate domain '{domain}' in ACME config properties")
            res["domains"][domain] = {"plugin": "standalone", "_configkey": "acme"}
    for i in range(node_config.MAX_DOMAINS + 1):
        rec = values.get(f"acmedomain{i}")
        if not rec:
            continue
        parsed = node_config.parse_property(node_config.ACME_DOMAIN, str(rec))
        domain = str(parsed.pop("domain")).lower()
        if domain in res["domains"]:
            raise AcmeError(f"duplicate domain '{domain}' in ACME config properties "
                            f"'acmedomain{i}' and '{res['domains'][domain]['_configkey']}'")
        plugin = parsed.get("plugin") or "standalone"
        if plugin != "standalone" and (plugins is None or plugin not in plugins.ids):
            raise AcmeError(f"plugin '{plugin}' for domain '{domain}' not found!")
        res["domains"][domain] = {**parsed, "plugin": plugin, "_configkey": f"acmedomain{i}"}
    return res


def renewal_due(has_domains: bool, custom_exists: bool, not_after: float | None,
                now: float) -> tuple[bool, str | None]:
    """pveupdate's daily decision: (renew?, the line to log; None: nothing to say)."""
    if not has_domains:
        return False, None
    if not custom_exists or not_after is None:
        return False, ("ACME config found for node, but no custom certificate exists. "
                       "Skipping ACME renewal until initial certificate has been deployed.")
    if not_after < now + RENEW_WITHIN:
        days = max(0, int((not_after - now) // 86400))
        return True, f"custom certificate ends in {days} days (within 30): renewing it"
    return False, "Custom certificate does not expire soon, skipping ACME renewal."


# ---------------------------------------------------------------- the protocol


def trust(pki_dir: Path) -> bool | str:
    """What the client verifies the CA's TLS certificate with (module docstring)."""
    path = pki_dir / TRUST_FILE
    return str(path) if path.exists() else True


def _errtext(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


def directory_meta(url: str, verify: bool | str) -> dict[str, Any]:
    """The directory's `meta` object (PVE's get_meta)."""
    from acme import client

    net = client.ClientNetwork(None, verify_ssl=verify, user_agent="binome")  # type: ignore[arg-type]
    try:
        body = net.get(url).json()
    except Exception as exc:
        raise AcmeError(f"failed to get ACME directory '{url}': {_errtext(exc)}") from None
    meta = body.get("meta") if isinstance(body, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


class Session:
    """One account's connection to its CA (the `acme` library's ClientV2)."""

    def __init__(self, record: Mapping[str, Any], verify: bool | str) -> None:
        import josepy
        from acme import client, messages
        from cryptography.hazmat.primitives import serialization

        self.messages = messages
        key = serialization.load_pem_private_key(str(record["key"]).encode(), password=None)
        self.jwk = josepy.JWKRSA(key=key)
        regr = None
        if record.get("location"):
            regr = messages.RegistrationResource(
                uri=record["location"],
                body=messages.Registration.from_json(record.get("account") or {}))
        self.net = client.ClientNetwork(self.jwk, account=regr, verify_ssl=verify,  # type: ignore[arg-type]
                                        user_agent="binome")
        try:
            directory = client.ClientV2.get_directory(str(record["directory"]), self.net)
        except Exception as exc:
            raise AcmeError(f"failed to get ACME directory '{record['directory']}': "
                            f"{_errtext(exc)}") from None
        self.client = client.ClientV2(directory, self.net)
        self.regr = regr

    def register(self, contact: list[str], tos_url: str | None,
                 eab: tuple[str, str] | None) -> tuple[str, dict[str, Any]]:
        m = self.messages
        binding = None
        if eab is not None:
            binding = m.ExternalAccountBinding.from_data(
                account_public_key=self.jwk.public_key(), kid=eab[0], hmac_key=eab[1],
                directory=self.client.directory)
        reg = m.NewRegistration(contact=tuple(contact),
                                terms_of_service_agreed=True if tos_url else None,
                                external_account_binding=binding)
        regr = self.client.new_account(reg)
        self.regr = regr
        return str(regr.uri), regr.body.to_json()

    def update(self, contact: list[str] | None) -> dict[str, Any]:
        assert self.regr is not None
        if contact:
            regr = self.client.update_registration(
                self.regr, self.messages.Registration(contact=tuple(contact)))
        else:
            regr = self.client.query_registration(self.regr)
        self.regr = regr
        return dict(regr.body.to_json())

    def deactivate(self) -> dict[str, Any]:
        assert self.regr is not None
        regr = self.client.deactivate_registration(self.regr)
        return dict(regr.body.to_json())

    def revoke(self, chain_pem: str) -> None:
        from cryptography import x509

        cert = x509.load_pem_x509_certificates(chain_pem.encode())[0]
        self.client.revoke(cert, 0)

    def order(self, domains: Mapping[str, Mapping[str, Any]],
              plugins: Mapping[str, Mapping[str, Any]], bind: str, port: int,
              log: Callable[[str], None]) -> tuple[str, str]:
        """PVE's order_certificate; returns the chain and its new key (PEM)."""
        from acme import challenges, crypto_util
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        m = self.messages
        log("Creating CSR")
        key = rsa.generate_private_key(public_exponent=65537, key_size=CERT_KEY_BITS)
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        csr = crypto_util.make_csr(key_pem, list(domains))
        log("Placing ACME order")
        orderr = self.client.new_order(csr)
        log(f"Order URL: {orderr.uri}")
        for authzr in orderr.authorizations:
            log("")
            log(f"Getting authorization details from '{authzr.uri}'")
            domain = str(authzr.body.identifier.value).lower()
            if authzr.body.status == m.STATUS_VALID:
                log(f"{domain} is already validated!")
                continue
            log(f"The validation for {domain} is pending!")
            conf = domains.get(domain)
            if conf is None:
                raise AcmeError(f"no config for domain '{domain}'")
            pid = str(conf.get("plugin") or "standalone")
            plugin = plugins.get(pid)
            if plugin is None:
                raise AcmeError(f"plugin '{pid}' for domain '{domain}' not found!")
            if plugin.get("type") != "standalone":
                raise AcmeError(f"plugin '{pid}' for domain '{domain}' is of type "
                                f"'{plugin.get('type')}': binome validates with 'standalone' "
                                "(http-01) plugins only")
            challb = next((c for c in authzr.body.challenges
                           if isinstance(c.chall, challenges.HTTP01)), None)
            if challb is None:
                raise AcmeError("no http-01 challenge defined in authorization")
            response, validation = challb.response_and_validation(self.jwk)
            log("Setting up webserver")
            with ChallengeServer(bind, port, challb.chall.encode("token"), validation):
                log("Triggering validation")
                self.client.answer_challenge(challb, response)
                deadline = time.monotonic() + 120
                while True:
                    time.sleep(1)
                    authzr, _ = self.client.poll(authzr)
                    status = authzr.body.status
                    if status == m.STATUS_VALID:
                        log(f"Status is 'valid', domain '{domain}' OK!")
                        break
                    if status != m.STATUS_PENDING or time.monotonic() > deadline:
                        detail = "; ".join(str(c.error) for c in authzr.body.challenges
                                           if c.error is not None)
                        raise AcmeError(f"validating challenge '{authzr.uri}' failed - "
                                        f"status: {status}" + (f" ({detail})" if detail
                                                               else ""))
                    log("Status is still 'pending', trying again in 1 seconds")
        log("")
        log("All domains validated!")
        log("")
        log("Checking order status")
        log("Order is ready, finalizing order")
        deadline_dt = dt.datetime.now() + dt.timedelta(seconds=120)
        orderr = self.client.finalize_order(orderr, deadline_dt)
        log("valid!")
        log("")
        log("Downloading certificate")
        return str(orderr.fullchain_pem), key_pem.decode()


def new_account_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=ACCOUNT_KEY_BITS)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


class _Http6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


class ChallengeServer:
    """PVE's standalone plugin: an HTTP server on `bind`:`port` answering the one token."""

    def __init__(self, bind: str, port: int, token: str, validation: str) -> None:
        path = f"/.well-known/acme-challenge/{token}"
        body = validation.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == path:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_error(404, "Not found.")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server_class: type[http.server.ThreadingHTTPServer] = http.server.ThreadingHTTPServer
        if ":" in bind:       # an IPv6 address (`::`: both families, the kernel's default)
            server_class = _Http6Server
        try:
            self.server = server_class((bind, port), Handler)
        except OSError as exc:
            raise AcmeError(f"Failed to initialize HTTP daemon: {exc.strerror}") from None
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="acme-http-01")

    def __enter__(self) -> ChallengeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
