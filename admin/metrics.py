"""Prometheus text for /metrics: every counter a running server keeps, in one place.

Rules: counters only grow; a gauge says what is true now. Names start with `linkedge_`,
units are in the name (`_seconds`, `_total`). Label values are escaped (`label`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from admin.http import JsonListener

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


def render(runtime: Any, listener: JsonListener, flush_histogram: Histogram) -> str:
    """Prometheus text of everything a running server counts."""
    rt = runtime
    out: list[str] = []
    edge = rt.edge.metrics if rt.edge is not None else None
    if edge is not None:
        metric(
            out,
            "linkedge_requests_total",
            "counter",
            "Edge requests answered, by status.",
            [(f'{{status="{s}"}}', n) for s, n in sorted(edge.by_status.items())],
        )
        metric(
            out,
            "linkedge_redirects_total",
            "counter",
            "Redirects served.",
            [("", edge.redirects)],
        )
        metric(
            out,
            "linkedge_bad_requests_total",
            "counter",
            "Edge requests refused as malformed or oversized.",
            [("", edge.bad_requests)],
        )
        metric(
            out,
            "linkedge_timeouts_total",
            "counter",
            "Edge connections closed for a slow request head (408).",
            [("", edge.timeouts)],
        )
        metric(
            out,
            "linkedge_connections_total",
            "counter",
            "Connections accepted, by listener.",
            [
                ('{listener="edge"}', edge.connections_total),
                ('{listener="admin"}', listener.connections_total),
            ],
        )
        metric(
            out,
            "linkedge_connections_rejected_total",
            "counter",
            "Edge connections refused past max_connections (503).",
            [("", edge.connections_rejected)],
        )
        metric(
            out,
            "linkedge_open_connections",
            "gauge",
            "Open connections, by listener.",
            [
                ('{listener="edge"}', edge.connections_open),
                ('{listener="admin"}', len(listener.connections)),
            ],
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
            ("captured", m.captured, "Clicks taken from the edge into the pipeline."),
            ("written", m.written, "Clicks written to SQLite."),
            ("dropped", m.dropped, "Clicks dropped because the queue was full."),
        ):
            metric(out, f"linkedge_clicks_{name}_total", "counter", help_text, [("", value)])
        metric(
            out,
            "linkedge_click_write_failures_total",
            "counter",
            "Failed click batch writes (the clicks are kept and retried).",
            [("", m.write_failures)],
        )
        out.append("# HELP linkedge_click_flush_duration_seconds Time to write one click batch.")
        out.append("# TYPE linkedge_click_flush_duration_seconds histogram")
        out.extend(flush_histogram.lines("linkedge_click_flush_duration_seconds"))
        metric(
            out,
            "linkedge_click_queue_depth",
            "gauge",
            "Clicks captured and not yet written.",
            [("", clicks.queued)],
        )
        metric(
            out,
            "linkedge_click_flush_lag_seconds",
            "gauge",
            "Age of the oldest click not yet written.",
            [("", f"{clicks.flush_lag_s:.3f}")],
        )
    metric(
        out,
        "linkedge_links_loaded",
        "gauge",
        "Links in the edge's table.",
        [("", len(rt.table))],
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
    metric(
        out,
        "linkedge_start_time_seconds",
        "gauge",
        "When this server started (Unix time).",
        [("", f"{rt.started_at:.3f}")],
    )
    return "\n".join(out) + "\n"
