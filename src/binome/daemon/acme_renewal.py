"""The daily ACME renewal of this node's certificate (PVE's pveupdate).

Owns no state. Once a day (the first check `FIRST_CHECK` seconds after the start), when
the node's config has ACME domains and its custom certificate ends within 30 days
(`binome.cluster.acme.renewal_due`), it starts PVE's renewal (the `acmerenew` task of
`PUT /nodes/{node}/certificates/acme/certificate`, as root@pam) and logs one line
saying why; otherwise one line saying why not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from binome.api.errors import ApiError
from binome.cluster import acme, pki
from binome.cluster.acme import AcmeConfig, AcmeError
from binome.cluster.node_config import NodeConfigs
from binome.loops import run_periodic

if TYPE_CHECKING:
    from binome.api.context import NodeServices

log = logging.getLogger("binome.acme")

INTERVAL = 86400.0
FIRST_CHECK = 300.0


class AcmeRenewal:
    def __init__(self, services: NodeServices) -> None:
        self.services = services

    async def check(self) -> str | None:
        """One daily check: the UPID of a renewal started, or None."""
        store = self.services.cluster.store
        if store is None or not self.services.cluster.is_member:
            return None
        name = self.services.config.name
        conf = await NodeConfigs(store).load(name, serializable=True)
        try:
            domains = acme.get_acme_conf(conf.values, await AcmeConfig(store).plugins())[
                "domains"]
        except (AcmeError, ValueError) as exc:
            log.error("Renewing ACME certificate failed: %s", exc)
            return None
        certs = self.services.certificates
        not_after = None
        if certs.custom() is not None:
            cert = pki.load_cert(certs.custom_cert.read_bytes())
            not_after = cert.not_valid_after_utc.timestamp()
        due, line = acme.renewal_due(bool(domains), certs.custom() is not None, not_after,
                                     time.time())
        if line:
            log.info("ACME renewal: %s", line)
        if not due:
            return None
        from binome.api.context import RequestContext
        from binome.api.methods.certificates import renew
        from binome.api.registry import registry

        method, _ = registry.match("PUT", f"/nodes/{name}/certificates/acme/certificate")
        ctx = RequestContext(self.services, "root@pam", None, method)
        try:
            upid = await renew(ctx, force=False)
        except ApiError as exc:
            log.error("Renewing ACME certificate failed: %s", exc.message)
            return None
        log.info("ACME renewal started: %s", upid)
        return upid

    async def _step(self) -> float | None:
        await self.check()
        return None

    async def run(self) -> None:
        await asyncio.sleep(FIRST_CHECK)
        await run_periodic("ACME renewal check", self._step, INTERVAL, logger=log)
