"""A rules worker that serves many sites under leases: `facility rules workers`.

Start N of them (on one machine or several) on one PostgreSQL state store; each runs one
RulesService per site it holds. Every ttl/3 a worker renews its heartbeat and its leases
(rules/lease.py); a lease it could not renew is lost, and that site's service is stopped
at once (it also stops by itself when a fenced write is refused). Then it balances: with
S sites and L live workers, each worker's share is ceil(S / L); a worker above its share
releases the excess (its service stopped first, the last state stored), a worker below it
takes free or expired sites. A killed worker's sites are taken within ttl + ttl/3 plus a
service start (load the state, connect): under 10 s with the default ttl of 6 s.

The sites are a list of ids with a function that gives each one's catalog
(Catalog.for_site by default; a folder of site files plugs in the same way).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from facility.catalog import Catalog, site_rules_dir
from facility.metrics import Metrics
from facility.service import Service
from facility.settings import Settings
from rules.lease import Leases, SiteLease, lost
from rules.service import RulesService

log = logging.getLogger(__name__)

TTL = 6.0  # s a lease lasts unless renewed (renewed every ttl/3)
START_TIMEOUT = 60.0  # s a site's service may take to connect before it is given up
RETRY_AFTER = 30.0  # s a site that could not start is left alone (no epoch churn)


def worker_id() -> str:
    """host-pid-random: unique among live workers, readable in the lease table."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class Held:
    lease: SiteLease
    service: RulesService
    since: float = field(default_factory=time.monotonic)
    ready: asyncio.Task[None] | None = None
    sent: int = 0  # messages its service handed to the broker, as of its stop


class RulesWorkers(Service):
    def __init__(self, settings: Settings, catalog: Catalog, sites: Sequence[str], *,
                 owner: str | None = None, ttl: float = TTL, state_url: str | None = None,
                 catalog_for: Callable[[str], Catalog] | None = None,
                 on_event: Callable[[str], None] | None = None) -> None:
        """`sites`: the ids this worker may serve; `catalog_for(site)`: its catalog.
        `on_event`: told of each acquisition, start, loss and release (a line of text)."""
        super().__init__()
        if not sites:
            raise ValueError("no sites to serve")
        self.settings = settings
        self.sites = sorted(set(sites))
        self.owner = owner or worker_id()
        self.name = f"rules worker {self.owner}"
        self.ttl = ttl
        self.state_url = state_url or settings.state_url
        self.catalog_for = catalog_for or catalog.for_site
        self.on_event = on_event
        self.leases: Leases | None = None
        self.held: dict[str, Held] = {}
        self.live = 1
        self.lost: dict[str, str] = {}  # site -> why, the last time it was lost
        self.broken: dict[str, float] = {}  # site -> when to try it again (did not start)
        self.rounds = 0  # balancing rounds done
        # The held sites' metrics, kept current: serve_metrics reads the list per request.
        self.metrics: list[Metrics] = []
        self._changing = asyncio.Lock()  # starts, stops and releases, one at a time
        self._renewed = time.monotonic()
        # Each worker tries the sites from its own place in the list: fewer collisions.
        self._offset = zlib.crc32(self.owner.encode()) % len(self.sites)

    def _event(self, text: str) -> None:
        log.info("%s: %s", self.name, text)
        if self.on_event is not None:
            self.on_event(text)

    async def open(self) -> None:
        self.leases = await Leases.open(self.state_url, self.owner, self.ttl)

    async def close(self) -> None:
        """A clean stop: each service stops (its last state stored), then its lease is
        released, then this worker leaves; the others take the sites at once."""
        leases = self.leases
        for site in list(self.held):
            await self._stop(site, release=True)
        if leases is not None:
            with contextlib.suppress(Exception):  # the heartbeat expires anyway
                await leases.leave()
            await leases.close()
            self.leases = None

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._renewals(), name=f"{self.name} renewals")
            tg.create_task(self._balancing(), name=f"{self.name} balancing")

    # --- leases --------------------------------------------------------------------------

    async def _renewals(self) -> None:
        assert self.leases is not None
        while True:
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.ttl / 3):  # a hung database counts as away
                    self.live = await self.leases.beat()
                    held = {site: h.lease.epoch for site, h in self.held.items()}
                    kept = await self.leases.renew(held)
                self._renewed = started
            except Exception as exc:  # any failure of the database
                # The database is away: keep trying, but past the ttl the leases may be
                # another's (reckoned from before the last good renewal was asked).
                log.warning("%s: leases not renewed: %s", self.name, exc)
                if time.monotonic() - self._renewed >= self.ttl:
                    for site in list(self.held):
                        await self._lose(site, "leases not renewed within the ttl")
                await asyncio.sleep(self.ttl / 3)
                continue
            for site in set(held) - kept:
                await self._lose(site, "lease renewal refused")
            self.ready.set()
            await asyncio.sleep(max(0.0, self.ttl / 3 - (time.monotonic() - started)))

    async def _balancing(self) -> None:
        await self.ready.wait()  # registered: the live count includes this worker
        while True:
            try:
                await self._balance()
            except Exception as exc:  # the database away: the renewals deal with it
                log.warning("%s: sites not balanced: %r", self.name, exc)
            self.rounds += 1
            await asyncio.sleep(self.ttl / 3)

    async def _balance(self) -> None:
        assert self.leases is not None
        for site, held in list(self.held.items()):
            failed = held.service.failed
            if failed is not None:
                if lost(failed):
                    await self._lose(site, f"a write was refused ({failed!r})")
                else:
                    log.error("%s: site %s stopped: %r", self.name, site, failed)
                    await self._stop(site, release=True, why=f"its service failed: {failed!r}")
        share = math.ceil(len(self.sites) / max(1, self.live))
        for site in sorted(self.held, key=lambda s: self.held[s].since)[share:]:
            await self._stop(site, release=True, why=f"above the share of {share}")
        if len(self.held) >= share:
            return
        holders = await self.leases.holders(self.sites)
        order = self.sites[self._offset:] + self.sites[:self._offset]
        for site in order:
            if len(self.held) >= share:
                break
            holder = holders.get(site)
            if site in self.held or (holder is not None and holder.owner
                                     and not holder.expired) \
                    or self.broken.get(site, 0.0) > time.monotonic():
                continue
            epoch = await self.leases.acquire(site)
            if epoch is not None:
                await self._start(site, epoch)

    # --- a site's service -----------------------------------------------------------------

    async def _start(self, site: str, epoch: int) -> None:
        assert self.leases is not None
        lease = SiteLease(self.leases, site, epoch)
        self._event(f"acquired {site} epoch {epoch}")
        async with self._changing:
            try:
                catalog = self.catalog_for(site)
                service = RulesService(self.settings, catalog, site=site,
                                       state_url=self.state_url, lease=lease,
                                       rules_dir=site_rules_dir(self.settings, catalog))
                await service.__aenter__()
            except Exception as exc:  # its files, the state or the lease: give it back
                log.error("%s: site %s not started (tried again in %gs): %s", self.name,
                          site, RETRY_AFTER, exc)
                self.broken[site] = time.monotonic() + RETRY_AFTER
                with contextlib.suppress(Exception):
                    await self.leases.release(site, epoch)
                self._event(f"released {site} epoch {epoch}: not started "
                            f"({type(exc).__name__})")
                return
            self.broken.pop(site, None)
            self.metrics.append(service.metrics)
            held = self.held[site] = Held(lease, service)
            held.ready = asyncio.create_task(self._when_ready(site, held),
                                             name=f"{self.name} {site} ready")

    async def _when_ready(self, site: str, held: Held) -> None:
        try:
            await held.service.wait_ready(START_TIMEOUT)
        except Exception:  # the balancing loop sees the service's failure
            return
        self._event(f"serving {site} epoch {held.lease.epoch} after "
                    f"{time.monotonic() - held.since:.2f}s")

    async def _lose(self, site: str, why: str) -> None:
        """The lease is another's: stop the service without a last write, release nothing."""
        held = self.held.get(site)
        if held is None:
            return
        held.service.fenced = True  # no last heartbeat: the store would refuse it anyway
        await self._stop(site, release=False)
        self.lost[site] = why
        # Counted after the stop: what it wrote and sent until it stopped, all of it.
        self._event(f"lost {site} epoch {held.lease.epoch}: {why}; "
                    f"{held.service.commits} writes, {held.sent} messages sent in this epoch")

    async def _stop(self, site: str, *, release: bool, why: str = "") -> None:
        async with self._changing:
            held = self.held.pop(site, None)
            if held is None:
                return
            with contextlib.suppress(ValueError):
                self.metrics.remove(held.service.metrics)
            if held.ready is not None:
                held.ready.cancel()
                await asyncio.gather(held.ready, return_exceptions=True)
            outbox = held.service.outbox  # closed and dropped by the stop: count it now
            try:
                await held.service.__aexit__(None, None, None)
            except Exception as exc:  # what it died of is already handled
                log.debug("%s: site %s stopped: %r", self.name, site, exc)
            held.sent = held.service.sent + (outbox.published if outbox is not None else 0)
            if release and self.leases is not None and not held.service.fenced:
                try:
                    await self.leases.release(site, held.lease.epoch)
                except Exception as exc:  # it expires within the ttl anyway
                    log.warning("%s: site %s not released: %r", self.name, site, exc)
                self._event(f"released {site} epoch {held.lease.epoch}"
                            + (f": {why}" if why else ""))

    @staticmethod
    def _published(held: Held) -> int:
        outbox = held.service.outbox
        return held.service.sent + (outbox.published if outbox is not None else 0)

    def status(self) -> dict[str, object]:
        """What this worker holds, for its status file and the tests."""
        return {"owner": self.owner, "live": self.live,
                "sites": {site: {"epoch": h.lease.epoch, "ready": h.service.ready.is_set(),
                                 "writes": h.service.commits, "sent": self._published(h)}
                          for site, h in self.held.items()},
                "lost": dict(self.lost)}
