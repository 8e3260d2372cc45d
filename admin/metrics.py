"""Prometheus text for /metrics: every counter a running server keeps, in one place.

Rules: counters only grow; a gauge says what is true now. Names start with `linkedge_`,
units are in the name (`_seconds`, `_total`). Label values are escaped (`label`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from admin.http import JsonListener
from geo import bots

PROMETHEUS_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# The flush-duration histogram's upper bounds (seconds): a healthy flush of a 100 ms batch
# takes 1-20 ms; the top buckets show a disk or lock in trouble.
FLUSH_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """A cumulative Prometheus histogram (bucket counts only ever grow)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = []
        cumulative = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            cumulative += n
            out.append(f'{name}_bucket{{le="{bound:g}"}} {cumulative}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{name}_sum {self.total:.6f}")
        out.append(f"{name}_count {self.count}")
        return out


def metric(
    out: list[str], name: str, kind: str, help_text: str, samples: Sequence[tuple[str, Any]]
) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        out.append(f"{name}{labels} {value}")


def label(value: object) -> str:
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def conversion_metrics(out: list[str], counters: Any) -> None:
    """Events recorded by source, repeats of a recorded event id, and refusals by reason
    (edge/live.py Conversions)."""
    metric(
        out,
        "linkedge_events_total",
        "counter",
        "Conversion events recorded, by source (api, postback, pixel).",
        [(f'{{source="{s}"}}', counters.accepted.get(s, 0)) for s in ("api", "postback", "pixel")],
    )
    metric(
        out,
        "linkedge_events_duplicate_total",
        "counter",
        "Events sent again with an event_id already recorded (answered, not counted twice).",
        [
            (f'{{source="{s}"}}', counters.duplicates.get(s, 0))
            for s in ("api", "postback", "pixel")
        ],
    )
    metric(
        out,
        "linkedge_events_rejected_total",
        "counter",
        "Events refused: unknown click id (404), outside the attribution window (422), invalid.",
        [
            (f'{{reason="{r}"}}', counters.rejected.get(r, 0))
            for r in ("unknown_click", "outside_window", "invalid")
        ],
    )


def render(runtime: Any, listener: JsonListener, flush_histogram: Histogram) -> str:
    """Prometheus text of everything a running server counts: the edge workers' counters
    (summed, and per worker), the collector's pipeline, the admin listener, GeoIP."""
    rt = runtime
    out: list[str] = []
    fleet = rt.edges.totals()
    workers = rt.edges.workers()
    by_status: dict[int, int] = {}
    for w in workers:
        for status, n in (w.get("by_status") or {}).items():
            by_status[int(status)] = by_status.get(int(status), 0) + int(n)
    for slot_sums in rt.edges.retired.values():
        for status, n in (slot_sums.get("by_status") or {}).items():
            by_status[int(status)] = by_status.get(int(status), 0) + int(n)

    def summed(name: str) -> int:
        return sum(int(w.get(name) or 0) for w in workers if not w.get("retired")) + sum(
            int(r.get(name, 0)) for r in rt.edges.retired.values()
        )

    metric(
        out,
        "linkedge_requests_total",
        "counter",
        "Edge requests answered, by status (all workers).",
        [(f'{{status="{s}"}}', n) for s, n in sorted(by_status.items())],
    )
    for name, kind, help_text, value in (
        ("redirects_total", "counter", "Redirects served.", fleet["redirects"]),
        (
            "bad_requests_total",
            "counter",
            "Edge requests refused as malformed or oversized.",
            fleet["bad_requests"],
        ),
        (
            "timeouts_total",
            "counter",
            "Edge connections closed for a slow request head (408).",
            summed("timeouts"),
        ),
        (
            "connections_rejected_total",
            "counter",
            "Edge connections refused past max_connections (503).",
            summed("connections_rejected"),
        ),
        (
            "accept_errors_total",
            "counter",
            "Edge connections the kernel could not hand us (descriptors exhausted).",
            summed("accept_errors"),
        ),
    ):
        metric(out, f"linkedge_{name}", kind, help_text, [("", value)])
    metric(
        out,
        "linkedge_connections_total",
        "counter",
        "Connections accepted, by listener.",
        [
            ('{listener="edge"}', summed("connections_total")),
            ('{listener="admin"}', listener.connections_total),
        ],
    )
    metric(
        out,
        "linkedge_open_connections",
        "gauge",
        "Open connections, by listener.",
        [
            ('{listener="edge"}', fleet["connections_open"]),
            ('{listener="admin"}', len(listener.connections)),
        ],
    )
    metric(
        out,
        "linkedge_admin_connections_evicted_total",
        "counter",
        "Idle admin connections closed to make room at the connection cap.",
        [("", listener.evicted)],
    )
    metric(
        out,
        "linkedge_admin_requests_total",
        "counter",
        "Admin API requests answered, by status.",
        [(f'{{status="{s}"}}', n) for s, n in sorted(listener.by_status.items())],
    )
    clicks = rt.clicks
    if clicks is not None:
        m = clicks.metrics
        for name, value, help_text in (
            ("captured", fleet["captured"], "Clicks captured by the edge workers."),
            ("written", fleet["acked"], "Clicks written to SQLite (acknowledged to a worker)."),
            ("dropped", fleet["dropped"], "Clicks dropped: a worker's bounded queue was full."),
        ):
            metric(out, f"linkedge_clicks_{name}_total", "counter", help_text, [("", value)])
        metric(
            out,
            "linkedge_click_queue_depth",
            "gauge",
            "Clicks captured and not yet written (in workers, in flight, in the collector).",
            [("", fleet["queued"])],
        )
        metric(
            out,
            "linkedge_collector_queue_depth",
            "gauge",
            "Clicks the collector holds, received and not yet written.",
            [("", clicks.queued)],
        )
        metric(
            out,
            "linkedge_collector_reading_paused",
            "gauge",
            "1 while the collector's queue is full and it stops reading from the workers.",
            [("", 1 if m.paused else 0)],
        )
        metric(
            out,
            "linkedge_collector_resent_batches_total",
            "counter",
            "Batches a worker sent again that were already received or written.",
            [("", m.duplicates)],
        )
        metric(
            out,
            "linkedge_click_write_failures_total",
            "counter",
            "Failed click batch writes (the clicks are kept and retried).",
            [("", m.write_failures)],
        )
        metric(
            out,
            "linkedge_user_agents_read_cheaply_total",
            "counter",
            "Unseen user agents read without ua-parser: their parse budget was spent.",
            [("", clicks.enricher.cheap_uas)],
        )
        out.append("# HELP linkedge_click_flush_duration_seconds Time to write one click batch.")
        out.append("# TYPE linkedge_click_flush_duration_seconds histogram")
        out.extend(flush_histogram.lines("linkedge_click_flush_duration_seconds"))
        metric(
            out,
            "linkedge_click_flush_lag_seconds",
            "gauge",
            "Age of the oldest click the collector has not written yet.",
            [("", f"{clicks.flush_lag_s:.3f}")],
        )
    per_worker = [w for w in workers if not w.get("retired")]
    for name, help_text in (
        ("captured", "Clicks captured by this worker process."),
        ("acked", "Clicks of this worker process the collector has written."),
        ("dropped", "Clicks this worker process dropped (its queue was full)."),
        ("queued", "Clicks this worker process holds, not yet written."),
        ("redirects", "Redirects this worker process served."),
    ):
        metric(
            out,
            f"linkedge_worker_{name}",
            "gauge" if name == "queued" else "counter",
            help_text,
            [(f'{{worker="{w["slot"]}"}}', int(w.get(name) or 0)) for w in per_worker],
        )
    metric(
        out,
        "linkedge_worker_up",
        "gauge",
        "1 when the worker is connected to the collector.",
        [(f'{{worker="{w["slot"]}"}}', 1 if w.get("connected") else 0) for w in workers],
    )
    metric(
        out,
        "linkedge_process_restarts_total",
        "counter",
        "Times the supervisor started a process again after it died.",
        [(f'{{process="{label(n)}"}}', c) for n, c in sorted(rt.restart_counts().items())],
    )
    lags = [("collector", rt.loop_lag.report())] + [
        (f"worker {w['slot']}", w["loop_lag"])
        for w in per_worker
        if isinstance(w.get("loop_lag"), dict)
    ]
    metric(
        out,
        "linkedge_loop_lag_recent_max_seconds",
        "gauge",
        "The latest an event loop ran a 10 ms timer, over the last 10-20 s, by process.",
        [(f'{{process="{label(p)}"}}', lag["recent_max_s"]) for p, lag in lags],
    )
    metric(
        out,
        "linkedge_loop_stalls_total",
        "counter",
        "Timer ticks an event loop ran later than a bound, by process and bound.",
        [
            (f'{{process="{label(p)}",over="{bound}"}}', n)
            for p, lag in lags
            for bound, n in dict(lag["stalls"]).items()
        ],
    )
    metric(
        out,
        "linkedge_links_loaded",
        "gauge",
        "Links in the edge workers' tables.",
        [("", fleet["links_loaded"])],
    )
    geo = rt.geo.status()
    epoch = geo.get("build_epoch")
    metric(
        out,
        "linkedge_geoip_build_timestamp_seconds",
        "gauge",
        "Build time of the GeoIP database in use (0: none loaded).",
        [("", int(epoch) if isinstance(epoch, int) else 0)],
    )
    metric(
        out,
        "linkedge_geoip_info",
        "gauge",
        "The GeoIP database in use (1: loaded).",
        [
            (
                f'{{database_type="{label(geo.get("database_type"))}",'
                f'build_date="{label(geo.get("build_date"))}"}}',
                1 if geo.get("enabled") else 0,
            )
        ],
    )
    bot_list = bots.list_info()
    metric(
        out,
        "linkedge_bot_list_info",
        "gauge",
        "The crawler list geo/bots.py uses (`pip install -U crawlerdetect` updates it).",
        [
            (
                f'{{name="{label(bot_list["name"])}",version="{label(bot_list["version"])}",'
                f'patterns="{bot_list["patterns"]}"}}',
                1,
            )
        ],
    )
    conversion_metrics(out, rt.live.conversions)
    metric(
        out,
        "linkedge_start_time_seconds",
        "gauge",
        "When this server's collector started (Unix time).",
        [("", f"{rt.started_at:.3f}")],
    )
    return "\n".join(out) + "\n"
