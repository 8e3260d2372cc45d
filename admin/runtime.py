"""`linkedge serve`: one process wiring the edge, the click pipeline and the admin API.

Start order: migrate the database, load the link table, open GeoIP, start the click
flusher, start the edge listener, start the admin listener. Stop order (SIGTERM/SIGINT):
stop accepting on both listeners, answer requests in flight, then drain the click
pipeline so every redirect served is a row, then close the databases.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from edge import catalog
from edge.clicks import ClickRecorder
from edge.config import Config
from edge.db import Database
from edge.links import LinkTable
from edge.live import LiveCounters
from edge.server import EdgeServer
from edge.sync import LinkSync
from geo.geoip import GeoDatabase

log = logging.getLogger("linkedge")

GIL_SWITCH_INTERVAL_S = 0.0005  # seconds
GC_THRESHOLDS = (100_000, 50, 100)


class Runtime:
    """Everything a running server holds; the admin API reads its parts."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.started_at = time.time()
        self.loop_kind = "asyncio"
        self.table = LinkTable(unknown_host_404=config.unknown_host == "404")
        self.live = LiveCounters()
        self.geo = GeoDatabase(config.geoip_path, config.geoip_asn_path)
        timeout_ms = int(config.db_busy_timeout_s * 1000)
        self.writer = Database(config.db_path, timeout_ms=timeout_ms)
        self.reader = Database(config.db_path, timeout_ms=timeout_ms)
        self.sync = LinkSync(self.reader, self.table, config.link_poll_interval_s)
        self.clicks: ClickRecorder | None = None
        self.edge: EdgeServer | None = None
        self.admin: Any = None
        self.stop_event = asyncio.Event()
        self.unwritten_at_exit = 0

    async def start(self) -> None:
        """Start everything; if any part fails, stop what started (threads included)."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        conn = catalog.open_db(self.config.db_path)
        conn.close()
        await self.writer.open()
        await self.reader.open()
        count = await self.sync.load()
        log.info("loaded %d link(s) from %s", count, self.config.db_path)
        status = self.geo.status()
        if status.get("enabled"):
            log.info("GeoIP: %s built %s", status.get("database_type"), status.get("build_date"))
        else:
            log.warning(
                "GeoIP is off (%s): clicks are recorded without country/region/city.",
                status.get("error"),
            )
        if self.config.record_clicks:
            self.clicks = ClickRecorder(self.config, self.writer, self.geo, self.live)
            await self.clicks.start()
        else:
            log.warning("click recording is OFF (record_clicks=false)")
        self.edge = EdgeServer(self.config, self.table, self.clicks)
        await self.edge.start()
        self.sync.start()
        if self.config.admin_enabled:
            from admin.api import AdminServer

            self.admin = AdminServer(self)
            await self.admin.start()

    async def stop(self) -> int:
        """Graceful stop; returns the number of captured clicks left unwritten."""
        if self.edge is not None:
            await self.edge.stop()
        if self.admin is not None:
            await self.admin.stop()
        await self.sync.stop()
        left = 0
        if self.clicks is not None:
            left = await self.clicks.close(timeout_s=max(self.config.shutdown_timeout_s, 5.0))
        await self.writer.close()
        await self.reader.close()
        self.geo.close()
        self.unwritten_at_exit = left
        return left


async def serve(config: Config, on_ready: Callable[[Runtime], None] | None = None) -> int:
    rt = Runtime(config)
    await rt.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, rt.stop_event.set)
    assert rt.edge is not None
    edge_port = rt.edge.port
    print(f"linkedge edge listening on http://{config.edge_host}:{edge_port}", flush=True)
    if rt.admin is not None:
        print(
            f"linkedge admin API listening on http://{config.admin_host}:{rt.admin.port}",
            flush=True,
        )
    # Objects alive after start (the link table, caches, modules) never become garbage:
    # move them out of the collector's sight so a full collection does not walk them
    # while requests wait (tens of ms with a million links).
    gc.collect()
    gc.freeze()
    # Fewer, larger young-generation passes: the click pipeline allocates in bursts, and
    # full passes over the caches found nothing to free (27 a minute under load, 2 now).
    gc.set_threshold(*GC_THRESHOLDS)
    if on_ready is not None:
        on_ready(rt)
    await rt.stop_event.wait()
    log.info("stopping: finishing requests in flight, then writing every click")
    left = await rt.stop()
    redirects = rt.edge.metrics.redirects
    if rt.clicks is not None:
        m = rt.clicks.metrics
        print(
            f"linkedge stopped: {redirects} redirects served, {m.captured} clicks captured, "
            f"{m.written} written, {m.dropped} dropped, {left} unwritten; "
            f"peak queue {m.peak_queue}, max flush lag {m.max_flush_lag_s * 1000:.0f} ms",
            flush=True,
        )
    else:
        print(f"linkedge stopped: {redirects} redirects served, clicks not recorded", flush=True)
    return 0 if left == 0 else 1


def run(config: Config, on_ready: Callable[[Runtime], None] | None = None) -> int:
    from edge.server import install_event_loop_policy

    kind = install_event_loop_policy()
    # The click pipeline's threads (enrichment, SQLite) share the GIL with the event loop;
    # CPython hands it over every 5 ms by default, which shows up as 5-20 ms tail latency
    # on redirects while a batch is enriched. A shorter interval keeps the loop responsive.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    log.info("event loop: %s", kind)
    try:
        return asyncio.run(serve(config, on_ready))
    except OSError as exc:
        print(f"linkedge: cannot start: {exc}", file=sys.stderr)
        return 2
