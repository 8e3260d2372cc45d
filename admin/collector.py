"""The collector process: receives every worker's clicks, enriches and writes them, keeps
the live counters, and serves the admin API, SSE and /metrics.

Start order: open the writer, load the pipeline's progress and catch up rollups, open
GeoIP, listen for the workers (edge/ingest.py), start the admin listener, then tell the
supervisor it is ready (and the admin port). Stop (SIGTERM from the supervisor, after the
workers): wait until every worker has shipped its last batch and gone, stop the admin
listener, write everything received and the last rollups, report the final figures to
the supervisor, exit 0 only if nothing is left unwritten. SIGINT is ignored.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Final

from edge import catalog
from edge.chclient import ClickHouseError
from edge.clicks import ClickRecorder
from edge.config import Config
from edge.db import Database, current_rev
from edge.ingest import Ingest
from edge.live import LiveCounters
from edge.looplag import LoopLag
from geo.geoip import GeoDatabase

log = logging.getLogger("linkedge.collector")

# Clicks wait in the workers while the collector restarts: give them time to come back
# and ship before the collector gives up on them at a stop.
WORKERS_GONE_GRACE_S: Final = 5.0
GC_THRESHOLDS: Final = (100_000, 50, 100)
LAUNCHES_KEPT_S: Final = 86400  # launches older than this cannot be in a scanner window


class Collector:
    """Everything the collector process holds; the admin API reads its parts."""

    def __init__(self, config: Config, ingest_path: str) -> None:
        self.config = config
        self.started_at = time.time()
        self.live = LiveCounters()
        self.geo = GeoDatabase(config.geoip_path, config.geoip_asn_path)
        timeout_ms = int(config.db_busy_timeout_s * 1000)
        self.writer = Database(config.db_path, timeout_ms=timeout_ms)
        self.link_store: Any = None  # edge/pgstore.py StoreSync, with --link-store
        if config.link_store:
            from edge import pgstore

            store = pgstore.LinkStore(config.link_store)
            self.writer = pgstore.StoreDatabase(config.db_path, store, timeout_ms=timeout_ms)
            self.link_store = pgstore.StoreSync(store, self.writer, self._serve_mirror)
        # the click limits' reads: never queued behind a write of clicks
        self.limits_db = Database(config.db_path, timeout_ms=timeout_ms)
        self.clicks: ClickRecorder | None = None
        self.edges = Ingest(None, ingest_path)
        self.admin: Any = None
        self.workers_expected = config.workers
        self.loop_lag = LoopLag()
        self.alerts: Any = None  # admin/alerts.py AlertEngine

    async def start(self) -> None:
        await self.writer.open()
        if self.link_store is not None:
            self.link_store.start()
        status = self.geo.status()
        if status.get("enabled"):
            log.info("GeoIP: %s built %s", status.get("database_type"), status.get("build_date"))
        else:
            log.warning(
                "GeoIP is off (%s): clicks are recorded without country/region/city.",
                status.get("error"),
            )
        if self.config.record_clicks:
            sink = None
            if self.config.click_sink:
                from edge.chclient import parse_sink_url
                from edge.chsink import ClickHouseSink, node_id

                url = parse_sink_url(self.config.click_sink)
                sink = ClickHouseSink(url, node_id(self.config.db_path))
                log.info("clicks go to ClickHouse at %s", url.safe())
            self.clicks = ClickRecorder(self.config, self.writer, self.geo, self.live, sink)
            await self.clicks.start()
            self.edges = Ingest(self.clicks, self.edges.path)
        else:
            log.warning("click recording is OFF (record_clicks=false)")
        await self.limits_db.open()
        await self.edges.watch_limits(self._load_catalog, lambda: self.limits_db.run(current_rev))
        await self.edges.start()
        if self.config.admin_enabled:
            from admin.api import AdminServer

            self.admin = AdminServer(self)
            await self.admin.start()
        from admin.alerts import AlertEngine

        self.alerts = AlertEngine(self)
        await self.alerts.start()

    async def _load_catalog(self) -> tuple[int, dict[int, int], dict[int, int]]:
        """What the collector keeps of the catalog: the click limits (for the leases) and
        the links launched in the last day (for the scanner window)."""
        since = int((time.time() - LAUNCHES_KEPT_S) * 1000)
        rev, limits, spent, launches = await self.limits_db.run(catalog.collector_catalog, since)
        if self.clicks is not None:
            self.clicks.enricher.launches = launches
        return rev, limits, spent

    async def stop(self) -> int:
        """Graceful stop (the workers go first); returns clicks left unwritten."""
        grace = self.config.shutdown_timeout_s + WORKERS_GONE_GRACE_S
        if not await self.edges.wait_gone(grace):
            log.error("stopping with %d worker(s) still connected", len(self.edges.sessions))
        if self.alerts is not None:
            await self.alerts.stop()
        if self.admin is not None:
            await self.admin.stop()
        left = 0
        if self.clicks is not None:
            left = await self.clicks.close(timeout_s=max(self.config.shutdown_timeout_s, 5.0))
        await self.edges.stop()
        if self.link_store is not None:
            await self.link_store.stop()
        await self.limits_db.close()
        await self.writer.close()
        self.geo.close()
        return left

    async def _serve_mirror(self) -> None:
        """The link store's changes reached this node's SQLite: the workers serve them now,
        the admin API knows new and revoked tokens."""
        rev = await self.writer.run(current_rev)
        await self.edges.serve_rev(rev)
        if self.admin is not None:
            await self.admin.tokens.refresh()

    def restart_counts(self) -> dict[str, int]:
        """The supervisor's restart counts by process (a file it rewrites next to the
        workers' socket)."""
        path = os.path.join(os.path.dirname(self.edges.path), "restarts.json")
        try:
            with open(path) as f:
                counts = json.load(f)
        except (OSError, ValueError):
            return {}
        return {str(k): int(v) for k, v in counts.items()} if isinstance(counts, dict) else {}

    def report(self, left: int) -> dict[str, Any]:
        """The final figures, for the supervisor's stop line."""
        m = self.clicks.metrics if self.clicks is not None else None
        return {
            "recording": self.clicks is not None,
            "received": m.received if m else 0,
            "written": m.written if m else 0,
            "duplicates": m.duplicates if m else 0,
            "unwritten": left,
            "peak_queue": m.peak_queue if m else 0,
            "max_flush_lag_s": m.max_flush_lag_s if m else 0.0,
            "workers": self.edges.totals(),
        }


async def run_collector(config: Config, ingest_path: str, ready_fd: int | None) -> int:
    collector = Collector(config, ingest_path)
    try:
        await collector.start()
    except BaseException:
        await collector.stop()
        raise
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    admin_port = collector.admin.port if collector.admin is not None else None
    ready = {"ready": True, "admin_port": admin_port}
    if ready_fd is not None:
        os.write(ready_fd, json.dumps(ready).encode() + b"\n")
    gc.collect()
    gc.freeze()
    # Fewer, larger young-generation passes: the pipeline allocates in bursts, and full
    # passes over the caches found nothing to free.
    gc.set_threshold(*GC_THRESHOLDS)
    collector.loop_lag.start()  # steady state from here (start-up work is not a stall)
    await stop.wait()
    collector.loop_lag.stop()
    left = await collector.stop()
    if ready_fd is not None:
        os.write(ready_fd, json.dumps({"report": collector.report(left)}).encode() + b"\n")
        os.close(ready_fd)
    return 0 if left == 0 else 1


def main() -> int:
    """`python -m admin.collector`: started by the supervisor (admin/runtime.py) with the
    config, the workers' socket path and a ready pipe in the environment."""
    from edge.config import config_from_json
    from edge.process import child_setup
    from edge.server import install_event_loop_policy

    child_setup()
    config = config_from_json(os.environ["LINKEDGE_CHILD_CONFIG"])
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s collector %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ready = os.environ.get("LINKEDGE_READY_FD")
    install_event_loop_policy()
    try:
        return asyncio.run(
            run_collector(
                config, os.environ["LINKEDGE_COLLECTOR_SOCKET"], int(ready) if ready else None
            )
        )
    except (OSError, ClickHouseError) as exc:  # e.g. the ClickHouse sink is unreachable
        print(f"linkedge: the collector cannot start: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
