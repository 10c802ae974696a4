#!/usr/bin/env python3
"""Extract the Proxmox VE API endpoints that three automation clients call, from their source.

Reads bare git mirrors (no work tree needed) of:
  ansible   ansible-collections/community.proxmox   plugins/**/*.py (proxmoxer chains, by AST)
  bpg       bpg/terraform-provider-proxmox          proxmox/**/*.go (DoRequest calls)
  telmate   Telmate/proxmox-api-go (the library)    **/*.go (URL literals and the call using them)
            + Telmate/terraform-provider-proxmox    (its own direct API calls, if any)
and writes docs/data/client-endpoints/{ansible,bpg,telmate}.txt: a header naming the
repository and commit, then one `METHOD /path/{template}<TAB>source files` line per endpoint.

Path variables are written `{name}` with PVE's usual parameter name for the segment before
(nodes/{node}, qemu/{vmid}, ...). A guest-type variable (qemu or lxc) gives both paths.
This is static extraction: a call whose path is built at run time in a way not followed here
is missed, and a few entries come from SUPPLEMENT (each with its source file and line).

Usage: tools/extract_client_endpoints.py MIRROR_ROOT [OUT_DIR]
  MIRROR_ROOT holds `owner+name/repo` git directories (what the `fetch` tool creates).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPOS = {
    "ansible": ["ansible-collections/community.proxmox"],
    "bpg": ["bpg/terraform-provider-proxmox"],
    "telmate": ["Telmate/proxmox-api-go", "Telmate/terraform-provider-proxmox"],
}
NOTES = {
    "telmate": "every endpoint of proxmox-api-go (the provider's API library), whether the "
               "provider reaches it or not, plus the provider's own calls",
    "ansible": "every module, inventory and connection plugin of the collection",
}
VAR = "{}"
GUEST = "{guesttype}"

# PVE's parameter name for a variable segment, by the literal segment before it
PARAM_AFTER = {
    "nodes": "node", "qemu": "vmid", "lxc": "vmid", "storage": "storage", "content": "volume",
    "snapshot": "snapname", "tasks": "upid", "pools": "poolid", "users": "userid",
    "token": "tokenid", "groups": "groupid", "roles": "roleid", "domains": "realm",
    "resources": "sid", "backup": "id", "server": "id", "rules": "rule", "ipset": "name",
    "aliases": "name", "agent": "command", "status": "command", "network": "iface",
    "tfa": "userid", "zones": "zone", "vnets": "vnet", "subnets": "subnet",
    "controllers": "controller", "replication": "id", "account": "name", "plugins": "id",
    "mapping": "type", "pci": "id", "usb": "id", "dir": "id", "acl": "path", "disks": "disk",
    "ha": "sid",
}

# entries static extraction cannot see, each with where it is in the source
SUPPLEMENT: dict[str, list[tuple[str, str, str]]] = {
    "bpg": [
        # vms.go DeleteVM: path := "?destroy-unreferenced-disks=1&purge=1"; ExpandPath(path)
        ("DELETE", "nodes/{}/qemu/{}", "proxmox/nodes/vms/vms.go"),
        ("DELETE", "nodes/{}/lxc/{}", "proxmox/nodes/containers/containers.go"),
        # tasks.go DeleteTask: path from c.baseTaskPath(upid)
        ("DELETE", "nodes/{}/tasks/{}", "proxmox/nodes/tasks/tasks.go"),
        # ceph_pool.go / zfs.go: path := c.ExpandPath(name); path = path + "?" + encoded
        ("DELETE", "nodes/{}/ceph/pool/{}", "proxmox/nodes/ceph/pool/ceph_pool.go"),
        ("DELETE", "nodes/{}/disks/zfs/{}", "proxmox/nodes/disks/zfs/zfs.go"),
    ],
    "telmate": [
        # config__qemu.go: urlBuilder "/nodes/" + node + urlPart ("/qemu/ID/config"), putRawRetry
        ("PUT", "nodes/{}/qemu/{}/config", "proxmox/config__qemu.go"),
        # config__lxc__new.go: urlBuilder "/nodes/" node "/lxc/" id "/config", putRawRetry
        ("PUT", "nodes/{}/lxc/{}/config", "proxmox/config__lxc__new.go"),
    ],
}


def git(gitdir: Path, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={gitdir}", *args], check=True,
                          capture_output=True, text=True).stdout


def files(gitdir: Path, suffix: str, under: str = "") -> list[tuple[str, str]]:
    names = git(gitdir, "ls-tree", "-r", "--name-only", "HEAD").split("\n")
    out = []
    for n in names:
        if n.endswith(suffix) and n.startswith(under) and not n.endswith("_test.go") \
                and "/mock" not in n.lower() and "/test" not in n.lower():
            out.append((n, git(gitdir, "show", f"HEAD:{n}")))
    return out


def split_literal(s: str) -> list[str]:
    s = s.split("?", 1)[0]
    return [p for p in s.split("/") if p]


# --- ansible: proxmoxer attribute chains ------------------------------------------------

METHODS = {"get": "GET", "post": "POST", "put": "PUT", "delete": "DELETE",
           "create": "POST", "set": "PUT"}
ROOT_ATTRS = {"proxmox_api"}
ROOT_CALLS = {"_get_proxmox"}


def is_request(node: ast.expr) -> bool:
    """`X.get(...)`, `X.post(...)` ...: a request, whose answer is no path."""
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
        and node.func.attr in METHODS


class Chains:
    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.consts: dict[str, str] = {}
        self.helpers: dict[str, tuple[list[str], bool]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                t = node.targets[0]
                name = (t.attr if isinstance(t, ast.Attribute)
                        else t.id if isinstance(t, ast.Name) else None)
                v = node.value
                if isinstance(v, ast.IfExp):
                    v = v.orelse
                if name and isinstance(v, ast.Constant) and isinstance(v.value, str):
                    self.consts[name] = v.value

    def seg(self, a: ast.expr) -> list[str]:
        if isinstance(a, ast.Constant) and isinstance(a.value, str):
            return split_literal(a.value)
        if isinstance(a, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else VAR for v in a.values)
            return split_literal(text)
        if isinstance(a, ast.Constant) and isinstance(a.value, int):
            return [VAR]
        if isinstance(a, ast.Attribute) and a.attr in self.consts:
            return [self.consts[a.attr]]
        if "type" in ast.unparse(a).lower():   # vm_type, vm["type"], resource_type: qemu or lxc
            return [GUEST]
        return [VAR]

    def chain(self, node: ast.expr, env: dict[str, list[str]]) -> list[str] | None:
        if isinstance(node, ast.Attribute):
            if node.attr in ROOT_ATTRS:
                return []
            base = self.chain(node.value, env)
            return None if base is None else [*base, node.attr]
        if isinstance(node, ast.Name):
            if node.id in ROOT_ATTRS:
                return []
            return env.get(node.id)
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id == "getattr" and len(node.args) >= 2:
                base = self.chain(node.args[0], env)
                return None if base is None else [*base, *self.seg(node.args[1])]
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
                    and f.value.id == "self":
                if f.attr in ROOT_CALLS:
                    return []
                if f.attr in self.helpers:
                    # `return base if not name else base(name)`: the call's arguments extend it
                    helper, extend = self.helpers[f.attr]
                    if not extend:
                        return list(helper)
                    return [*helper, *(x for a in node.args for x in self.seg(a))]
            if isinstance(f, ast.Attribute) and f.attr in METHODS:
                return None   # a request's answer, not a path
            base = self.chain(f, env)
            if base is None:
                return None
            for a in node.args:
                base = [*base, *self.seg(a)]
            return base
        return None

    def run(self) -> list[tuple[str, list[str], int]]:
        found: list[tuple[str, list[str], int]] = []
        funcs = [n for n in ast.walk(self.tree)
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for _ in range(3):   # helpers returning chains, to a fixed point
            for fn in funcs:
                env = self.env(fn)
                for n in ast.walk(fn):
                    if isinstance(n, ast.Return) and n.value is not None:
                        v = n.value.body if isinstance(n.value, ast.IfExp) else n.value
                        c = self.chain(v, env)
                        if c is not None and not is_request(v):
                            self.helpers[fn.name] = (c, isinstance(n.value, ast.IfExp))
        for fn in funcs:
            env = self.env(fn)
            for n in ast.walk(fn):
                if isinstance(n, ast.Call) and is_request(n):
                    assert isinstance(n.func, ast.Attribute)
                    base = self.chain(n.func.value, env)
                    if base is None:
                        continue
                    for a in n.args:
                        base = [*base, *self.seg(a)]
                    if base:
                        found.append((METHODS[n.func.attr], base, n.lineno))
        return found

    def env(self, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, list[str]]:
        env: dict[str, list[str]] = {}
        for n in ast.walk(fn):
            if isinstance(n, ast.Assign) and len(n.targets) == 1 \
                    and isinstance(n.targets[0], ast.Name):
                c = self.chain(n.value, env)
                if c is not None and not is_request(n.value):
                    env[n.targets[0].id] = c
        return env


FSTRING_URL = re.compile(r'_get_json\(\s*f"\{self\.proxmox_url\}/api2/json/([^"?]*)')


def ansible(gitdir: Path) -> list[tuple[str, list[str], str]]:
    out = []
    for name, text in files(gitdir, ".py", "plugins/"):
        tree = ast.parse(text)
        for method, segs, _line in Chains(tree).run():
            out.append((method, segs, f"{name}"))
        for m in FSTRING_URL.finditer(text):
            segs = [VAR if p.startswith("{") and p.strip("{}") not in ("vmtype",) else
                    GUEST if p == "{vmtype}" else p for p in split_literal(m.group(1))]
            out.append(("GET", segs, name))
    return out


# --- bpg: DoRequest(ctx, http.MethodX, <path expr>, ...) --------------------------------

# the path prefix each package's ExpandPath/basePath adds (read from its client.go)
BPG_PREFIX = {
    "proxmox/access": ("access", None),
    "proxmox/cluster": ("cluster", None),
    "proxmox/cluster/acme/account": ("cluster/acme/account", None),
    "proxmox/cluster/acme/plugins": ("cluster/acme/plugins", None),
    "proxmox/cluster/backup": ("cluster/backup", None),
    "proxmox/cluster/ceph": ("cluster/ceph", None),
    "proxmox/cluster/ha/groups": ("cluster/ha/groups", None),
    "proxmox/cluster/ha/resources": ("cluster/ha/resources", None),
    "proxmox/cluster/ha/rules": ("cluster/ha/rules", None),
    "proxmox/cluster/mapping": ("cluster/mapping/{}", "cluster/mapping"),
    "proxmox/cluster/metrics": ("cluster/metrics/server", None),
    "proxmox/cluster/replications": ("cluster/replication/{}", "cluster/replication"),
    "proxmox/cluster/sdn/applier": ("cluster/sdn", "cluster/sdn"),
    "proxmox/cluster/sdn/controllers": ("cluster/sdn/controllers", "cluster/sdn/controllers"),
    "proxmox/cluster/sdn/fabric_nodes": ("cluster/sdn/fabrics/node/{}", "cluster/sdn/fabrics/node"),
    "proxmox/cluster/sdn/fabrics": ("cluster/sdn/fabrics/fabric", "cluster/sdn/fabrics/fabric"),
    "proxmox/cluster/sdn/subnets": ("cluster/sdn/vnets/{}/subnets", "cluster/sdn/vnets/{}/subnets"),
    "proxmox/cluster/sdn/vnets": ("cluster/sdn/vnets/{}", "cluster/sdn/vnets"),
    "proxmox/cluster/sdn/zones": ("cluster/sdn/zones", "cluster/sdn/zones"),
    "proxmox/nodes": ("nodes/{}", None),
    "proxmox/nodes/apt/repositories": ("nodes/{}/apt/repositories", "nodes/{}/apt/repositories"),
    "proxmox/nodes/ceph": ("nodes/{}/ceph", None),
    "proxmox/nodes/ceph/pool": ("nodes/{}/ceph/pool", None),
    "proxmox/nodes/containers": ("nodes/{}/lxc/{}", "nodes/{}/lxc"),
    "proxmox/nodes/disks/zfs": ("nodes/{}/disks/zfs", None),
    "proxmox/nodes/hardware": ("nodes/{}/hardware", None),
    "proxmox/nodes/storage": ("nodes/{}/storage/{}", "nodes/{}/storage"),
    "proxmox/nodes/tasks": ("nodes/{}/tasks", None),
    "proxmox/nodes/vms": ("nodes/{}/qemu/{}", "nodes/{}/qemu"),
    "proxmox/storage": ("storage", "storage"),
}
DO_REQUEST = re.compile(r"DoRequest\(\s*\w+,\s*http\.Method(\w+),\s*")
HELPER_FUNC = re.compile(r"func \(c \*Client\) (\w+Path)\(([^)]*)\) string \{\n(.*?)\n\}", re.S)


def go_expr(text: str, i: int) -> str:
    """The Go expression starting at text[i], up to the comma or paren closing it."""
    depth, j, quote = 0, i, False
    while j < len(text):
        ch = text[j]
        if ch == '"':
            quote = not quote
        elif not quote:
            if ch in "([{":
                depth += 1
            elif ch in ")]}":
                if depth == 0:
                    break
                depth -= 1
            elif ch == "," and depth == 0:
                break
        j += 1
    return text[i:j].strip()


def go_args(s: str) -> list[str]:
    """Split Go call arguments at the top-level commas."""
    out, i = [], 0
    while i < len(s):
        e = go_expr(s, i)
        out.append(e)
        i += len(e) + 1
        while i < len(s) and s[i] in " ,\n\t":
            i += 1
    return out


def go_path(expr: str, prefix: str, base: str | None, helpers: dict[str, str]) -> str | None:
    """Resolve a Go path expression to a template with `{}` for variables."""
    expr = expr.strip()
    if re.fullmatch(r'"[^"]*"', expr):
        return expr.strip('"')
    m = re.fullmatch(r'(.+?)\s*\+\s*"(/[^"?]*)?[^"]*"', expr, re.S)
    if m:   # x + "/status?verbose=1", x + "?" + query
        head = go_path(m.group(1), prefix, base, helpers)
        return None if head is None else head + (m.group(2) or "")
    m = re.fullmatch(r'fmt\.Sprintf\(\s*(".*?")\s*(,.*?)?,?\s*\)', expr, re.S)
    if m:
        args = go_args(m.group(2)[1:].strip()) if m.group(2) else []
        parts = re.split(r"%[sdv]", m.group(1).strip('"'))
        out = parts[0]
        for k, part in enumerate(parts[1:]):
            a = args[k] if k < len(args) else ""
            sub = go_path(a, prefix, base, helpers) if re.match(r"c\.(\w*[pP]ath)\(", a) else None
            out += (sub if sub is not None else VAR) + part
        return out
    if expr == "c.basePath()":
        return base
    m = re.fullmatch(r"c\.(\w+Path)\((.*)\)", expr, re.S)
    if m and m.group(1) in helpers:
        return go_path(helpers[m.group(1)], prefix, base, helpers)
    m = re.fullmatch(r"c\.ExpandPath\((.*)\)", expr, re.S)
    if m:
        arg = m.group(1).strip().rstrip(",").strip()
        if arg.startswith("hmType,"):
            arg = arg.split(",", 1)[1].strip()
        if arg in ("", '""'):
            return prefix
        if arg.startswith("path") or arg == "path":
            return None
        inner = (go_path(arg, prefix, base, helpers)
                 if arg.startswith('"') or arg.startswith("fmt.") else None)
        if inner is None:
            m2 = re.fullmatch(r'"([^"]*)"\s*\+.*', arg)
            inner = m2.group(1) + VAR if m2 else VAR
        return f"{prefix}/{inner}" if inner else prefix
    m = re.fullmatch(r"c\.BuildPath\((.*)\)", expr, re.S)
    if m:   # nodes/tasks: BuildPath(upid, "status")
        args = go_args(m.group(1))
        tail = args[1].strip('"') if len(args) > 1 and args[1].startswith('"') else ""
        return "nodes/{}/tasks/{}" + (f"/{tail}" if tail else "")
    return None


def bpg(gitdir: Path) -> list[tuple[str, list[str], str]]:
    out = []
    by_dir: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for name, text in files(gitdir, ".go", "proxmox/"):
        by_dir[str(Path(name).parent)].append((name, text))
    for d, items in sorted(by_dir.items()):
        helpers: dict[str, str] = {}
        for _, text in items:
            for m in HELPER_FUNC.finditer(text):
                if m.group(1) in ("ExpandPath", "basePath"):
                    continue
                r = re.search(r"return (.*)", m.group(3))
                if r:
                    helpers[m.group(1)] = r.group(1).strip()
        prefix, base = BPG_PREFIX.get(d, ("", None))
        for name, text in items:
            for m in DO_REQUEST.finditer(text):
                expr = go_expr(text, m.end())
                if d.endswith("/firewall"):
                    continue   # firewall clients are shared by cluster/node/vm/ct: excluded area
                if expr == "path":   # the last `path := ...` before the call
                    assigns = re.findall(r"\bpath(?:, err)? :?= (.+)", text[:m.start()])
                    expr = assigns[-1].strip() if assigns else expr
                p = go_path(expr, prefix, base, helpers)
                if p is None or "{}" == p.split("/")[0]:
                    print(f"bpg: unresolved {m.group(1).upper()} {expr} in {name}", file=sys.stderr)
                    continue
                out.append((m.group(1).upper(), split_literal(p), name))
    for method, p, src in SUPPLEMENT["bpg"]:
        out.append((method, split_literal(p), src))
    return out


# --- telmate: URL literals, and the session/client call that uses them ------------------

TELMATE_URL = re.compile(
    r'(?:fmt\.Sprintf\(\s*)?"(/(?:nodes|cluster|access|storage|pools|version)[^"]*)"'
    r'((?:\s*\+\s*[\w.()]+(?:\s*\+\s*"[^"]*")?)*)')
CALL_METHOD = [
    (re.compile(r'requestJSON\(\w+, "DELETE"'), "DELETE"),
    (re.compile(r"\bguestCreateLoop\w*\("), "POST"),
    (re.compile(r"\b(?:delete\w*|Delete\w*)\("), "DELETE"),
    (re.compile(r"\b(?:put\w*|Put\w*|Update\w*|SetVmConfig)\("), "PUT"),
    (re.compile(r"\b(?:post\w*|Post\w*|Create\w*)\("), "POST"),
    (re.compile(r"\b(?:get\w*|Get\w*)\("), "GET"),
]


def telmate_segments(lit: str, concat: str) -> list[str]:
    s = re.sub(r"%[sdv]", VAR, lit)
    for part in re.findall(r'\+\s*("[^"]*"|[\w.()]+)', concat):
        if part.startswith('"'):
            s += part.strip('"')
        else:
            s += "{guest}" if "Type" in part else VAR
    segs = split_literal(s)
    return [GUEST if x in ("{guest}",) else x for x in segs]


def telmate(gitdirs: list[Path]) -> list[tuple[str, list[str], str]]:
    out = []
    for gitdir in gitdirs:
        for name, text in files(gitdir, ".go"):
            if name.startswith(("cli/", "test/", "internal/mock")) \
                    or name.endswith("permission.go"):
                continue
            text = re.sub(r"strconv\.FormatInt\(int64\(([\w.]+)\), 10\)", r"\1", text)
            lines = text.split("\n")
            for i, line in enumerate(lines):
                for m in TELMATE_URL.finditer(line):
                    segs = telmate_segments(m.group(1), m.group(2) or "")
                    # a guest type filled from a %s after nodes/{node}
                    if len(segs) >= 3 and segs[0] == "nodes" and segs[2] == VAR and \
                            re.search(r"vmType|\.Type|guestType", line):
                        segs[2] = GUEST
                    method = None
                    rest = line[m.end():]
                    assigned = re.match(r"\s*(\w+)\s*:?=\s*(?:fmt\.Sprintf\(\s*)?\"", line)
                    window = [rest] if not assigned else []
                    if assigned:
                        var = assigned.group(1)
                        for nxt in lines[i + 1:i + 40]:
                            if nxt.startswith("func "):
                                break
                            if re.search(rf"\b{var}\b", nxt) and "(" in nxt and \
                                    not re.search(rf"\b{var}\s*\+?=", nxt):
                                window.append(nxt)
                                break
                    else:
                        # the call may have begun on an earlier line (arguments on their own lines)
                        window = [line[:m.start()] + rest, *reversed(lines[max(0, i - 4):i])]
                    for w in window:
                        method = next((meth for rx, meth in CALL_METHOD if rx.search(w)), None)
                        if method:
                            break
                    if method is None:
                        print(f"telmate: no method for {m.group(0)} in {name}:{i + 1}",
                              file=sys.stderr)
                        continue
                    out.append((method, segs, name))
    # StatusChangeVm(ctx, vmr, params, setStatus) posts to status/{setStatus}: the commands
    # its callers pass (client.go)
    commands = sorted({c for gitdir in gitdirs for _, text in files(gitdir, ".go")
                       for c in re.findall(r'StatusChangeVm\(ctx, \w+, \w+, "(\w+)"\)', text)})
    expanded = []
    for method, segs, name in out:
        if len(segs) >= 2 and segs[-2] == "status" and segs[-1] == VAR:
            expanded += [("POST", [*segs[:-1], c], name) for c in commands]
        else:
            expanded.append((method, segs, name))
    out = expanded
    for method, p, src in SUPPLEMENT["telmate"]:
        out.append((method, split_literal(p), src))
    return out


# --- output -------------------------------------------------------------------------------

# sub-paths of nodes/{node}/{qemu,lxc}/{vmid} that only one guest type has in PVE: a path
# built with a guest-type variable gives only the type that has it
QEMU_ONLY = {"agent", "move_disk", "sendkey", "monitor", "unlink", "cloudinit"}
LXC_ONLY = {"interfaces", "move_volume"}


def pve_has(path: list[str]) -> bool:
    if len(path) > 4 and path[0] == "nodes":
        if path[2] == "lxc" and path[4] in QEMU_ONLY:
            return False
        if path[2] == "qemu" and path[4] in LXC_ONLY:
            return False
    return True


def template(segs: list[str]) -> list[str]:
    guest_typed = GUEST in segs
    paths: list[list[str]] = [[]]
    # "content{}": a variable glued to a literal (a missing slash in the source's concat)
    flat = [x for seg in segs
            for x in ([seg[:-2], VAR] if seg != VAR and seg.endswith(VAR) else [seg])]
    for s in flat:
        if s == GUEST:
            paths = [[*p, t] for p in paths for t in ("qemu", "lxc")]
        elif s.startswith("{"):
            paths = [[*p, "{" + PARAM_AFTER.get(p[-1] if p else "", "id") + "}"] for p in paths]
        else:
            paths = [[*p, s] for p in paths]
    if guest_typed:
        paths = [p for p in paths if pve_has(p)]
    return ["/" + "/".join(p) for p in paths]


def write(out_dir: Path, client: str, mirrors: dict[str, Path],
          found: list[tuple[str, list[str], str]]) -> None:
    table: dict[tuple[str, str], set[str]] = defaultdict(set)
    for method, segs, src in found:
        for p in template(segs):
            table[(p, method)].add(src)
    lines = [f"# Proxmox VE API endpoints called by {client}, extracted from source by "
             "tools/extract_client_endpoints.py.",
             "# Regenerate: fetch the repositories' mirrors, then "
             "tools/extract_client_endpoints.py MIRROR_ROOT docs/data/client-endpoints"]
    for repo, gitdir in mirrors.items():
        commit = git(gitdir, "rev-parse", "HEAD").strip()
        date = git(gitdir, "log", "-1", "--format=%cs", "HEAD").strip()
        lines.append(f"# source: https://github.com/{repo} commit {commit} ({date})")
    if client in NOTES:
        lines.append(f"# {NOTES[client]}")
    lines.append("# METHOD PATH<TAB>source files")
    for (p, method), srcs in sorted(table.items()):
        lines.append(f"{method} {p}\t{', '.join(sorted(srcs))}")
    (out_dir / f"{client}.txt").write_text("\n".join(lines) + "\n")
    print(f"{client}: {len(table)} endpoints", file=sys.stderr)


def main() -> None:
    root = Path(sys.argv[1])
    out_dir = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("docs/data/client-endpoints")
    out_dir.mkdir(parents=True, exist_ok=True)
    mirrors = {c: {r: root / r.replace("/", "+") / "repo" for r in repos}
               for c, repos in REPOS.items()}
    write(out_dir, "ansible", mirrors["ansible"], ansible(mirrors["ansible"][REPOS["ansible"][0]]))
    write(out_dir, "bpg", mirrors["bpg"], bpg(mirrors["bpg"][REPOS["bpg"][0]]))
    write(out_dir, "telmate", mirrors["telmate"], telmate(list(mirrors["telmate"].values())))


if __name__ == "__main__":
    main()
