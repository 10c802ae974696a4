#!/usr/bin/env python3
"""A fake ``fence_*`` agent for tests: the standard stdin protocol, a power state in a file.

Reads ``key=value`` lines on stdin like Debian's fence agents (``action=``, ``ip=``,
``username=``, ``password=``, ``plug=``...) and obeys the fence-agents exit codes
(0 success; for ``status`` 0 = on, 2 = off, 1 = error). Test-only options, also on stdin:

* ``state_file=PATH``: the simulated power state ("on"/"off"; missing means on);
* ``record_file=PATH``: one JSON line appended per run (pid, action, options without
  the password, the password's SHA-256, its argv, whether the password appears in its
  argv or environment), written before anything else so a test can find a hung agent;
* ``fail=a,b``: those actions exit 1 with a message on stderr;
* ``hang=a,b``: those actions never finish (the runner's timeout must kill them);
  with ``hang_child=1`` a child ``sleep`` is started first (the whole group must die);
* ``lie=1``: ``off`` exits 0 without changing the state (confirmation must catch it);
* ``leak_password=1``: the password is printed on stdout and stderr, and in the
  failure message (scrubbing must hide it).
"""

import hashlib
import json
import os
import subprocess
import sys
import threading


def main() -> int:
    opts: dict[str, str] = {}
    for line in sys.stdin.read().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        opts[key] = value
    action = opts.get("action", "reboot")
    password = opts.get("password", "")
    state_file = opts.get("state_file")
    fail = set(filter(None, opts.get("fail", "").split(",")))
    hang = set(filter(None, opts.get("hang", "").split(",")))

    child = None
    if action in hang and opts.get("hang_child") == "1":
        child = subprocess.Popen(["sleep", "1000"])
    if opts.get("record_file"):
        environ = b"\0".join(f"{k}={v}".encode() for k, v in os.environ.items())
        record = {
            "pid": os.getpid(), "action": action, "argv": sys.argv,
            "options": {k: v for k, v in opts.items() if k != "password"},
            "password_sha256": hashlib.sha256(password.encode()).hexdigest() if password else None,
            "password_in_argv": bool(password) and any(password in a for a in sys.argv),
            "password_in_environ": bool(password) and password.encode() in environ,
            "child_pid": child.pid if child else None,
        }
        with open(opts["record_file"], "a") as f:
            f.write(json.dumps(record) + "\n")
    if opts.get("leak_password") == "1":
        print(f"verbose: logging in with password {password}")
        print(f"debug: password={password}", file=sys.stderr)
    if action in hang:
        threading.Event().wait()  # hung agent: only a kill ends it
    if action in fail:
        leak = f" (password {password})" if opts.get("leak_password") == "1" else ""
        print(f"fake agent: action {action} failed on {opts.get('ip', '?')}{leak}",
              file=sys.stderr)
        return 1

    def state() -> str:
        try:
            with open(state_file or "") as f:
                return f.read().strip() or "on"
        except OSError:
            return "on"

    def set_state(value: str) -> None:
        if state_file:
            tmp = state_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(value)
            os.replace(tmp, state_file)

    if action in ("status", "monitor"):
        if action == "monitor":
            return 0
        current = state()
        print(f"Status: {current.upper()}")
        return 0 if current == "on" else 2
    if action == "off":
        if opts.get("lie") != "1":
            set_state("off")
        print("Success: Powered OFF")
        return 0
    if action == "on":
        set_state("on")
        print("Success: Powered ON")
        return 0
    if action == "reboot":
        set_state("off")
        set_state("on")
        print("Success: Rebooted")
        return 0
    print(f"fake agent: unknown action {action}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
