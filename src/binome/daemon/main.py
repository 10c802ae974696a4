"""`binomed`: the node daemon.

It serves the API (HTTPS on 8006 and a local unix socket for the CLI), runs
the node's etcd member as its child once the node belongs to a cluster, keeps
the node lease alive and watches quorum. The same daemon runs on a witness
with `--role witness` (no guests).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from binome.config import ConfigError, NodeConfig

if TYPE_CHECKING:
    from binome.ha.agent.lease_bridge import LeaseBridge

log = logging.getLogger("binome.daemon")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="binomed", description="binome node daemon")
    p.add_argument("--state-dir", type=Path, default=Path("/var/lib/binome"),
                   help="node state directory (default: /var/lib/binome)")
    p.add_argument("--name", help="node name (first start only; saved in node.json)")
    p.add_argument("--address", help="cluster network address of this node")
    p.add_argument("--replication-address", help="replication network address")
    p.add_argument("--role", choices=("node", "witness"), help="node or witness")
    p.add_argument("--api-port", type=int, help="API port (default 8006)")
    p.add_argument("--api-bind", help="API bind address (default 0.0.0.0)")
    p.add_argument("--etcd-client-port", type=int, help="etcd client port (default 2379)")
    p.add_argument("--etcd-peer-port", type=int, help="etcd peer port (default 2380)")
    p.add_argument("--watchdog-device",
                   help="hardware watchdog for the HA self-fence, used if it exists "
                        "(default /dev/watchdog; 'none': the supervisor process only)")
    p.add_argument("--metrics-listen", metavar="ADDRESS:PORT",
                   help="also serve Prometheus /metrics over plain HTTP, without "
                        "authentication, on this address ('' turns it off; default: "
                        "only on the API port, with a ticket or token)")
    p.add_argument("--log-level", default=os.environ.get("BINOME_LOG_LEVEL", "info"))
    return p.parse_args(argv)


def load_config(args: argparse.Namespace) -> NodeConfig:
    overrides = {k: v for k, v in {
        "name": args.name, "cluster_address": args.address,
        "replication_address": args.replication_address, "role": args.role,
        "api_port": args.api_port, "api_bind": args.api_bind,
        "etcd_client_port": args.etcd_client_port, "etcd_peer_port": args.etcd_peer_port,
        "watchdog_device": args.watchdog_device, "metrics_listen": args.metrics_listen,
    }.items() if v is not None}
    path = args.state_dir / "node.json"
    if path.exists():
        cfg = NodeConfig.load(args.state_dir)
        if "name" in overrides and overrides["name"] != cfg.name:
            raise ConfigError(f"name: this state directory belongs to node '{cfg.name}'")
        data = cfg.to_dict() | overrides
        data["timers"] = cfg.to_dict()["timers"]
        cfg = NodeConfig.from_dict(data)
    else:
        if "name" not in overrides or "cluster_address" not in overrides:
            raise ConfigError("first start: --name and --address are required")
        cfg = NodeConfig(state_dir=args.state_dir, **overrides)
    cfg.save()
    return cfg


async def run(cfg: NodeConfig, lease_bridge: LeaseBridge | None = None) -> None:
    from binome.api import methods  # noqa: F401  (registers the API methods)
    from binome.daemon.acme_renewal import AcmeRenewal
    from binome.daemon.backupjobs import node_scheduler
    from binome.daemon.graph import NodeGraph
    from binome.daemon.rrd import sample_forever, storage_usage
    from binome.metrics.push import MetricPusher

    node = NodeGraph(cfg, lease_bridge)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pidfile = cfg.run_dir / "binomed.pid"
    cfg.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pidfile.write_text(f"{os.getpid()}\n")
    await node.api.start()
    await node.spice_proxy.start()
    node.notifications.start()      # before anything that emits events
    try:
        await node.metrics.start_listener()
        await node.cluster.start()
        if node.volumes is not None:
            await node.volumes.start()    # adopts (or starts) the volume engine
        if node.guests is not None:
            await node.guests.start()
        if node.ha is not None:
            await node.ha.start()        # CRM + LRM rounds, HA heartbeat
        guests = node.guests
        sampler = asyncio.create_task(sample_forever(
            node.rrd, node.host.rrd_sample,
            lambda: guests.last_status if guests is not None else {},
            lambda: storage_usage(node.storages, cfg.name),
            interval=cfg.timers.rrd_interval), name="rrd")
        pusher = asyncio.create_task(MetricPusher(node).run(), name="metric-push")
        node.health.start()               # certificate expiry, etcd members: notifications
        renewal = asyncio.create_task(AcmeRenewal(node).run(), name="acme-renewal")
        backup_jobs = None
        if node.guests is not None:     # removes stale backup staging at its first round
            backup_jobs = asyncio.create_task(node_scheduler(node).run(), name="backup-jobs")
        log.info("binomed ready", extra={"role": cfg.role,
                                         "cluster": node.cluster.cluster_name or "-"})
        await stop.wait()
        log.info("shutting down")
        sampler.cancel()
        pusher.cancel()
        renewal.cancel()
        if backup_jobs is not None:
            backup_jobs.cancel()
    finally:
        await node.health.stop()
        await node.metrics.stop_listener()
        await node.spice_proxy.stop()
        await node.api.stop()
        if node.ha is not None:
            await node.ha.stop()         # before the lease is revoked
        await node.tasks.shutdown()
        if node.guests is not None:
            await node.guests.stop()   # detaches from guests; they keep running
        if node.volumes is not None:
            await node.volumes.stop()  # stops watching; the engine keeps serving
        await node.cluster.stop()
        node.rrd.close()
        await node.notifications.stop()   # last: undelivered notifications are lost
        pidfile.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from binome.daemon import logfmt

    try:
        cfg = load_config(args)
    except (ConfigError, ValueError) as exc:
        print(f"binomed: {exc}", file=sys.stderr)
        sys.exit(2)
    logfmt.setup(cfg.name, args.log_level, cfg.log_dir / "binomed.log")
    asyncio.run(run(cfg, bridge_lease(cfg)))


def bridge_lease(cfg: NodeConfig) -> LeaseBridge | None:
    """After a crash of the last daemon, its lease kept alive from now on (before the
    heavy imports: the self-fence deadline counts from the last renewal)."""
    if cfg.role != "node":
        return None
    from binome.ha.agent import lease_bridge

    path = lease_bridge.record_path(cfg.run_dir)
    record = lease_bridge.load_record(path)
    if record is None:
        lease_bridge.forget_record(path)   # a stale one, from before a long stop
        return None
    try:
        bridge = lease_bridge.LeaseBridge(record)
    except (OSError, ValueError) as exc:   # TLS files gone: a node that left its cluster
        log.warning("lease of the previous daemon not bridged: %s", exc)
        return None
    bridge.start()
    return bridge


if __name__ == "__main__":
    main()
