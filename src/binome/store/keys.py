"""The etcd key layout: every key binome writes is built here, nowhere else."""

from __future__ import annotations

ROOT = "/binome"

CLUSTER = f"{ROOT}/cluster"                # name, config_version, settings (JSON)
NODES = f"{ROOT}/nodes/"                   # static node records, one per node/witness
ALIVE = f"{ROOT}/alive/"                   # bound to each node's lease
NODE_STATS = f"{ROOT}/nodestats/"          # cpu/mem/uptime, bound to the node lease
PKI_CA = f"{ROOT}/pki/ca"                  # cluster CA certificate and key
ACCESS_AUTHKEY = f"{ROOT}/access/authkey"  # ticket/CSRF signing secret
ACCESS_USERS = f"{ROOT}/access/users/"
ACCESS_ACL = f"{ROOT}/access/acl"
CLUSTER_LOG = f"{ROOT}/clusterlog/"
CONFIG_NODES = f"{ROOT}/config/nodes/"     # per-node guest configs (next issues)
VMIDS = f"{ROOT}/vmids/"                   # vmid -> owner node: cluster-wide uniqueness
VM_STATUS = f"{ROOT}/vmstatus/"            # per node: its guests' runtime status (lease-bound)
NODE_OPTIONS = f"{ROOT}/nodeconfig/"       # per node: PVE's nodes/<node>/config text
STORAGE = f"{ROOT}/storage/"               # storage definitions (PVE storage.cfg)
# storage secrets (PVE's /etc/pve/priv/storage/<id>.pw): outside STORAGE, never listed
STORAGE_SECRETS = f"{ROOT}/priv/storage/"


# ACME accounts (with their keys) and challenge plugins (PVE's /etc/pve/priv/acme):
# binome.cluster.acme owns them
ACME_ACCOUNTS = f"{ROOT}/priv/acme/accounts/"
ACME_PLUGINS = f"{ROOT}/priv/acme/plugins"


def acme_account(name: str) -> str:
    return f"{ACME_ACCOUNTS}{name}"


def storage_secret(storage: str) -> str:
    return f"{STORAGE_SECRETS}{storage}"


def node(name: str) -> str:
    return f"{NODES}{name}"


def node_options(name: str) -> str:
    return f"{NODE_OPTIONS}{name}"


def alive(name: str) -> str:
    return f"{ALIVE}{name}"


def user(userid: str) -> str:
    return f"{ACCESS_USERS}{userid}"


def node_config_prefix(name: str) -> str:
    """Everything a node owns (guest configs); delnode refuses while non-empty."""
    return f"{CONFIG_NODES}{name}/"


def vm_conf(node: str, vmid: int) -> str:
    """Like /etc/pve/nodes/<node>/qemu-server/<vmid>.conf: the config lives under its owner."""
    return f"{CONFIG_NODES}{node}/qemu/{vmid}.conf"


def vmid(vmid: int) -> str:
    return f"{VMIDS}{vmid}"


def cluster_log(entry_id: str) -> str:
    return f"{CLUSTER_LOG}{entry_id}"


def prefix_end(prefix: str) -> str:
    """The exclusive range end of a prefix, as etcd's range API wants it."""
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()


# ---------------------------------------------------------------- HA (docs/ha.md section 8)
HA = f"{ROOT}/ha/"
HA_RESOURCES = f"{HA}resources"            # {sid: ResourceConfig JSON}
HA_GROUPS = f"{HA}groups"                  # {group: GroupConfig JSON}
HA_RULES = f"{HA}rules"                    # {rule: binome.ha.rules.Rule JSON} (PVE 9 rules)
HA_SETTINGS = f"{HA}settings"              # HaSettings JSON
HA_MANAGER_STATUS = f"{HA}manager_status"  # ManagerStatus JSON, written by the CRM master
HA_MANAGER_LOCK = f"{HA}manager_lock"      # value: node name; bound to the master's lease
HA_COMMANDS = f"{HA}commands/"             # <seq>: "migrate vm:100 n2" (API/CLI append)
HA_LRM = f"{HA}lrm/"                       # <node>: LrmStatus JSON
HA_HEARTBEAT = f"{HA}heartbeat/"           # <node>: rewritten at every renewal (lease-bound)
HA_RELEASED = f"{HA}released/"             # <node>: {"lease": id} written before a revoke
HA_FENCE = f"{HA}fence/"                   # <node>: fence device config (secrets write-only)
HA_FENCE_REQUESTS = f"{HA}fence_requests/"  # <node>: latest fence request and its state
HA_FENCE_CONFIRM = f"{HA}fence_confirm/"    # <node>: the admin's power-off confirmation


# The HA services' availability history (binome.ha.availability_log; outside HA, so the
# CRM's snapshot of /binome/ha/ does not carry it every round)
AVAILABILITY = f"{ROOT}/availability/"      # <sid>: {"log": [[time, state, node], ...], ...}


def availability(sid: str) -> str:
    return f"{AVAILABILITY}{sid}"


def ha_command(seq: str) -> str:
    return f"{HA_COMMANDS}{seq}"


def ha_lrm(node: str) -> str:
    return f"{HA_LRM}{node}"


def ha_heartbeat(node: str) -> str:
    return f"{HA_HEARTBEAT}{node}"


def ha_released(node: str) -> str:
    return f"{HA_RELEASED}{node}"


def ha_fence(node: str) -> str:
    return f"{HA_FENCE}{node}"


def ha_fence_confirm(node: str) -> str:
    return f"{HA_FENCE_CONFIRM}{node}"


def ha_fence_request(node: str) -> str:
    return f"{HA_FENCE_REQUESTS}{node}"
