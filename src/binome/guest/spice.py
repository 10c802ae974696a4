"""SPICE displays of this node's guests: their TLS ports and PVE's remote-viewer config.

Owns the choice of a guest's SPICE port (PVE's spice_port_range 61000-61999 on
127.0.0.1: a port nothing listens on, held back in this process for a while so two
guests starting together do not pick the same one), the subject and CA text that
remote-viewer checks the TLS server with (the node's cluster certificate, as PVE's
pve-ssl.pem), and ``spiceproxy``'s answer: the one-time password set on QEMU
(``set_password`` protocol spice, ``expire_password`` +30 s) and the config.
Nothing is stored: the port lives in the running QEMU (``query-spice``).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from binome.guest.errors import GuestFailure
from binome.tickets import make_spice_ticket

if TYPE_CHECKING:
    from binome.guest.runtime import QemuRuntime

__all__ = ["SPICE_PORTS", "SPICE_PROXY_PORT", "host_subject", "is_spice", "next_spice_port",
           "remote_viewer_config", "spice_port"]

SPICE_PORTS = range(61000, 62000)      # PVE's spice_port_range
SPICE_PROXY_PORT = 3128
PASSWORD_LIFETIME = 30                 # PVE: expire_password +30
_HOLD = 120.0                          # seconds a chosen port is not chosen again
_held: dict[int, float] = {}


def is_spice(vga_type: str) -> bool:
    """PVE's ``$is_spice``: qxl displays and virtio ones."""
    return vga_type.startswith(("qxl", "virtio"))


def next_spice_port(address: str = "127.0.0.1") -> int:
    """A port of SPICE_PORTS free on ``address`` now and not handed out lately."""
    now = time.monotonic()
    for port, at in list(_held.items()):
        if now - at > _HOLD:
            del _held[port]
    for port in SPICE_PORTS:
        if port in _held:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((address, port))
            except OSError:
                continue
        _held[port] = now
        return port
    raise GuestFailure("unable to find free port (61000-61999)")   # PVE's text


def host_subject(cert_file: Path) -> str:
    """The certificate's subject as PVE's read_x509_subject_spice gives it: OpenSSL's
    one-line form (``/CN=a/O=b``) with the separators made commas (``CN=a,O=b``),
    which is what remote-viewer's ``host-subject`` wants."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    parts = [f"{attr.rfc4514_attribute_name}={attr.value!s}"
             for rdn in cert.subject.rdns for attr in rdn]
    return ",".join(parts)


async def spice_port(runtime: QemuRuntime, vmid: int) -> int:
    """The running guest's SPICE port, from QEMU (PVE's spice_port: query-spice)."""
    info = await runtime.command(vmid, "query-spice")
    port = info.get("tls-port") or info.get("port") if isinstance(info, dict) else None
    if not port:
        raise GuestFailure("no spice port")
    return int(port)


async def remote_viewer_config(
    runtime: QemuRuntime, *, vmid: int, node: str, title: str, proxy: str,
    cert_file: Path, ca_file: Path, key: bytes,
) -> dict[str, Any]:
    """PVE's remote_viewer_config for a running guest with SPICE; sets the one-time
    password on QEMU. ``key``: the SPICE ticket key (binome.tickets.spice_key)."""
    port = await spice_port(runtime, vmid)
    password, proxy_ticket = make_spice_ticket(key, vmid, node, port)
    subject = host_subject(cert_file)
    ca = ca_file.read_text().replace("\n", "\\n")
    await runtime.command(vmid, "set_password", {"protocol": "spice", "password": password})
    await runtime.command(vmid, "expire_password",
                          {"protocol": "spice", "time": f"+{PASSWORD_LIFETIME}"})
    if ":" in proxy and not proxy.startswith("["):
        proxy = f"[{proxy}]"      # an IPv6 address
    return {
        "secure-attention": "Ctrl+Alt+Ins",
        "toggle-fullscreen": "Shift+F11",
        "release-cursor": "Ctrl+Alt+R",
        "type": "spice",
        "title": title,
        "host": proxy_ticket,
        "proxy": f"http://{proxy}:{SPICE_PROXY_PORT}",
        "tls-port": port,
        "host-subject": subject,
        "ca": ca,
        "password": password,
        "delete-this-file": 1,
    }
