"""The campaign report (`GET /api/campaigns/{name}/report`, JSON, Markdown or CSV): what
happened, what each change did, and what to do next time.

What it holds:
- the launch (the campaign's launch time, else its links' earliest launched_at, else
  their earliest creation), time to the first click and to the peak, the peak minute;
- the best channel (UTM source of the links, and the referrer's source) and placement
  (UTM content, else the referrer host), the best variant, conversions and their lag
  when the database records them;
- every change of the campaign's links (admin/history.py) with the human clicks per
  minute in the 30 minutes before and after it, compared with the campaign's
  hour-of-week baseline (admin/baselines.py) when there is enough history;
- planning insights: for each channel of the campaign, the hours of the week with the
  most human clicks over the last weeks, with the sample size.

Rules of this module:
- Built on a database thread (`db.run`) from the rollups: group_minute for the
  campaign's curve, link_day and link_dim_hour for channels and placements, group_hour
  for the hours of week. Variants are read from per-route rollups where they exist (keys
  from edge/rules.py route_key), else from the raw clicks of the campaign's active span
  through the clicks' time index (bounded by MAX_SCAN_DAYS).
- Fields the database cannot answer (no conversions table, no variants) are null with a
  `note`, never guessed.
"""

from __future__ import annotations

import csv
import io
import sqlite3
from typing import Any, Final

import orjson

from admin import baselines, history, stats, timerange
from edge.errors import NotFound
from edge.rollups import DIM_SEPARATOR
from edge.rules import route_key, route_names

CHANGE_WINDOW_MIN: Final = 30
MAX_SCAN_DAYS: Final = 7  # raw clicks read for variants when no per-route rollup exists
BEST_HOURS: Final = 3  # hours of week listed per channel
FORMATS: Final = ("json", "md", "csv")
_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def how_label(slot: int) -> str:
    return f"{_DAYS[slot // 24]} {slot % 24:02d}:00 UTC"


def _links(conn: sqlite3.Connection, name: str) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT l.*, d.host AS domain FROM links l JOIN domains d ON d.id = l.domain_id "
        "WHERE l.campaign = ? ORDER BY l.id",
        (name,),
    ).fetchall()


def _started_at(conn: sqlite3.Connection, name: str, links: list[sqlite3.Row]) -> int:
    row = None
    try:
        row = conn.execute(
            "SELECT launched_at FROM campaign_launches WHERE campaign = ?", (name,)
        ).fetchone()
    except sqlite3.OperationalError:  # pragma: no cover - a database before 0008
        row = None
    if row is not None and row[0] is not None:
        return int(row[0])
    launched = [r["launched_at"] for r in links if r["launched_at"] is not None]
    return int(min(launched)) if launched else int(min(r["created_at"] for r in links))


def _minutes(conn: sqlite3.Connection, name: str) -> dict[int, tuple[int, int]]:
    return {
        int(m): (int(c), int(h))
        for m, c, h in conn.execute(
            "SELECT minute, clicks, humans FROM group_minute WHERE dim = 'campaign' AND key = ?",
            (name,),
        )
    }


def _per_link_totals(conn: sqlite3.Connection, link_id: int) -> tuple[int, int]:
    row = conn.execute(
        "SELECT coalesce(sum(clicks), 0), coalesce(sum(humans), 0) FROM link_day WHERE link_id = ?",
        (link_id,),
    ).fetchone()
    return int(row[0]), int(row[1])


def _best(counts: dict[str, int], by: str) -> dict[str, Any] | None:
    items = [(n, k) for k, n in counts.items() if k]
    if not items:
        return None
    n, key = max(items, key=lambda t: (t[0], t[1]))
    return {"by": by, "value": key, "humans": n, "of": sum(counts.values())}


def _ref_counts(
    conn: sqlite3.Connection, link_ids: list[int]
) -> tuple[dict[str, int], dict[str, int]]:
    sources: dict[str, int] = {}
    hosts: dict[str, int] = {}
    for link_id in link_ids:
        for value, humans in conn.execute(
            "SELECT value, sum(humans) FROM link_dim_hour WHERE link_id = ? AND dim = 'ref' "
            "GROUP BY value",
            (link_id,),
        ):
            source, _, host = str(value).partition(DIM_SEPARATOR)
            sources[source] = sources.get(source, 0) + int(humans)
            hosts[host] = hosts.get(host, 0) + int(humans)
    return sources, hosts


def _variants(
    conn: sqlite3.Connection, links: list[sqlite3.Row], span: tuple[int, int] | None
) -> dict[str, Any]:
    """Human clicks per variant of each link with variants; the best by share of its link."""
    rows: list[dict[str, Any]] = []
    for link in links:
        if not link["variants"]:
            continue
        variants = orjson.loads(link["variants"])
        names = route_names(None, variants)
        routes = {r: n for r, n in names.items() if n.startswith("variant:")}
        counts: dict[int, tuple[int, int]] = {}
        for route in routes:
            got = conn.execute(
                "SELECT coalesce(sum(clicks), 0), coalesce(sum(humans), 0) FROM link_day "
                "WHERE link_id = ?",
                (route_key(link["id"], route),),
            ).fetchone()
            if got[0]:
                counts[route] = (int(got[0]), int(got[1]))
        source = "rollup"
        if not counts and span is not None:
            source = "clicks"
            lo, hi = span
            for route, clicks, humans in conn.execute(
                "SELECT route, count(*), sum(coalesce(bot_kind, '') = '') FROM clicks "
                "WHERE ts BETWEEN ? AND ? AND link_id = ? GROUP BY route",
                (lo, hi, link["id"]),
            ):
                if route in routes:
                    counts[int(route)] = (int(clicks), int(humans or 0))
        total = sum(h for _c, h in counts.values())
        for route, name in routes.items():
            clicks, humans = counts.get(route, (0, 0))
            rows.append(
                {
                    "link_id": link["id"],
                    "variant": name.split(":", 1)[1],
                    "clicks": clicks,
                    "humans": humans,
                    "share": round(humans / total, 4) if total else None,
                    "from": source,
                }
            )
    if not rows:
        return {"variants": [], "best": None, "note": "no link of the campaign has variants"}
    best = max(rows, key=lambda r: (r["humans"], -r["link_id"]))
    return {"variants": rows, "best": best if best["humans"] else None}


def _conversions(conn: sqlite3.Connection, link_ids: list[int]) -> dict[str, Any]:
    """Conversions per link, revenue per currency and the lag from click to conversion,
    from the events table (admin/conversions.py records them; indexed by link)."""
    total = 0
    revenue: dict[str, float] = {}
    lags: list[float] = []
    per_link: dict[str, int] = {}
    for link_id in link_ids:
        rows = conn.execute(
            "SELECT occurred_at - click_ts, value_micros, currency FROM events WHERE link_id = ?",
            (link_id,),
        ).fetchall()
        per_link[str(link_id)] = len(rows)
        total += len(rows)
        for lag_ms, micros, currency in rows:
            lags.append(float(max(0, lag_ms)))
            if micros is not None and currency:
                revenue[currency] = revenue.get(currency, 0.0) + micros / 1_000_000
    out: dict[str, Any] = {
        "total": total,
        "revenue": {c: round(v, 2) for c, v in sorted(revenue.items())},
        "per_link": per_link,
    }
    if lags:
        out["lag_s"] = {
            "median": round(baselines.quantile(lags, 0.5) / 1000, 1),
            "p25": round(baselines.quantile(lags, 0.25) / 1000, 1),
            "p75": round(baselines.quantile(lags, 0.75) / 1000, 1),
        }
    return out


def _change_effects(
    changes: list[dict[str, Any]],
    minutes: dict[int, tuple[int, int]],
    weekly: dict[str, Any],
) -> list[dict[str, Any]]:
    out = []
    for change in changes:
        at = change["ts_ms"] // 60000
        before = sum(minutes.get(m, (0, 0))[1] for m in range(at - CHANGE_WINDOW_MIN, at))
        after = sum(minutes.get(m, (0, 0))[1] for m in range(at, at + CHANGE_WINDOW_MIN))
        effect: dict[str, Any] = {
            **change,
            "humans_30m_before": before,
            "humans_30m_after": after,
            "rate_per_min_before": round(before / CHANGE_WINDOW_MIN, 2),
            "rate_per_min_after": round(after / CHANGE_WINDOW_MIN, 2),
        }
        if weekly.get("enough"):
            slot = baselines.hour_of_week(at // 60)
            typical = weekly["by_hour_of_week"][slot] or 0.0
            effect["baseline_rate_per_min"] = round(typical / 60, 3)
            effect["versus_baseline"] = baselines.versus(
                round(after / CHANGE_WINDOW_MIN, 3), round(typical / 60, 3)
            )
        else:
            effect["versus_baseline"] = {"percent": None, "text": weekly.get("text")}
        out.append(effect)
    return out


def _best_hours(conn: sqlite3.Connection, source: str, now_ms: int) -> dict[str, Any]:
    current = now_ms // 3_600_000
    start = current - baselines.BASELINE_WEEKS * baselines.HOURS_PER_WEEK
    slots = [0] * baselines.HOURS_PER_WEEK
    seen = [0] * baselines.HOURS_PER_WEEK
    first = None
    for hour, humans in conn.execute(
        "SELECT hour, sum(clicks) FROM group_hour WHERE dim = 'utm_source' AND key = ? "
        "AND kind = '' AND hour BETWEEN ? AND ? GROUP BY hour",
        (source, start, current),
    ):
        first = hour if first is None else min(first, hour)
        slots[baselines.hour_of_week(int(hour))] += int(humans)
    if first is not None:
        for h in range(int(first), current + 1):
            seen[baselines.hour_of_week(h)] += 1
    ranked = sorted(range(len(slots)), key=lambda s: (-slots[s], s))
    best = [
        {
            "hour_of_week": s,
            "label": how_label(s),
            "humans": slots[s],
            "weeks_observed": seen[s],
            "humans_per_week": round(slots[s] / seen[s], 2) if seen[s] else None,
        }
        for s in ranked[:BEST_HOURS]
        if slots[s]
    ]
    return {"channel": source, "sample_humans": sum(slots), "best_hours": best}


def campaign_report(conn: sqlite3.Connection, name: str, now_ms: int) -> dict[str, Any]:
    links = _links(conn, name)
    if not links:
        raise NotFound(f"no campaign {name!r}: no link has it as its campaign", "name")
    ids = [r["id"] for r in links]
    started = _started_at(conn, name, links)
    minutes = _minutes(conn, name)
    clicks = sum(c for c, _h in minutes.values())
    humans = sum(h for _c, h in minutes.values())
    first_min = min(minutes) if minutes else None
    peak_min = None
    if minutes:
        peak_min = min(minutes, key=lambda m: (-minutes[m][1], -minutes[m][0], m))
    span = None
    if first_min is not None:
        last = max(minutes)
        span = (first_min * 60000, min(last + 1, first_min + MAX_SCAN_DAYS * 1440) * 60000 - 1)
    per_link = []
    by_utm_source: dict[str, int] = {}
    by_utm_content: dict[str, int] = {}
    for r in links:
        c, h = _per_link_totals(conn, r["id"])
        per_link.append(
            {
                "id": r["id"],
                "short_url": stats.short_url(r["domain"], r["slug"]),
                "utm_source": r["utm_source"],
                "utm_content": r["utm_content"],
                "clicks": c,
                "humans": h,
            }
        )
        by_utm_source[r["utm_source"] or ""] = by_utm_source.get(r["utm_source"] or "", 0) + h
        by_utm_content[r["utm_content"] or ""] = by_utm_content.get(r["utm_content"] or "", 0) + h
    ref_sources, ref_hosts = _ref_counts(conn, ids)
    weekly = baselines.hour_of_week_baseline(conn, {"dim": "campaign", "key": name}, now_ms)
    changes = history.links_history(conn, ids)
    channels = sorted({r["utm_source"] for r in links if r["utm_source"]})
    placement = _best(by_utm_content, "utm_content") or _best(ref_hosts, "referrer_host")
    conversions = _conversions(conn, ids)
    return {
        "campaign": name,
        "generated_at": timerange.iso_ms(now_ms),
        "links": per_link,
        "totals": {"clicks": clicks, "humans": humans, "bots": clicks - humans},
        "started_at": timerange.iso_ms(started),
        "first_click_at": None if first_min is None else timerange.iso_ms(first_min * 60000),
        "time_to_first_click_s": None
        if first_min is None
        else max(0, (first_min * 60000 - started) // 1000),
        "peak_minute": None
        if peak_min is None
        else {
            "at": timerange.iso_ms(peak_min * 60000),
            "clicks": minutes[peak_min][0],
            "humans": minutes[peak_min][1],
        },
        "time_to_peak_s": None
        if peak_min is None
        else max(0, (peak_min * 60000 - started) // 1000),
        "best_channel": _best(by_utm_source, "utm_source") or _best(ref_sources, "source"),
        "channels_by_referrer": [
            {"source": k, "humans": v} for k, v in sorted(ref_sources.items(), key=lambda t: -t[1])
        ],
        "best_placement": placement,
        "variants": _variants(conn, links, span),
        "conversions": conversions,
        "baseline": {k: weekly[k] for k in ("enough", "text", "history_hours", "needs_hours")},
        "changes": _change_effects(changes, minutes, weekly),
        "planning": {
            "best_hours_by_channel": [_best_hours(conn, s, now_ms) for s in channels],
            "converted_best": None
            if conversions.get("total") is None
            else _converted_best(per_link, conversions),
        },
    }


def _converted_best(per_link: list[dict[str, Any]], conversions: dict[str, Any]) -> dict[str, Any]:
    rates: dict[str, list[int]] = {}
    for link in per_link:
        n = conversions["per_link"].get(str(link["id"]), 0)
        entry = rates.setdefault(link["utm_source"] or "", [0, 0])
        entry[0] += n
        entry[1] += link["humans"]
    channels = [
        {"channel": k, "conversions": c, "humans": h, "rate": round(c / h, 4) if h else None}
        for k, (c, h) in rates.items()
    ]
    channels.sort(key=lambda e: (-float(e["rate"] or 0), -int(e["conversions"] or 0)))
    return {"channels": channels}


# --- exports ----------------------------------------------------------------------------


def _fmt_s(seconds: int | None) -> str:
    if seconds is None:
        return "n/a"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def markdown(report: dict[str, Any]) -> str:
    t = report["totals"]
    peak = report["peak_minute"]
    lines = [
        f"# Campaign report: {report['campaign']}",
        "",
        f"Generated {report['generated_at']}.",
        "",
        f"- Clicks: {t['clicks']} ({t['humans']} humans, {t['bots']} bots)",
        f"- Started: {report['started_at']}; first click {report['first_click_at'] or 'none'}"
        f" (after {_fmt_s(report['time_to_first_click_s'])})",
        "- Peak minute: "
        + (
            f"{peak['at']} with {peak['humans']} human clicks"
            f" (after {_fmt_s(report['time_to_peak_s'])})"
            if peak
            else "none"
        ),
    ]
    for label, key in (("Best channel", "best_channel"), ("Best placement", "best_placement")):
        best = report[key]
        text = f"{best['value']} ({best['by']}, {best['humans']} humans)" if best else "n/a"
        lines.append(f"- {label}: {text}")
    vbest = report["variants"].get("best")
    lines.append(
        "- Best variant: "
        + (
            f"{vbest['variant']} of link {vbest['link_id']} ({vbest['humans']} humans)"
            if vbest
            else "n/a"
        )
    )
    conv = report["conversions"]
    lines.append(
        "- Conversions: "
        + (conv.get("note") or "n/a" if conv.get("total") is None else str(conv["total"]))
    )
    lines.append(f"- Baseline: {report['baseline']['text']}")
    lines += [
        "",
        "## Links",
        "",
        "| link | source | content | clicks | humans |",
        "|---|---|---|---|---|",
    ]
    for link in report["links"]:
        lines.append(
            f"| {link['short_url']} | {link['utm_source'] or ''} | {link['utm_content'] or ''} "
            f"| {link['clicks']} | {link['humans']} |"
        )
    lines += [
        "",
        "## What changed",
        "",
        "| when | link | change | from | to | who | humans/min 30m before | after | vs baseline |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report["changes"]:
        who = c["who"]["token"]["name"] if c["who"]["token"] else c["who"]["via"]
        lines.append(
            f"| {c['at']} | {c['link_id']} | {c['kind']} | {_cell(c['from'])} | {_cell(c['to'])} "
            f"| {who} | {c['rate_per_min_before']} | {c['rate_per_min_after']} "
            f"| {c['versus_baseline']['text'] or ''} |"
        )
    lines += ["", "## Planning", ""]
    for ch in report["planning"]["best_hours_by_channel"]:
        hours = ", ".join(f"{h['label']} ({h['humans']} humans)" for h in ch["best_hours"]) or "n/a"
        lines.append(f"- {ch['channel']}: {hours}; sample {ch['sample_humans']} humans")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")[:80]


def csv_text(report: dict[str, Any]) -> str:
    """One long table: section, item, metric, value."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["section", "item", "metric", "value"])
    for k, v in report["totals"].items():
        w.writerow(["totals", report["campaign"], k, v])
    for k in ("started_at", "first_click_at", "time_to_first_click_s", "time_to_peak_s"):
        w.writerow(["launch", report["campaign"], k, report[k]])
    if report["peak_minute"]:
        w.writerow(["launch", report["campaign"], "peak_minute", report["peak_minute"]["at"]])
    for link in report["links"]:
        for k in ("clicks", "humans"):
            w.writerow(["link", link["short_url"], k, link[k]])
    for c in report["changes"]:
        item = f"{c['at']} link {c['link_id']} {c['kind']}"
        w.writerow(["change", item, "from", _cell(c["from"])])
        w.writerow(["change", item, "to", _cell(c["to"])])
        w.writerow(["change", item, "rate_per_min_before", c["rate_per_min_before"]])
        w.writerow(["change", item, "rate_per_min_after", c["rate_per_min_after"]])
        w.writerow(["change", item, "versus_baseline_percent", c["versus_baseline"]["percent"]])
    for ch in report["planning"]["best_hours_by_channel"]:
        for h in ch["best_hours"]:
            w.writerow(["best_hours", ch["channel"], h["label"], h["humans"]])
    return out.getvalue()
