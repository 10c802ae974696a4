"""`binome`: the command line. Subcommands come from the API method registry.

Each registered method with a CLI binding becomes `binome <group> <verb>`,
with its parameters as options (or positionals), its description as help, and
its text rendering; `binome api get|create|set|delete PATH` reaches any method
(like `pvesh`). Commands that start a task wait for it and print its log.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

from binome.cli import commands as command_table
from binome.cli import logs as logs_cli
from binome.cli.client import ApiCallError, Client
from binome.cli.commands import Command, Option
from binome.cli.format import render
from binome.tasks.upid import InvalidUpid, Upid

OUTPUT_FORMATS = ("text", "json", "json-pretty")
API_VERBS = {"get": "GET", "create": "POST", "set": "PUT", "delete": "DELETE"}


class Parser(argparse.ArgumentParser):
    """argparse, except that an error never echoes what was typed after an option name:
    an unrecognized word may be a secret (`binome user add bob@pve hunter2`)."""

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            names = sorted({a.split("=", 1)[0] for a in extras if a.startswith("-")})
            words = len([a for a in extras if not a.startswith("-")])
            what = ", ".join(names)
            if words:
                what += (", " if what else "") + (f"{words} unexpected word"
                                                  f"{'s' if words > 1 else ''} (not shown)")
            self.error(f"unrecognized arguments: {what}")
        return parsed

    def error(self, message: str) -> NoReturn:
        # argparse names `--opt=VALUE` as typed (an ambiguous prefix, an unknown option)
        super().error(re.sub(r"(--?[A-Za-z][\w-]*)=\S*", r"\1=...", message))


class _SecretOnCommandLine(argparse.Action):
    """`--password` alone asks for it on the terminal (pveum's interactive form);
    `--password X` is refused without echoing X (it would be in the shell's history and
    the process list)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if values is None:
            setattr(namespace, self.dest, True)
            return
        name = self.metavar
        parser.error(f"{option_string}: a {name} is not taken on the command line (it would "
                     f"show in the shell history and the process list): give --{name} "
                     f"without a value to be asked for it, or --{name}-file FILE "
                     f"(--{name}-file - reads it from standard input)")


def _common_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("connection and output")
    s = argparse.SUPPRESS
    g.add_argument("--output-format", choices=OUTPUT_FORMATS, default=s,
                   help="output format (default: text)")
    g.add_argument("--state-dir", default=s, help="local node state directory "
                   "(default: $BINOME_STATE_DIR or /var/lib/binome)")
    g.add_argument("--socket", default=s, help="local API socket (default: STATE_DIR/run/api.sock)")
    g.add_argument("--remote", dest="host", default=s, metavar="HOST",
                   help="talk to a remote node's API over HTTPS instead")
    g.add_argument("--remote-port", dest="remote_port", type=int, default=s,
                   help="remote API port (default 8006)")
    g.add_argument("--remote-user", dest="login_user", default=s,
                   help="remote login (user@realm, default root@pam)")
    g.add_argument("--remote-password-file", dest="login_password_file", default=s,
                   help="file holding the remote password")
    g.add_argument("--remote-fingerprint", dest="login_fingerprint", default=s,
                   help="pin the remote certificate's SHA-256 fingerprint")
    g.add_argument("--no-wait", action="store_true", default=s,
                   help="print the UPID of a started task instead of waiting for it")
    g.add_argument("--yes", action="store_true", default=s,
                   help="confirm a dangerous operation without asking")


def _opt(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    return getattr(args, name, default)


def _bool(text: str) -> str:
    if text.lower() in ("1", "true", "yes", "on"):
        return "1"
    if text.lower() in ("0", "false", "no", "off"):
        return "0"
    raise argparse.ArgumentTypeError(f"expected 0/1, got {text!r}")


def _add_param(parser: argparse.ArgumentParser, p: Option, positional: bool,
               required_group: Any = None) -> None:
    name, help_text = p.name, p.help
    dest = "p_" + name.replace("-", "_")
    if p.secret:
        parser.add_argument(f"--{name}-file", dest=dest + "_file", metavar="FILE",
                            help=f"read {name} from FILE ('-': standard input) "
                                 f"({help_text})")
        parser.add_argument(f"--{name}", dest=dest + "_ask", nargs="?",
                            action=_SecretOnCommandLine, metavar=name,
                            help=f"ask for {name} on the terminal (never give it here)")
        return
    if positional:
        parser.add_argument(dest, metavar=name.upper(), nargs="?" if p.optional else None,
                            help=help_text)
    elif p.type == "boolean":
        parser.add_argument(f"--{name}", dest=dest, nargs="?", const="1", type=_bool,
                            metavar="0|1", help=help_text)
    elif p.type == "array":
        # PVE's array parameters: the option once per item (`--target a --target b`)
        parser.add_argument(f"--{name}", dest=dest, action="append", metavar=name.upper(),
                            help=f"{help_text or ''} (repeatable)".strip())
    elif not p.optional and required_group is not None:
        # a parameter the method cannot do without: an option the command requires
        required_group.add_argument(f"--{name}", dest=dest, choices=p.enum,
                                    metavar=name.upper(), help=help_text, required=True)
    else:
        parser.add_argument(f"--{name}", dest=dest, choices=p.enum, metavar=name.upper(),
                            help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="binome", description="binome cluster command line")
    _common_options(parser)
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND",
                                   parser_class=Parser)
    nodes: dict[tuple[str, ...], Any] = {(): groups}
    parsers: dict[tuple[str, ...], argparse.ArgumentParser] = {}
    for spec in command_table.load():
        for depth in range(1, len(spec.words)):
            prefix = spec.words[:depth]
            if prefix not in nodes:
                sub = nodes[prefix[:-1]].add_parser(prefix[-1], help=f"{prefix[-1]} commands")
                parsers[prefix] = sub
                nodes[prefix] = sub.add_subparsers(dest="_".join(prefix) + "_cmd",
                                                   required=True, metavar="COMMAND",
                                                   parser_class=Parser)
        leaf = nodes[spec.words[:-1]].add_parser(
            spec.words[-1], help=spec.help or spec.description,
            description=f"{spec.description}\n\nAPI: {spec.http_method} {spec.path}",
            formatter_class=argparse.RawDescriptionHelpFormatter)
        _common_options(leaf)
        fixed = dict(spec.fixed)
        required = leaf.add_argument_group("required options")
        # positionals in the spec's order (`qmrestore ARCHIVE VMID`), not the method's
        by_name = {p.name: p for p in spec.options}
        ordered = [by_name[n] for n in spec.positional if n in by_name] + [
            p for p in spec.options if p.name not in spec.positional]
        for p in ordered:
            if p.name in fixed:
                continue
            if p.name == "node" and p.name not in spec.positional:
                leaf.add_argument("--node", dest="p_node", help="node (default: this node)")
                continue
            _add_param(leaf, p, p.name in spec.positional, required)
        leaf.set_defaults(_spec=spec)
    if ("vm",) in nodes:
        console = nodes[("vm",)].add_parser(
            "console", help="attach to the VM's serial console (Ctrl-] leaves)",
            description="Serial console through the API websocket. Without a terminal, "
                        "standard input is sent and output copied until --expect is seen.")
        _common_options(console)
        console.add_argument("p_vmid", metavar="VMID", type=int)
        console.add_argument("--node", dest="p_node", help="node (default: this node)")
        console.add_argument("--expect", help="exit 0 once this text was printed")
        console.add_argument("--timeout", type=float, default=30.0,
                             help="give up after this many seconds (scripted mode)")
        console.set_defaults(_console=True)
    logs_cli.add_parser(groups, _common_options)
    api = groups.add_parser("api", help="call any API path (like pvesh)")
    api_verbs = api.add_subparsers(dest="api_cmd", required=True, metavar="VERB",
                                   parser_class=Parser)
    for verb in API_VERBS:
        vp = api_verbs.add_parser(verb, help=f"{API_VERBS[verb]} an API path")
        _common_options(vp)
        vp.add_argument("path", help="API path, e.g. /cluster/status")
        vp.add_argument("params", nargs="*", metavar="KEY=VALUE",
                        help="parameters; a secret as KEY@FILE ('-': standard input)")
        vp.set_defaults(_api_verb=verb)
    # `binome lab ...` is the lab's own program, `binome-lab` (git-style external command):
    # the production CLI never imports the lab. Listed here so `binome --help` shows it.
    lab = groups.add_parser("lab", add_help=False,
                            help=f"faults for a running `make demo` (root, local; runs "
                                 f"{LAB_PROGRAM}, see `binome lab --help`)")
    lab.add_argument("lab_args", nargs=argparse.REMAINDER)
    return parser


LAB_PROGRAM = "binome-lab"


def _run_lab(args: list[str]) -> int:
    """Replace this process by `binome-lab ARGS` (next to this interpreter, else on PATH)."""
    beside = Path(sys.executable).parent / LAB_PROGRAM
    program = str(beside) if beside.is_file() else shutil.which(LAB_PROGRAM)
    if program is None:
        print(f"binome lab: {LAB_PROGRAM} is not installed (lab tooling, not part of a "
              f"production install)", file=sys.stderr)
        return 2
    os.execv(program, [program, *args])
    return 0   # not reached: execv replaces the process or raises


def _socket_path(args: argparse.Namespace) -> str:
    if _opt(args, "socket"):
        return args.socket
    if os.environ.get("BINOME_SOCKET"):
        return os.environ["BINOME_SOCKET"]
    state = _opt(args, "state_dir") or os.environ.get("BINOME_STATE_DIR", "/var/lib/binome")
    return str(Path(state) / "run" / "api.sock")


def _read_secret(path: str | None, name: str, required: bool) -> str | None:
    if path == "-":
        return sys.stdin.readline().rstrip("\n")
    if path:
        try:
            return Path(path).read_text().rstrip("\n")
        except OSError as exc:
            raise SystemExit(f"binome: cannot read {name} file {path}: {exc.strerror}") from None
    if not required:
        return None
    if sys.stdin.isatty():
        return getpass.getpass(f"{name}: ")
    raise SystemExit(f"binome: --{name}-file is required (no terminal to ask on; "
                     f"--{name}-file - reads it from standard input)")


def make_client(args: argparse.Namespace) -> Client:
    host = _opt(args, "host")
    if host is None:
        return Client(socket_path=_socket_path(args))
    client = Client(host=host, port=_opt(args, "remote_port", 8006),
                    fingerprint=_opt(args, "login_fingerprint"))
    user = _opt(args, "login_user", "root@pam")
    password = _read_secret(_opt(args, "login_password_file"), "remote-password", True)
    assert password is not None
    client.login(user, password)
    return client


def _confirm(spec: Command, args: argparse.Namespace) -> None:
    if not spec.confirm:
        return
    node = getattr(args, "p_node", None) or "the node"
    print(f"WARNING: {spec.confirm.replace('{node}', str(node))}", file=sys.stderr)
    if _opt(args, "yes"):
        return
    if not sys.stdin.isatty():
        raise SystemExit("binome: refusing without --yes (no terminal to confirm on)")
    if input("Type 'yes' to continue: ").strip() != "yes":
        raise SystemExit("binome: aborted")


def _collect(spec: Command, args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for p in spec.options:
        name = p.name
        dest = "p_" + name.replace("-", "_")
        if p.secret:
            value = _read_secret(getattr(args, dest + "_file", None), name,
                                 not p.optional or bool(getattr(args, dest + "_ask", False)))
        else:
            value = getattr(args, dest, None)
        if value is not None:
            params[name] = value
    params.update(dict(spec.fixed))
    if any(p.name == "node" for p in spec.options) and "node" not in params:
        upid = params.get("upid")
        try:
            params["node"] = Upid.parse(upid).node if upid else "localhost"
        except InvalidUpid:
            params["node"] = "localhost"
    return params


def _split(spec: Command, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    path_params = spec.path_params
    path = spec.path
    for name in path_params:
        path = path.replace("{" + name + "}", quote(str(params[name]), safe=""))
    return path, {k: v for k, v in params.items() if k not in path_params}


def _print_error(exc: ApiCallError) -> int:
    print(f"binome: {exc.reason} ({exc.status})" if exc.status else f"binome: {exc.reason}",
          file=sys.stderr)
    for name, text in sorted(exc.errors.items()):
        print(f"  {name}: {text}", file=sys.stderr)
    return 2 if exc.status == 400 else 1


FENCE_VERBS = {"list", "config", "add", "set", "remove", "test", "node", "confirm-off",
               "power-on"}


# pveum's one-word aliases (PVE/CLI/pveum.pm), and its `user token delete`
PVEUM_ALIASES: dict[str, tuple[str, ...]] = {
    "useradd": ("user", "add"), "usermod": ("user", "modify"), "userdel": ("user", "delete"),
    "groupadd": ("group", "add"), "groupmod": ("group", "modify"),
    "groupdel": ("group", "delete"),
    "roleadd": ("role", "add"), "rolemod": ("role", "modify"), "roledel": ("role", "delete"),
    "aclmod": ("acl", "modify"), "acldel": ("acl", "delete"),
}
_ONE_DASH_LONG = re.compile(r"-[a-z]{2}[a-z0-9-]*(=.*)?", re.S)
_SHORT_FLAGS = set("fnh")       # the single-letter options (logs' -f -n, -h)


def _pve_forms(argv: list[str]) -> list[str]:
    """PVE's CLI forms: one-dash long options (`-groups ops`, `-role X`: argparse's prefix
    matching then takes `--role` for `--roles` as Getopt::Long does), pveum's one-word
    aliases (`useradd`, `aclmod`, ...), `user token delete` for `user token remove` and
    `user token permissions USERID TOKENID` for `user permissions USERID!TOKENID`.
    Single-letter options (`-n 20`, bundled `-fn`) are left as they are, and anything
    after `--`."""
    out: list[str] = []
    for i, a in enumerate(argv):
        if a == "--":
            out += argv[i:]
            break
        name = a.split("=")[0][1:]
        # `-fn`: bundled single-letter options of `binome logs`, not a long one
        out.append("-" + a if _ONE_DASH_LONG.fullmatch(a) and set(name) - _SHORT_FLAGS
                   else a)
    words = [i for i, a in enumerate(out) if not a.startswith("-")]
    if words and out[words[0]] in PVEUM_ALIASES:
        i = words[0]
        out = [*out[:i], *PVEUM_ALIASES[out[i]], *out[i + 1:]]
        words = [i for i, a in enumerate(out) if not a.startswith("-")]
    if len(words) >= 3 and [out[i] for i in words[:3]] == ["user", "token", "delete"]:
        out[words[2]] = "remove"
    if len(words) >= 5 and [out[i] for i in words[:3]] == ["user", "token", "permissions"]:
        # pveum's `user token permissions USERID TOKENID`: the token's full id
        user, token = out[words[3]], out[words[4]]
        out = [a for i, a in enumerate(out) if i not in words[:5]]
        out[words[0]:words[0]] = ["user", "permissions", f"{user}!{token}"]
    return out


def _aliases(argv: list[str]) -> list[str]:
    """Short forms: `binome fence NODE` (like fence_node) is `binome fence node NODE`;
    `binome ha node-maintenance ...` is `binome ha crm-command node-maintenance ...`;
    PVE's CLI forms (`_pve_forms`)."""
    argv = _pve_forms(argv)
    words = [i for i, a in enumerate(argv) if not a.startswith("-")]
    for flag in ("--confirm-off", "--power-on"):
        if len(words) >= 2 and argv[words[0]] == "fence" and flag in argv \
                and argv[words[1]] not in FENCE_VERBS:
            # `binome fence NODE --confirm-off` is `binome fence confirm-off NODE`
            rest = [a for a in argv[words[0] + 1:] if a != flag]
            return [*argv[:words[0] + 1], flag[2:], *rest]
    if len(words) >= 2 and argv[words[0]] == "fence" and words[1] == words[0] + 1 \
            and argv[words[1]] not in FENCE_VERBS:
        return [*argv[:words[1]], "node", *argv[words[1]:]]
    # `binome ha node-maintenance enable N` is `binome ha crm-command node-maintenance ...`
    if len(words) >= 2 and argv[words[0]] == "ha" and argv[words[1]] == "node-maintenance":
        return [*argv[:words[1]], "crm-command", *argv[words[1]:]]
    return argv


_SECRET_KEY = re.compile(r"(.*password|.*secret|otp|totp|client-key)", re.I)


def _api_params(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """`binome api` parameters: KEY=VALUE, or KEY@FILE (the value read from FILE, '-':
    standard input) which a secret needs: a password or secret as KEY=VALUE is refused
    (it would show in the shell history and the process list). Nothing is echoed."""
    params: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if eq and "@" not in key:
            if _SECRET_KEY.fullmatch(key):
                parser.error(f"{key}: a secret is not taken on the command line: give "
                             f"{key}@FILE ({key}@- reads it from standard input)")
            params[key] = value
            continue
        key, at, path = item.partition("@")
        if not at or not key or not path:
            parser.error("parameters must be KEY=VALUE or KEY@FILE (one is neither, not "
                         "shown)")
        params[key] = _read_secret(path, key, True) or ""
    return params


def run(argv: list[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["lab"]:   # lab-only commands act on the demo's processes directly
        return _run_lab(words[1:])
    parser = build_parser()
    args = parser.parse_args(_aliases(words))
    output = _opt(args, "output_format", "text")
    api_params = _api_params(parser, args.params) if hasattr(args, "_api_verb") else {}
    try:
        client = make_client(args)
        if hasattr(args, "_console"):
            return _console(client, args)
        if hasattr(args, "_log"):
            return logs_cli.run(client, args, output)
        if hasattr(args, "_api_verb"):
            data = client.call(API_VERBS[args._api_verb], args.path, api_params)
            formatter = None
        else:
            spec = args._spec
            _confirm(spec, args)
            path, params = _split(spec, _collect(spec, args))
            if spec.name == "volume_events":
                return _volume_events(client, path, params, output)
            if spec.name == "storage_upload":   # FILENAME: the local file, sent as it is
                data = client.upload(path, {k: v for k, v in params.items()
                                            if k != "filename"}, str(params["filename"]))
            else:
                data = client.call(spec.http_method, path, params)
            formatter = spec.formatter
        if isinstance(data, str) and data.startswith("UPID:") and not _opt(args, "no_wait"):
            return _wait(client, data, output)
        text = render(data, formatter, output)
        if text:
            print(text)
        return 0
    except ApiCallError as exc:
        return _print_error(exc)
    except (ConnectionError, FileNotFoundError, OSError) as exc:
        print(f"binome: cannot reach the node's API: {exc}", file=sys.stderr)
        return 1


def _console(client: Client, args: argparse.Namespace) -> int:
    import asyncio

    from binome.cli.console import run_console

    if client.host is None:
        socket_path, base, cookies, headers = client.socket_path, "http://localhost", {}, {}
    else:
        socket_path, cookies = None, {"PVEAuthCookie": client.ticket or ""}
        base = f"https://{client.host}:{client.port}"
        headers = {"CSRFPreventionToken": client.csrf or ""}
    return asyncio.run(run_console(socket_path, base + "/api2/json", args.p_vmid,
                                   args.p_node or "localhost", args.expect, args.timeout,
                                   cookies, headers, _opt(args, "login_fingerprint")))


def _volume_events(client: Client, path: str, params: dict[str, Any], output: str) -> int:
    """`binome volume events`: drbdsetup events2 lines (or one JSON object per line)."""
    from binome.storage.replica.core.events import format_line

    now = str(params.get("now", "0")).lower() in ("1", "true", "yes", "on")
    items = client.call("GET", path, params) if now else client.stream(path, params)
    try:
        for ev in items:
            print(json.dumps(ev) if output.startswith("json") else format_line(ev), flush=True)
    except KeyboardInterrupt:
        pass
    return 0


def _wait(client: Client, upid: str, output: str) -> int:
    text = output == "text"
    if text:
        print(f"task {upid}", file=sys.stderr, flush=True)
    status = client.wait_task(upid, on_line=(lambda t: print(t, flush=True)) if text else None)
    if not text:
        print(render(status, None, output))
    return 0 if status.get("exitstatus") == "OK" else 1


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
