"""Node configuration: timer relations, field validation, node.json round trip."""

import json

import pytest

from binome.config import ConfigError, NodeConfig, Timers


def node(tmp_path, **kw):
    fields = dict(name="n1", state_dir=tmp_path, cluster_address="10.0.0.1")
    fields.update(kw)
    return NodeConfig(**fields)


def test_default_timers_valid():
    Timers().validate()


@pytest.mark.parametrize("kw, key", [
    (dict(lease_ttl=1), "timers.lease_ttl"),
    (dict(lease_ttl=0), "timers.lease_ttl"),
    (dict(lease_ttl=6, keepalive_interval=2.1), "timers.keepalive_interval"),
    (dict(keepalive_interval=0), "timers.keepalive_interval"),
    (dict(quorum_check_interval=2.6), "timers.quorum_check_interval"),
    (dict(quorum_check_timeout=2.6), "timers.quorum_check_timeout"),
    (dict(etcd_heartbeat_ms=100, etcd_election_ms=499), "timers.etcd_election_ms"),
    (dict(etcd_heartbeat_ms=300, etcd_election_ms=1000), "timers.etcd_election_ms"),
    (dict(lease_ttl=5, etcd_election_ms=5000), "timers.etcd_election_ms"),
    (dict(lease_ttl=3, etcd_election_ms=4000), "timers.etcd_election_ms"),
])
def test_bad_timer_relation(kw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ":"):
        Timers(**kw).validate()


@pytest.mark.parametrize("kw", [
    dict(lease_ttl=6, keepalive_interval=2.0),            # exactly ttl / 3
    dict(lease_ttl=2, keepalive_interval=0.5, quorum_check_interval=1.0,
         quorum_check_timeout=1.0, etcd_heartbeat_ms=100, etcd_election_ms=500),
    dict(etcd_heartbeat_ms=100, etcd_election_ms=500),    # exactly 5 heartbeats
    dict(lease_ttl=5, etcd_election_ms=4999),
])
def test_boundary_timers_valid(kw):
    Timers(**kw).validate()


def test_node_config_validates_timers(tmp_path):
    with pytest.raises(ConfigError, match="lease_ttl"):
        node(tmp_path, timers=Timers(lease_ttl=1))


@pytest.mark.parametrize("name", ["-n1", "n1-", "n_1", "n1.example", "", "a" * 64, "n 1", "nö"])
def test_bad_name(tmp_path, name):
    with pytest.raises(ConfigError, match=r"^name:"):
        node(tmp_path, name=name)


def test_name_with_trailing_newline_rejected(tmp_path):
    with pytest.raises(ConfigError):
        node(tmp_path, name="n1\n")


@pytest.mark.parametrize("name", ["n1", "a", "pve-2", "A" * 63, "1node"])
def test_good_names(tmp_path, name):
    assert node(tmp_path, name=name).name == name


@pytest.mark.parametrize("key", ["cluster_address", "replication_address", "api_bind"])
@pytest.mark.parametrize("value", ["host.example", "10.0.0", "10.0.0.256", "10.0.0.1/24"])
def test_non_ip_address(tmp_path, key, value):
    with pytest.raises(ConfigError, match=f"^{key}: not an IP address"):
        node(tmp_path, **{key: value})


def test_unknown_role(tmp_path):
    with pytest.raises(ConfigError, match=r"^role:"):
        node(tmp_path, role="arbiter")
    assert node(tmp_path, role="witness").role == "witness"


@pytest.mark.parametrize("key", ["api_port", "etcd_client_port", "etcd_peer_port"])
@pytest.mark.parametrize("port", [0, 65536, -1])
def test_port_range(tmp_path, key, port):
    with pytest.raises(ConfigError, match=f"^{key}:"):
        node(tmp_path, **{key: port})


def test_replication_address_defaults_to_cluster_address(tmp_path):
    cfg = node(tmp_path, cluster_address="192.168.1.10")
    assert cfg.replication_address == "192.168.1.10"
    cfg = node(tmp_path, cluster_address="192.168.1.10", replication_address="172.16.0.10")
    assert cfg.replication_address == "172.16.0.10"
    assert node(tmp_path).api_bind == "0.0.0.0"


def test_from_dict_rejects_unknown_keys(tmp_path):
    data = {"name": "n1", "state_dir": str(tmp_path), "cluster_address": "10.0.0.1",
            "colour": "blue"}
    with pytest.raises(ConfigError, match="unknown configuration keys: colour"):
        NodeConfig.from_dict(data)


def test_from_dict_rejects_unknown_timer_keys(tmp_path):
    data = {"name": "n1", "state_dir": str(tmp_path), "cluster_address": "10.0.0.1",
            "timers": {"lease_ttl": 5, "bogus": 1}}
    with pytest.raises(ConfigError, match="unknown timer keys: bogus"):
        NodeConfig.from_dict(data)


def test_save_load_round_trip(tmp_path):
    state = tmp_path / "state"
    cfg = NodeConfig(name="n2", state_dir=state, cluster_address="fd00::2",
                     replication_address="172.16.0.2", role="node", api_port=8443,
                     etcd_client_port=12379, etcd_peer_port=12380,
                     timers=Timers(lease_ttl=9, keepalive_interval=3.0, etcd_election_ms=2000))
    cfg.save()
    assert cfg.config_path == state / "node.json"
    assert json.loads(cfg.config_path.read_text())["timers"]["lease_ttl"] == 9
    loaded = NodeConfig.load(state)
    assert loaded == cfg
    assert isinstance(loaded.timers, Timers)
    assert not list(state.glob("*.tmp"))


def test_load_uses_given_state_dir(tmp_path):
    node(tmp_path / "a").save()
    (tmp_path / "a").rename(tmp_path / "b")
    assert NodeConfig.load(tmp_path / "b").state_dir == tmp_path / "b"


def test_derived_paths_and_urls(tmp_path):
    cfg = node(tmp_path, cluster_address="fd00::1", etcd_client_port=2379, etcd_peer_port=2380)
    assert cfg.etcd_client_url == "https://[fd00::1]:2379"
    assert cfg.etcd_peer_url == "https://[fd00::1]:2380"
    assert node(tmp_path).etcd_client_url == "https://10.0.0.1:2379"
    assert cfg.api_socket == tmp_path / "run" / "api.sock"
    assert cfg.tasks_dir == tmp_path / "tasks"


def test_watchdog_device_default_none_and_bad_value(tmp_path):
    cfg = NodeConfig(name="n1", state_dir=tmp_path, cluster_address="10.0.0.1")
    assert cfg.watchdog_device == "/dev/watchdog"
    assert NodeConfig(name="n1", state_dir=tmp_path, cluster_address="10.0.0.1",
                      watchdog_device="none").watchdog_device == "none"
    with pytest.raises(ConfigError, match="watchdog_device"):
        NodeConfig(name="n1", state_dir=tmp_path, cluster_address="10.0.0.1",
                   watchdog_device="watchdog0")
