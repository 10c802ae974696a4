"""Event catalogue, target/matcher validation and PVE's matcher semantics."""

import time

import pytest

from binome.notify.config import (
    ConfigError,
    Entry,
    NotificationConfig,
    public_view,
    validate_entry,
    webhook_secrets,
)
from binome.notify.events import CATALOGUE, EventError, Severity, make_event
from binome.notify.matching import parse_calendar, targets_for
from binome.notify.template import TemplateError, render

SAMPLES = {
    "fence-requested": {"node": "n2", "reason": "lost quorum"},
    "fence-succeeded": {"node": "n2", "agent": "ipmi"},
    "fence-failed": {"node": "n2", "error": "BMC timeout"},
    "node-offline": {"node": "n2", "why": "lease expired 2.0 s ago"},
    "node-online": {"node": "n2"},
    "quorum-lost": {"votes": 1, "expected": 3},
    "quorum-regained": {"votes": 2, "expected": 3},
    "ha-recovered": {"sid": "vm:100", "from_node": "n2", "node": "n1"},
    "ha-recovery-blocked": {"sid": "vm:100", "from_node": "n2", "reason": "no-uptodate-replica"},
    "ha-error": {"sid": "vm:100", "node": "n1", "error": "start failed"},
    "split-brain-detected": {"volume": "vm-100-disk-0", "peer": "n2", "policy": "manual"},
    "split-brain-resolved": {"volume": "vm-100-disk-0", "policy": "discard-younger",
                             "victim": "n2"},
    "replication-disconnected": {"volume": "v", "peer": "n2", "reason": "timeout"},
    "resync-started": {"volume": "v", "peer": "n2", "out_of_sync_bytes": 4096},
    "resync-done": {"volume": "v", "peer": "n2", "duration": 12},
    "verify-out-of-sync": {"volume": "v", "peer": "n2", "out_of_sync_bytes": 4096},
    "disk-io-error": {"volume": "v", "device": "/dev/sdb", "error": "EIO", "detached": True},
    "backup-result": {"job_id": "daily", "status": "ok", "ok_count": 3, "failed_count": 0,
                      "total_size": 10, "total_time": 5, "details": ""},
    "certificate-expiry": {"certificate": "pve-ssl", "days_left": 10, "not_after": "2027"},
    "clock-skew": {"node": "n2", "skew": 2.5, "threshold": 1, "reference": "n1"},
    "etcd-unhealthy": {"member": "n2", "error": "slow fsync"},
    "availability-budget-exceeded": {"sid": "vm:100", "month": "2026-12", "downtime": 900,
                                     "budget": 2630, "target": "99.9 %"},
    "availability-budget-nearly": {"sid": "vm:100", "month": "2026-12", "downtime": 2100,
                                   "budget": 2592, "target": "99.9 %"},
    "test": {"target": "t"},
}


def test_every_kind_renders_without_placeholders():
    assert set(SAMPLES) == set(CATALOGUE)
    for kind, data in SAMPLES.items():
        ev = make_event(kind, "n1", **data)
        assert "?" not in ev.title and "{" not in ev.message, kind
        assert ev.fields["type"] and ev.fields["hostname"] == "n1"


def test_recovery_blocked_explains_reason_and_action():
    ev = make_event("ha-recovery-blocked", "n1", sid="vm:100", from_node="n2",
                    reason="fence-failed")
    assert "could not be fenced" in ev.message
    assert "'binome fence n2 --confirm-off'" in ev.message
    with pytest.raises(EventError):
        make_event("ha-recovery-blocked", "n1", sid="vm:1", from_node="n2", reason="bogus")


def test_backup_severity_follows_result_and_missing_fields_fail():
    ok = make_event("backup-result", "n1", **SAMPLES["backup-result"])
    assert ok.severity is Severity.INFO
    assert ok.title == "vzdump backup status (n1): backup successful"
    bad = make_event("backup-result", "n1", **{**SAMPLES["backup-result"], "failed_count": 1})
    assert bad.severity is Severity.ERROR and bad.title.endswith("backup failed")
    with pytest.raises(EventError, match="missing: node"):
        make_event("fence-failed", "n1", error="x")


def test_storm_of_one_node_failure_shares_group_key():
    keys = {make_event("fence-requested", "n1", node="n2", reason="r").group_key,
            make_event("ha-recovered", "n1", sid="vm:1", from_node="n2", node="n1").group_key,
            make_event("ha-recovered", "n1", sid="vm:2", from_node="n2", node="n1").group_key}
    assert len(keys) == 2  # fencing:n2 and ha:n2


def test_smtp_validation_errors_and_secret_split():
    with pytest.raises(ConfigError) as err:
        validate_entry("smtp", "mail", {"server": "mx", "mailto": ["a@b"], "username": "u",
                                        "mode": "ssl"})
    assert err.value.errors["password"] == "username is set but no password was provided"
    assert "from-address" in err.value.errors and "mode" in err.value.errors
    entry = validate_entry("smtp", "mail", {"server": "mx", "from-address": "a@b",
                                            "mailto": "c@d", "username": "u", "password": "pw"})
    assert entry.secrets == {"password": "pw"} and "pw" not in str(public_view(entry))
    assert entry.options["mode"] == "tls"


def test_webhook_secret_is_write_only():
    entry = validate_entry("webhook", "hook", {
        "url": "http://x/{{ secrets.k }}", "method": "POST",
        "secret": ["name=k,value=c2VjcmV0"]})
    assert public_view(entry)["secret"] == ["name=k"]
    assert webhook_secrets(entry) == {"k": "secret"}
    with pytest.raises(ConfigError) as err:
        validate_entry("webhook", "hook", {"url": "u", "secret": ["name=k,value=!!"]})
    assert "!!" not in str(err.value)


def test_names_and_references():
    cfg = NotificationConfig()
    assert {e.name for e in cfg.entries.values()} == {"mail-to-root", "default-matcher"}
    with pytest.raises(ConfigError, match="already exists"):
        cfg.add(Entry("gotify", "mail-to-root"))
    with pytest.raises(ConfigError, match="cannot delete built-in entry 'mail-to-root'"):
        cfg.delete("mail-to-root")
    cfg.add(validate_entry("gotify", "phone", {"server": "http://g", "token": "t"}))
    cfg.add(validate_entry("matcher", "to-phone", {"target": ["phone"]}))
    with pytest.raises(ConfigError, match="referenced by: to-phone"):
        cfg.delete("phone")
    # a modified built-in goes back to its built-in form
    cfg.replace(validate_entry("sendmail", "mail-to-root", {"mailto": ["ops@example.org"]}))
    assert cfg.origin("mail-to-root") == "modified-builtin"
    cfg.delete("mail-to-root")
    assert cfg.origin("mail-to-root") == "builtin"
    assert cfg.entries["mail-to-root"].options["mailto-user"] == ["root@pam"]
    with pytest.raises(ConfigError, match="invalid match-field"):
        validate_entry("matcher", "mm", {"match-field": ["type=fencing"]})
    with pytest.raises(ConfigError, match="invalid regex"):
        validate_entry("matcher", "mm", {"match-field": ["regex:type=("]})


def _cfg(*matchers):
    cfg = NotificationConfig()
    cfg.add(validate_entry("gotify", "phone", {"server": "http://g", "token": "t"}))
    for name, opts in matchers:
        cfg.add(validate_entry("matcher", name, opts))
    return cfg


def test_default_matcher_routes_everything_once():
    cfg = _cfg(("mm", {"target": ["mail-to-root"]}))
    ev = make_event("node-online", "n1", node="n2")
    assert [t.name for t in targets_for(cfg, ev)] == ["mail-to-root"]


def test_severity_field_mode_and_invert():
    fence = make_event("fence-failed", "n1", node="n2", error="e")
    info = make_event("resync-done", "n1", volume="v", peer="n2", duration=1)
    cfg = _cfg(("crit", {"match-severity": ["warning,error"],
                         "match-field": ["exact:type=fencing,quorum"], "target": ["phone"]}))
    assert "phone" in [t.name for t in targets_for(cfg, fence)]
    assert "phone" not in [t.name for t in targets_for(cfg, info)]
    cfg = _cfg(("inv", {"match-field": ["regex:hostname=^n1$"], "invert-match": 1,
                        "target": ["phone"]}))
    assert "phone" not in [t.name for t in targets_for(cfg, fence)]
    cfg = _cfg(("any", {"mode": "any", "match-severity": ["error"],
                        "match-field": ["exact:type=replication"], "target": ["phone"]}))
    assert "phone" in [t.name for t in targets_for(cfg, info)]
    cfg = _cfg(("missing", {"match-field": ["exact:job-id=x"], "target": ["phone"]}))
    assert "phone" not in [t.name for t in targets_for(cfg, fence)]
    cfg = _cfg(("norules", {"invert-match": 1, "target": ["phone"]}))
    assert "phone" in [t.name for t in targets_for(cfg, fence)]


def test_calendar():
    rule = parse_calendar("mon-fri 9:00-17:00")
    monday_10 = time.mktime((2026, 12, 7, 10, 0, 0, 0, 0, -1))
    saturday_10 = time.mktime((2026, 12, 5, 10, 0, 0, 0, 0, -1))
    assert rule.matches(monday_10) and not rule.matches(saturday_10)
    assert parse_calendar("8-12").matches(time.mktime((2026, 12, 5, 11, 59, 0, 0, 0, -1)))
    assert parse_calendar("sun,tue-wed,fri 9-17").days == frozenset({6, 1, 2, 4})
    for bad in ("25-26", "mon-xyz 8-9", "12-8"):
        with pytest.raises(ValueError, match="invalid match-calendar"):
            parse_calendar(bad)


def test_template_subset_is_safe():
    ctx = {"title": 'a "b"', "fields": {"type": "fencing"}, "secrets": {"k": "s/t"}}
    assert render('{"t":"{{ escape title }}"}', ctx) == '{"t":"a \\"b\\""}'
    assert render("/x/{{ url-encode secrets.k }}", ctx) == "/x/s%2Ft"
    assert render("{{ json fields }}|{{ fields.type }}|{{ nope }}", ctx) == \
        '{"type": "fencing"}|fencing|'
    assert render("{{ __class__ }}", ctx) == ""
    with pytest.raises(TemplateError):
        render("{{ eval title }}", ctx)


def test_update_keeps_unnamed_secrets_and_refuses_deleting_a_required_option():
    from binome.notify.config import update_entry
    hook = validate_entry("webhook", "hook", {
        "url": "http://x", "method": "post",
        "secret": ["name=a,value=c2VjcmV0", "name=b,value=b3RoZXI="]})
    kept = update_entry(hook, {"secret": ["name=a", "name=c,value=bmV3"]}, [])
    assert webhook_secrets(kept) == {"a": "secret", "c": "new"}
    assert public_view(kept)["secret"] == ["name=a", "name=c"]
    smtp = validate_entry("smtp", "mail", {"server": "h", "from-address": "a@b",
                                           "mailto": ["x@y"], "username": "u",
                                           "password": "pw", "author": "me"})
    changed = update_entry(smtp, {"comment": "c"}, ["author"])
    assert changed.secrets == {"password": "pw"} and "author" not in changed.options
    with pytest.raises(ConfigError) as err:
        update_entry(smtp, {}, ["server"])
    assert "server" in err.value.errors
    with pytest.raises(ConfigError) as err:
        update_entry(smtp, {"comment": "c"}, ["comment"])
    assert "delete" in err.value.errors
    with pytest.raises(ConfigError) as err:
        update_entry(smtp, {}, ["token"])
    assert err.value.errors == {"delete": "invalid option 'token'"}


def test_availability_budget_texts() -> None:
    nearly = make_event("availability-budget-nearly", "n1", sid="vm:100", month="2026-12",
                        downtime=2305, budget=2678, target="99.9 %")
    assert nearly.severity is Severity.NOTICE
    assert nearly.title == "HA service vm:100 used 86 % of its downtime budget"
    assert "was down 38 min 25 s in 2026-12" in nearly.message
    assert "budget of 44 min 38 s (99.9 %)" in nearly.message
    assert "binome ha availability vm:100" in nearly.message
    over = make_event("availability-budget-exceeded", "n1", sid="vm:100", month="2026-12",
                      downtime=2705, budget=2678, target="99.9 %")
    assert over.severity is Severity.WARNING
    assert over.fields == {"type": "availability", "hostname": "n1", "sid": "vm:100",
                           "month": "2026-12", "downtime": "2705", "budget": "2678",
                           "kind": "availability-budget-exceeded"}
    assert "(99.9 %: 101 % used)" in over.message


def test_quorum_lost_says_whether_it_was_lost_or_never_had():
    lost = make_event("quorum-lost", "n1", votes=1, expected=3)
    assert lost.message.startswith("This node lost quorum (1 of 3 votes).")
    boot = make_event("quorum-lost", "n1", votes=1, expected=3, since_start=True)
    assert boot.message.startswith("This node has had no quorum since its daemon started "
                                   "(1 of 3 votes).")
    assert "Check the links to the other nodes and the witness." in boot.message
