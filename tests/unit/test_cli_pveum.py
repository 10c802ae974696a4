"""The CLI's PVE forms and its care with secrets: pveum's one-word aliases and one-dash
long options; a secret is never taken as an option value, and no error echoes what was
typed (a stray word may be a password). Parsing only: nothing is sent."""

from __future__ import annotations

import io

import pytest

from binome.cli import main as cli

pytestmark = pytest.mark.unit
SECRET = "hunter2-secret"


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.run(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert SECRET not in err
    return err


def _parsed(argv: list[str]) -> dict[str, object]:
    args = cli.build_parser().parse_args(cli._aliases(argv))
    return {"command": args._spec.words, **cli._collect(args._spec, args)}


@pytest.mark.parametrize("argv", [
    ["user", "add", "bob@pve", "--password", SECRET],
    ["user", "add", "bob@pve", f"--password={SECRET}"],
    ["useradd", "bob@pve", "-password", SECRET],
    ["passwd", "bob@pve", "--password", SECRET],
    ["realm", "add", "corp", "--type", "ldap", "--password", SECRET],
])
def test_a_secret_value_on_the_command_line_is_refused_unechoed(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(argv, capsys)
    assert "not taken on the command line" in err and "-file" in err


@pytest.mark.parametrize("argv", [
    ["user", "add", "bob@pve", SECRET],
    ["user", "add", "bob@pve", f"--bogus={SECRET}"],
    ["user", "add", "bob@pve", "--bogus", SECRET],
    ["user", "add", "bob@pve", f"--pass={SECRET}"],       # ambiguous prefix
    ["api", "get", "/version", SECRET],
])
def test_no_parse_error_echoes_a_value(argv: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    _fails(argv, capsys)


def test_the_secret_comes_from_the_prompt_or_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.sys, "stdin", io.StringIO(f"{SECRET}\n"))
    assert _parsed(["user", "add", "bob@pve", "--password-file", "-"])["password"] == SECRET
    asked: list[str] = []

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True
    monkeypatch.setattr(cli.sys, "stdin", Tty())
    monkeypatch.setattr(cli.getpass, "getpass", lambda prompt: asked.append(prompt) or SECRET)
    assert _parsed(["user", "add", "bob@pve", "--password"])["password"] == SECRET
    assert asked == ["password: "]
    assert "password" not in _parsed(["user", "add", "bob@pve"])    # optional: not asked


def test_pveum_aliases_and_one_dash_options() -> None:
    assert _parsed(["useradd", "bob@pve", "-groups", "ops", "-comment", "x"]) == {
        "command": ("user", "add"), "userid": "bob@pve", "groups": "ops", "comment": "x"}
    acl = _parsed(["aclmod", "/", "-group", "ops", "-role", "PVEVMAdmin"])
    assert acl == {"command": ("acl", "modify"), "path": "/", "groups": "ops",
                   "roles": "PVEVMAdmin"}
    assert _parsed(["acldel", "/", "-user", "bob@pve", "-role", "PVEAuditor"])["delete"] == "1"
    for alias, words in cli.PVEUM_ALIASES.items():
        argv = [alias, "/", "-role", "NoAccess"] if words[0] == "acl" else [alias, "x1"]
        assert _parsed(argv)["command"] == words
    assert _parsed(["user", "token", "delete", "bob@pve", "ci"])["command"] == \
        ("user", "token", "remove")
    # single-letter options and values after `--` are left alone
    assert cli._pve_forms(["logs", "-n", "5", "-fn"]) == ["logs", "-n", "5", "-fn"]
    assert cli._pve_forms(["x", "--", "-comment"]) == ["x", "--", "-comment"]


def test_permissions_and_tfa_commands() -> None:
    assert _parsed(["user", "permissions"]) == {"command": ("user", "permissions")}
    assert _parsed(["user", "permissions", "bob@pve!ci", "-path", "/vms/100"]) == {
        "command": ("user", "permissions"), "userid": "bob@pve!ci", "path": "/vms/100"}
    assert _parsed(["user", "token", "permissions", "bob@pve", "ci", "--path", "/"]) == {
        "command": ("user", "permissions"), "userid": "bob@pve!ci", "path": "/"}
    assert _parsed(["user", "tfa", "list", "bob@pve"]) == {
        "command": ("user", "tfa", "list"), "userid": "bob@pve"}
    assert _parsed(["user", "tfa", "delete", "bob@pve", "-id", "recovery"]) == {
        "command": ("user", "tfa", "delete"), "userid": "bob@pve", "id": "recovery"}


def test_permission_and_tfa_renderings() -> None:
    from binome.cli.format import render
    text = render({"/vms/100": {"VM.Audit": 0, "VM.Console": 1}, "/": {}}, "permissions",
                  "text")
    assert text.splitlines() == [
        "ACL PATH  PERMISSIONS", "/", "/vms/100  VM.Audit", "          VM.Console (*)",
        "Permissions marked with '(*)' have the 'propagate' flag set."]
    listed = [{"userid": "bob@pve", "entries": [
        {"id": "recovery", "type": "recovery", "description": "", "enable": 1},
        {"id": "a1b2", "type": "totp", "description": "phone", "enable": 0}]}]
    assert render(listed, "tfa_entries", "text").splitlines() == [
        "bob@pve:", "    recovery: recovery", "", "    totp:     a1b2 (disabled)",
        "        phone"]


def test_api_verbs_take_secrets_from_a_file_only(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser()
    secret = tmp_path / "pw"
    secret.write_text(SECRET + "\n")
    assert cli._api_params(parser, ["userid=bob@pve", f"password@{secret}"]) == {
        "userid": "bob@pve", "password": SECRET}
    monkeypatch.setattr(cli.sys, "stdin", io.StringIO(SECRET + "\n"))
    assert cli._api_params(parser, ["confirmation-password@-"]) == {
        "confirmation-password": SECRET}
    for bad in ([f"password={SECRET}"], [f"confirmation-password={SECRET}"],
                [f"otp={SECRET}"], [SECRET]):
        with pytest.raises(SystemExit):
            cli._api_params(parser, bad)
        assert SECRET not in capsys.readouterr().err
    # refused before any connection is made
    _fails(["api", "create", "/access/users", "userid=x@pve", f"password={SECRET}"], capsys)
