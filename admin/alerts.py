"""Alert rules, their evaluation and their state machine (docs/alerts.md).

Rules of this module:
- A rule: name, scope (`{"link_id": 7}` or `{"campaign": "spring"}`), kind, window_s,
  threshold, options, notify targets (admin/notify.py). `validate_rule` turns what a user
  sent into the stored form or raises InvalidField naming the field; the API and the CLI
  both use it.
- Kinds and what they read (the clicks are the collector's live counters, edge/live.py:
  exact per second for 15 minutes, per minute for the hour, so windows are at most an hour):
    clicks_above / clicks_below  clicks (or humans) in the last window_s against threshold
    conversion_rate_below        conversions / clicks in the window, once min_clicks clicks
    anomaly                      the window's count against a Poisson bound from the
                                 baseline_s before it (`poisson_sf`, `poisson_cdf`)
    zero                         none in the window after at least threshold (default 1)
                                 in the window before it
    destination                  any destination of the scope failing its check
                                 (admin/checks.py)
- State machine (`step`, pure): ok -> pending (the condition holds) -> firing (it held
  for_s and the cooldown since the last resolve is over) -> resolved (the *clear*
  condition holds: the threshold moved by `hysteresis`, so a value hovering at the
  threshold does not flap) -> pending ... A firing and a resolve each notify once.
- The engine runs in the collector: every alert_eval_interval_s it reads the rules and
  the SQL it needs on its own reader connection (an aiosqlite thread), sums live counters
  a slice of links at a time (yielding between slices), and writes only transitions
  (on the writer's thread). The click pipeline and the edge never wait for it.
- This module keeps its own baseline (the Poisson bound over the live counters); it does
  not use admin/baselines.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from dataclasses import dataclass, replace
from typing import Any, Final

import orjson

from admin import checks, notify
from admin.http import Call, Response, json_response
from edge import catalog
from edge.db import Database, Transaction, current_rev, now_ms
from edge.errors import InvalidField, LinkedgeError, NotFound
from edge.live import OVERALL_SECONDS_KEPT
from edge.urls import normalize_destination

log = logging.getLogger("linkedge.alerts")

KINDS: Final = (
    "clicks_above",
    "clicks_below",
    "conversion_rate_below",
    "anomaly",
    "zero",
    "destination",
)
STATES: Final = ("ok", "pending", "firing", "resolved")
MAX_WINDOW_S: Final = OVERALL_SECONDS_KEPT  # the live counters hold an hour per link
MAX_NAME_CHARS: Final = 200
MAX_ALERTS: Final = 10_000
SLICE: Final = 500  # links summed between two yields to the loop
# the evaluation gives the loop back after this much CPU on the loop's thread (thread
# time: a thread preempted by the OS or waiting for the GIL is not holding the loop)
YIELD_AFTER_S: Final = 0.002
# Defaults per option; for_s and cooldown_s also depend on the kind (KIND_DEFAULTS).
OPTION_DEFAULTS: Final[dict[str, Any]] = {
    "for_s": 60,
    "cooldown_s": 300,
    "hysteresis": 0.1,
    "count": "clicks",
    "min_clicks": 100,
    "min_count": 20,
    "baseline_s": 3000,
    "p_value": 0.001,
    "p_clear": 0.05,
    "fallback_url": None,
}
KIND_DEFAULTS: Final[dict[str, dict[str, Any]]] = {
    "destination": {"for_s": 0, "cooldown_s": 60},
    "zero": {"for_s": 0},
}
# Which options a kind takes (others are refused, so a typo is never silently ignored).
KIND_OPTIONS: Final[dict[str, frozenset[str]]] = {
    "clicks_above": frozenset({"for_s", "cooldown_s", "hysteresis", "count"}),
    "clicks_below": frozenset({"for_s", "cooldown_s", "hysteresis", "count"}),
    "conversion_rate_below": frozenset({"for_s", "cooldown_s", "hysteresis", "min_clicks"}),
    "anomaly": frozenset(
        {"for_s", "cooldown_s", "count", "min_count", "baseline_s", "p_value", "p_clear"}
    ),
    "zero": frozenset({"for_s", "cooldown_s", "count"}),
    "destination": frozenset({"for_s", "cooldown_s", "fallback_url"}),
}
NEEDS_THRESHOLD: Final = frozenset({"clicks_above", "clicks_below", "conversion_rate_below"})
BODY_FIELDS: Final = frozenset(
    {"name", "scope", "kind", "window_s", "threshold", "notify", "enabled", *OPTION_DEFAULTS}
)
NOT_TRACKED: Final = "conversions not tracked on this link"


# --- validation ----------------------------------------------------------------------------


def _number(value: Any, field: str, low: float, high: float, *, integer: bool = False) -> Any:
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or not low <= value <= high:
        what = "an integer" if integer else "a number"
        raise InvalidField(f"{field} must be {what} from {low:g} to {high:g}", field)
    return value


def validate_rule(body: dict[str, Any], old: dict[str, Any] | None = None) -> dict[str, Any]:
    """The stored form of a rule from a request body (a PATCH: `old` is the rule it
    changes, and the result is checked as a whole)."""
    for name in body:
        if name not in BODY_FIELDS:
            raise InvalidField(f"unknown field {name!r}", name)
    merged: dict[str, Any] = {}
    if old is not None:
        merged = {k: old[k] for k in ("name", "scope", "kind", "window_s", "threshold")}
        merged.update(old["options"])
        merged["notify"] = old["notify"]
        merged["enabled"] = old["enabled"]
        if "kind" in body and body["kind"] != old["kind"]:
            # options of the old kind do not carry over to another kind
            for name in OPTION_DEFAULTS:
                merged.pop(name, None)
    merged.update(body)
    title = merged.get("name")
    if not isinstance(title, str) or not title.strip() or len(title) > MAX_NAME_CHARS:
        raise InvalidField(f"name is required: 1 to {MAX_NAME_CHARS} characters", "name")
    kind = merged.get("kind")
    if kind not in KINDS:
        raise InvalidField(f"kind must be one of {', '.join(KINDS)}", "kind")
    scope = merged.get("scope")
    if not isinstance(scope, dict) or len(scope) != 1:
        raise InvalidField('scope must be {"link_id": ID} or {"campaign": NAME}', "scope")
    if "link_id" in scope:
        link_id = scope["link_id"]
        if isinstance(link_id, bool) or not isinstance(link_id, int) or link_id < 1:
            raise InvalidField("scope.link_id must be a link's id", "scope.link_id")
    elif "campaign" in scope:
        campaign = scope["campaign"]
        if not isinstance(campaign, str) or not campaign.strip():
            raise InvalidField("scope.campaign must be a campaign name", "scope.campaign")
        scope = {"campaign": campaign.strip().lower()}
    else:
        raise InvalidField('scope must be {"link_id": ID} or {"campaign": NAME}', "scope")
    default_window = 0 if kind == "destination" else None
    window = merged.get("window_s", default_window)
    if window is None:
        raise InvalidField("window_s is required: the window in seconds, e.g. 300", "window_s")
    top = MAX_WINDOW_S // 2 if kind == "zero" else MAX_WINDOW_S
    window = _number(window, "window_s", 0 if kind == "destination" else 1, top, integer=True)
    threshold = merged.get("threshold")
    if kind in NEEDS_THRESHOLD and threshold is None:
        raise InvalidField(f"threshold is required for {kind}", "threshold")
    if kind == "conversion_rate_below" and threshold is not None:
        threshold = _number(threshold, "threshold", 0, 1)  # a rate: 0.02 is 2 %
    elif kind in ("anomaly", "destination") and threshold is not None:
        raise InvalidField(f"{kind} takes no threshold (see docs/alerts.md)", "threshold")
    elif threshold is not None:
        threshold = _number(threshold, "threshold", 0, 1e12)
    options = dict(OPTION_DEFAULTS)
    options.update(KIND_DEFAULTS.get(kind, {}))
    allowed = KIND_OPTIONS[kind]
    for name in OPTION_DEFAULTS:
        if name in merged and merged[name] is not None:
            if name not in allowed:
                raise InvalidField(f"{name} does not apply to kind {kind}", name)
            options[name] = merged[name]
    options = {k: v for k, v in options.items() if k in allowed}
    for name in ("for_s", "cooldown_s"):
        if name in options:
            options[name] = _number(options[name], name, 0, 7 * 86400)
    if "hysteresis" in options:
        options["hysteresis"] = _number(options["hysteresis"], "hysteresis", 0, 1)
    if "count" in options and options["count"] not in ("clicks", "humans"):
        raise InvalidField("count must be clicks or humans", "count")
    for name in ("min_clicks", "min_count"):
        if name in options:
            options[name] = _number(options[name], name, 1, 1e9, integer=True)
    if kind == "anomaly":
        if merged.get("baseline_s") is None:
            options["baseline_s"] = min(options["baseline_s"], MAX_WINDOW_S - window)
        options["baseline_s"] = (
            _number(
                options["baseline_s"], "baseline_s", 2 * window, MAX_WINDOW_S - window, integer=True
            )
            if 3 * window <= MAX_WINDOW_S
            else _fail_window(window)
        )
        options["p_value"] = _number(options["p_value"], "p_value", 1e-12, 0.5)
        options["p_clear"] = _number(options["p_clear"], "p_clear", options["p_value"], 1)
    if options.get("fallback_url") is not None:
        if "link_id" not in scope:
            raise InvalidField("fallback_url needs a link scope", "fallback_url")
        options["fallback_url"] = normalize_destination(
            notify._url(options["fallback_url"], "fallback_url"), "fallback_url"
        )
    enabled = merged.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidField("enabled must be true or false", "enabled")
    return {
        "name": title.strip(),
        "scope": scope,
        "kind": kind,
        "window_s": window,
        "threshold": threshold,
        "options": options,
        "notify": notify.validate_targets(merged.get("notify", [])),
        "enabled": enabled,
    }


def _fail_window(window: int) -> Any:
    raise InvalidField(
        f"window_s of an anomaly is at most {MAX_WINDOW_S // 3}: its baseline (at least two "
        "windows) and the window fit in the live counters' hour",
        "window_s",
    )


# --- the store (SQL; writes open their own Transaction) -----------------------------------


def _check_scope(conn: sqlite3.Connection, rule: dict[str, Any]) -> None:
    link_id = rule["scope"].get("link_id")
    exists = conn.execute("SELECT 1 FROM links WHERE id = ?", (link_id,)).fetchone()
    if link_id is not None and exists is None:
        raise InvalidField(f"no link with id {link_id}", "scope.link_id")


def alert_dict(row: sqlite3.Row) -> dict[str, Any]:
    scope = (
        {"link_id": row["link_id"]} if row["link_id"] is not None else {"campaign": row["campaign"]}
    )
    return {
        "id": row["id"],
        "name": row["name"],
        "scope": scope,
        "kind": row["kind"],
        "window_s": row["window_s"],
        "threshold": _plain(row["threshold"]),
        "options": orjson.loads(row["options"]),
        "notify": orjson.loads(row["notify"]),
        "enabled": bool(row["enabled"]),
        "state": row["state"],
        "state_since": row["state_since"],
        "value": row["value"],
        "fired_at": row["fired_at"],
        "resolved_at": row["resolved_at"],
        "failover_from": row["failover_from"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def _plain(value: float | None) -> float | int | None:
    """50.0 from a REAL column reads 50, as it was given."""
    return int(value) if value is not None and float(value).is_integer() else value


def _stored(rule: dict[str, Any]) -> tuple[Any, ...]:
    return (
        rule["name"],
        rule["scope"].get("link_id"),
        rule["scope"].get("campaign"),
        rule["kind"],
        rule["window_s"],
        rule["threshold"],
        orjson.dumps(rule["options"]).decode(),
        orjson.dumps(rule["notify"]).decode(),
        int(rule["enabled"]),
    )


def create_alert(conn: sqlite3.Connection, rule: dict[str, Any]) -> dict[str, Any]:
    with Transaction(conn):
        _check_scope(conn, rule)
        count = conn.execute("SELECT count(*) FROM alerts").fetchone()[0]
        if count >= MAX_ALERTS:
            raise InvalidField(f"at most {MAX_ALERTS} alerts")
        now = now_ms()
        row = conn.execute(
            "INSERT INTO alerts (name, link_id, campaign, kind, window_s, threshold, options, "
            "notify, enabled, state, state_since, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'ok', ?, ?, ?) RETURNING id",
            (*_stored(rule), now, now, now),
        ).fetchone()
    return get_alert(conn, int(row[0]))


def get_alert(conn: sqlite3.Connection, alert_id: int) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM alerts WHERE id = ?", (alert_id,)).fetchone()
    if row is None:
        raise NotFound(f"no alert with id {alert_id}")
    return alert_dict(row)


def list_alerts(conn: sqlite3.Connection, state: str | None = None) -> list[dict[str, Any]]:
    if state is None:
        rows = conn.execute("SELECT * FROM alerts ORDER BY id").fetchall()
    else:
        rows = conn.execute("SELECT * FROM alerts WHERE state = ? ORDER BY id", (state,)).fetchall()
    return [alert_dict(r) for r in rows]


def update_alert(
    conn: sqlite3.Connection, alert_id: int, changes: dict[str, Any]
) -> dict[str, Any]:
    with Transaction(conn):
        old = get_alert(conn, alert_id)
        rule = validate_rule(changes, old)
        _check_scope(conn, rule)
        # the state carries over: the next evaluation judges it by the new rule (a firing
        # alert whose condition no longer holds resolves, and says so)
        conn.execute(
            "UPDATE alerts SET name = ?, link_id = ?, campaign = ?, kind = ?, window_s = ?, "
            "threshold = ?, options = ?, notify = ?, enabled = ?, updated_at = ? WHERE id = ?",
            (*_stored(rule), now_ms(), alert_id),
        )
        if not rule["enabled"] and old["state"] != "ok":  # a disabled rule fires nothing
            conn.execute(
                "UPDATE alerts SET state = 'ok', state_since = ? WHERE id = ?", (now_ms(), alert_id)
            )
    return get_alert(conn, alert_id)


def delete_alert(conn: sqlite3.Connection, alert_id: int) -> None:
    with Transaction(conn):
        get_alert(conn, alert_id)
        conn.execute("DELETE FROM alert_deliveries WHERE alert_id = ?", (alert_id,))
        conn.execute("DELETE FROM alerts WHERE id = ?", (alert_id,))


def save_state(conn: sqlite3.Connection, alert_id: int, st: AlertState) -> None:
    with Transaction(conn):
        conn.execute(
            "UPDATE alerts SET state = ?, state_since = ?, value = ?, fired_at = ?, "
            "resolved_at = ? WHERE id = ?",
            (
                st.state,
                int(st.since * 1000),
                st.value,
                None if st.fired_at is None else int(st.fired_at * 1000),
                None if st.resolved_at is None else int(st.resolved_at * 1000),
                alert_id,
            ),
        )


# --- the maths -----------------------------------------------------------------------------


def _gamma_p(a: float, x: float) -> float:
    """The regularized lower incomplete gamma P(a, x) (series / continued fraction,
    Numerical Recipes 6.2), for a > 0, x >= 0."""
    if x <= 0:
        return 0.0
    lead = math.exp(-x + a * math.log(x) - math.lgamma(a))
    if x < a + 1:
        term = total = 1.0 / a
        n = a
        for _ in range(100_000):
            n += 1
            term *= x / n
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return min(1.0, total * lead)
    # Lentz's continued fraction for Q(a, x)
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 100_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return max(0.0, 1.0 - lead * h)


EXACT_UP_TO: Final = 5000  # past this many clicks the tails use Wilson-Hilferty


def _upper_chi2(x2: float, nu: float) -> float:
    """P(chi-square with nu degrees > x2), Wilson-Hilferty: (chi2/nu)^(1/3) is close to
    normal with mean 1 - 2/(9 nu) and variance 2/(9 nu) (relative error ~1e-3 in the tails
    an alert uses, once nu is in the thousands)."""
    var = 2 / (9 * nu)
    z = ((x2 / nu) ** (1 / 3) - (1 - var)) / math.sqrt(var)
    return 0.5 * math.erfc(z / math.sqrt(2))


def poisson_cdf(k: int, lam: float) -> float:
    """P(X <= k) for X ~ Poisson(lam) = Q(k + 1, lam) = P(chi2 with 2(k + 1) > 2 lam)."""
    if k < 0:
        return 0.0
    if lam <= 0:
        return 1.0
    if min(k, lam) > EXACT_UP_TO:
        return _upper_chi2(2 * lam, 2 * (k + 1))
    return 1.0 - _gamma_p(k + 1, lam)


def poisson_sf(k: int, lam: float) -> float:
    """P(X >= k) for X ~ Poisson(lam) = P(k, lam) = 1 - P(X <= k - 1)."""
    if k <= 0:
        return 1.0
    if lam <= 0:
        return 0.0
    if min(k, lam) > EXACT_UP_TO:
        return 1.0 - _upper_chi2(2 * lam, 2 * k)
    return _gamma_p(k, lam)


# --- the state machine (pure) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reading:
    """One evaluation: the value, whether the fire condition holds, whether the clear
    condition (the hysteresis band) holds, a note when it cannot be judged."""

    value: float | None
    fire: bool
    clear: bool
    summary: str
    note: str | None = None


@dataclass(frozen=True, slots=True)
class AlertState:
    state: str = "ok"
    since: float = 0.0
    value: float | None = None
    fired_at: float | None = None
    resolved_at: float | None = None


def step(
    st: AlertState, reading: Reading, now: float, for_s: float, cooldown_s: float
) -> tuple[AlertState, str | None]:
    """The next state and the event to notify ("firing", "resolved" or None)."""
    st = replace(st, value=reading.value)
    if reading.note is not None:
        return st, None  # cannot judge: stay where we are
    if st.state == "firing":
        if reading.clear:
            return replace(st, state="resolved", since=now, resolved_at=now), "resolved"
        return st, None
    if not reading.fire:
        if st.state == "pending":
            back = "resolved" if st.resolved_at is not None else "ok"
            return replace(st, state=back, since=now), None
        return st, None
    if st.state != "pending":
        st = replace(st, state="pending", since=now)
    cooled = st.resolved_at is None or now - st.resolved_at >= cooldown_s
    if now - st.since >= for_s and cooled:
        return replace(st, state="firing", since=now, fired_at=now), "firing"
    return st, None


# --- readings ----------------------------------------------------------------------------


def _fmt_window(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def conversions_table(conn: sqlite3.Connection) -> bool:
    """Whether the conversions table (`events`, migration 0009) is there."""
    cols = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
    return {"link_id", "click_ts"} <= cols


def scope_facts(conn: sqlite3.Connection, rules: list[dict[str, Any]], now: int) -> dict[str, Any]:
    """What the rules need from SQL, in one call on the reader thread: the links of each
    campaign, which links track conversions, the destination checks of each link."""
    campaigns = sorted({r["scope"]["campaign"] for r in rules if "campaign" in r["scope"]})
    members: dict[str, list[int]] = {c: [] for c in campaigns}
    for i in range(0, len(campaigns), 500):
        part = campaigns[i : i + 500]
        marks = ", ".join("?" * len(part))
        for link_id, campaign in conn.execute(
            f"SELECT id, campaign FROM links WHERE archived_at IS NULL AND campaign IN ({marks})",
            part,
        ):
            members[campaign].append(link_id)
    ids: set[int] = set()
    for r in rules:
        if r["kind"] in ("destination", "conversion_rate_below"):
            scope = r["scope"]
            ids.update([scope["link_id"]] if "link_id" in scope else members[scope["campaign"]])
    tracked: set[int] = set()
    destinations: dict[int, list[str]] = {}
    failover = {
        row[0]: (row[1], row[2])
        for row in conn.execute(
            "SELECT link_id, failover_from, options FROM alerts WHERE failover_from IS NOT NULL"
        )
    }
    id_list = sorted(ids)
    for i in range(0, len(id_list), 500):
        part = id_list[i : i + 500]
        marks = ", ".join("?" * len(part))
        for row in conn.execute(
            "SELECT l.id, l.url, l.rules, l.variants, l.overflow_url, l.click_ids, "
            "d.click_ids AS domain_click_ids FROM links l JOIN domains d ON d.id = l.domain_id "
            f"WHERE l.id IN ({marks}) AND l.archived_at IS NULL AND l.disabled = 0 "
            "AND (l.expires_at IS NULL OR l.expires_at > ?)",
            (*part, now),
        ):
            if row["click_ids"] or row["domain_click_ids"]:
                tracked.add(row["id"])
            urls = checks.destinations_of(row)
            if row["id"] in failover:
                original, options = failover[row["id"]]
                fallback = orjson.loads(options).get("fallback_url")
                urls = [original] + [u for u in urls if u != fallback]
            destinations[row["id"]] = urls
    all_urls = sorted({u for urls in destinations.values() for u in urls})
    check = {c["url"]: c for c in checks.check_rows(conn, all_urls)}
    return {
        "members": members,
        "tracked": tracked,
        "events": conversions_table(conn),
        "destinations": destinations,
        "checks": check,
    }


def conversions_in(conn: sqlite3.Connection, link_ids: list[int], since_ms: int) -> int:
    total = 0
    for i in range(0, len(link_ids), 500):
        part = link_ids[i : i + 500]
        marks = ", ".join("?" * len(part))
        total += conn.execute(
            # conversions of the window's clicks (the events_link index: link, click time)
            f"SELECT count(*) FROM events WHERE link_id IN ({marks}) AND click_ts >= ?",
            (*part, since_ms),
        ).fetchone()[0]
    return int(total)


# --- the engine ----------------------------------------------------------------------------


class AlertEngine:
    """Evaluates every enabled rule every alert_eval_interval_s in the collector."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self.db = Database(self.config.db_path)
        self.notifier = notify.Notifier(runtime)
        self.checker = checks.DestinationChecker(runtime, self.db)
        self.task: asyncio.Task[None] | None = None
        self.status: dict[int, dict[str, Any]] = {}  # id -> what the last evaluation saw
        self.states: dict[int, AlertState] = {}
        self.evaluations = 0
        self.last_eval_s = 0.0  # how long the last evaluation took (wall time)
        self.started = False
        self._held_since = 0.0
        self.longest_hold_s = 0.0  # the longest stretch an evaluation held the loop
        self._lock = asyncio.Lock()  # one evaluation at a time (the loop's, an API write's)

    async def start(self) -> None:
        await self.db.open()
        self.started = True
        await self.notifier.resume()
        self.checker.start()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.checker.stop()
        await self.notifier.stop()
        if self.started:
            await self.db.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.alert_eval_interval_s)
            try:
                await self.evaluate(time.time())
            except asyncio.CancelledError:
                raise
            except Exception:  # logged; the next evaluation runs
                log.exception("alert evaluation failed")

    def uptime(self, now: float) -> float:
        return now - float(self.runtime.started_at)

    async def _maybe_yield(self) -> None:
        """Give the loop back (the pipeline's flush timer, the admin API) once the
        evaluation has held it YIELD_AFTER_S."""
        held = time.thread_time() - self._held_since
        if held >= YIELD_AFTER_S:
            self.longest_hold_s = max(self.longest_hold_s, held)
            await asyncio.sleep(0)
            self._held_since = time.thread_time()

    async def _count(self, link_ids: list[int], start_s: int, end_s: int, humans: bool) -> int:
        live = self.runtime.live
        total = 0
        for i in range(0, len(link_ids), SLICE):
            for link_id in link_ids[i : i + SLICE]:
                total += live.window_between(link_id, start_s, end_s)[1 if humans else 0]
            await self._maybe_yield()
        return total

    async def evaluate(self, now: float, only: int | None = None) -> None:
        """Evaluate every enabled rule (or only rule `only`: right after the API wrote it,
        so its answer shows what the rule sees now)."""
        async with self._lock:
            started = time.perf_counter()
            rules = [
                r
                for r in await self.db.run(list_alerts)
                if r["enabled"] and (only is None or r["id"] == only)
            ]
            facts = await self.db.run(scope_facts, rules, int(now * 1000))
            self._held_since = time.thread_time()
            for rule in rules:
                await self._evaluate_rule(rule, facts, now)
                await self._maybe_yield()
            if only is None:
                seen = {r["id"] for r in rules}
                for gone in set(self.states) - seen:
                    self.states.pop(gone, None)
                    self.status.pop(gone, None)
                self.evaluations += 1
                self.last_eval_s = time.perf_counter() - started

    async def _evaluate_rule(self, rule: dict[str, Any], facts: dict[str, Any], now: float) -> None:
        reading = await self.read(rule, facts, now)
        old = self.states.get(rule["id"])
        if old is None:
            old = AlertState(
                rule["state"],
                rule["state_since"] / 1000,
                rule["value"],
                None if rule["fired_at"] is None else rule["fired_at"] / 1000,
                None if rule["resolved_at"] is None else rule["resolved_at"] / 1000,
            )
        opts = rule["options"]
        new, event = step(old, reading, now, opts["for_s"], opts["cooldown_s"])
        self.states[rule["id"]] = new
        self.status[rule["id"]] = {
            "value": reading.value,
            "summary": reading.summary or None,
            "note": reading.note,
            "evaluated_at": now,
        }
        if new.state != old.state:
            await self.runtime.writer.run(save_state, rule["id"], new)
            self._held_since = time.thread_time()  # the loop was free meanwhile
        if event is not None:
            await self._act(rule, event, new, reading, facts)
            self._held_since = time.thread_time()

    async def read(self, rule: dict[str, Any], facts: dict[str, Any], now: float) -> Reading:
        kind = rule["kind"]
        scope = rule["scope"]
        ids = [scope["link_id"]] if "link_id" in scope else facts["members"][scope["campaign"]]
        opts = rule["options"]
        w = int(rule["window_s"])
        t = rule["threshold"]
        end = int(now)
        humans = opts.get("count") == "humans"
        what = "humans" if humans else "clicks"
        up = self.uptime(now)
        if kind == "destination":
            failing = []
            for link_id in ids:
                for url in facts["destinations"].get(link_id, []):
                    c = facts["checks"].get(url)
                    if c is not None and c["ok"] is False:
                        failing.append(f"{url}: {c['error']}")
            failing = sorted(set(failing))
            summary = "; ".join(failing) if failing else "every destination answers"
            return Reading(len(failing), bool(failing), not failing, summary)
        x = await self._count(ids, end - w + 1, end, humans)
        span = _fmt_window(w)
        if kind == "clicks_above":
            h = opts["hysteresis"]
            return Reading(
                x, x > t, x <= t * (1 - h), f"{x} {what} in the last {span} (above {t:g})"
            )
        warming = f"warming up: the live counters need {{}} s of collector uptime (have {up:.0f})"
        if kind == "clicks_below":
            if up < w:
                return Reading(x, False, False, "", warming.format(w))
            h = opts["hysteresis"]
            return Reading(
                x, x < t, x >= t * (1 + h), f"{x} {what} in the last {span} (below {t:g})"
            )
        if kind == "zero":
            if up < 2 * w:
                return Reading(x, False, False, "", warming.format(2 * w))
            before = await self._count(ids, end - 2 * w + 1, end - w, humans)
            need = max(1.0, t or 1.0)
            return Reading(
                x,
                x == 0 and before >= need,
                x > 0,
                f"{x} {what} in the last {span} after {before} in the {span} before",
            )
        if kind == "anomaly":
            b = int(opts["baseline_s"])
            if up < w + b:
                return Reading(x, False, False, "", warming.format(w + b))
            base = await self._count(ids, end - w - b + 1, end - w, humans)
            lam = base * w / b
            high = poisson_sf(x, lam)
            low = poisson_cdf(x, lam)
            p, p_clear, least = opts["p_value"], opts["p_clear"], opts["min_count"]
            spike = x >= least and high < p
            drop = lam >= least and low < p
            clear = high >= p_clear and low >= p_clear
            word = "spike" if x > lam else "drop"
            return Reading(
                x,
                spike or drop,
                clear,
                f"{x} {what} in the last {span}, expected {lam:.1f} from the {_fmt_window(b)} "
                f"before ({word}: p={min(high, low):.2g})",
            )
        # conversion_rate_below
        if not facts["events"] or not all(i in facts["tracked"] for i in ids) or not ids:
            return Reading(None, False, False, "", NOT_TRACKED + _why_not_tracked(facts, ids))
        conversions = await self.db.run(conversions_in, ids, (end - w + 1) * 1000)
        self._held_since = time.thread_time()
        if x < opts["min_clicks"]:
            return Reading(
                None,
                False,
                False,
                f"{x} clicks in the last {span}: the rate is judged after {opts['min_clicks']}",
            )
        rate = conversions / x
        h = opts["hysteresis"]
        return Reading(
            round(rate, 6),
            rate < t,
            rate >= t * (1 + h),
            f"{conversions} conversions of {x} clicks in the last {span} "
            f"({rate:.2%}, below {t:.2%})",
        )

    async def _act(
        self,
        rule: dict[str, Any],
        event: str,
        st: AlertState,
        reading: Reading,
        facts: dict[str, Any],
    ) -> None:
        fallback = rule["options"].get("fallback_url")
        failover = None
        if rule["kind"] == "destination" and fallback and "link_id" in rule["scope"]:
            try:
                failover = await self.runtime.writer.run(
                    apply_failover,
                    rule["id"],
                    rule["scope"]["link_id"],
                    fallback,
                    event == "firing",
                )
            except LinkedgeError as exc:  # e.g. the link was archived meanwhile: still notify
                log.warning("alert %d: no failover: %s", rule["id"], exc.message)
            if failover is not None:
                rev = await self.runtime.writer.run(current_rev)
                await self.runtime.edges.serve_rev(rev)
        payload = {
            "event": event,
            "alert": {
                "id": rule["id"],
                "name": rule["name"],
                "kind": rule["kind"],
                "scope": rule["scope"],
                "window_s": rule["window_s"],
                "threshold": rule["threshold"],
            },
            "state": st.state,
            "value": reading.value,
            "summary": reading.summary,
            "at": _iso(st.since),
            "fired_at": None if st.fired_at is None else _iso(st.fired_at),
            "failover": failover,
        }
        await self.notifier.notify(rule["id"], event, payload, rule["notify"])

    def firing(self) -> list[dict[str, Any]]:
        """The firing alerts, for /api/live (memory only, no SQL)."""
        out = []
        for alert_id, st in sorted(self.states.items()):
            if st.state == "firing":
                out.append(
                    {
                        "id": alert_id,
                        "since": _iso(st.since),
                        "value": st.value,
                        "summary": self.status.get(alert_id, {}).get("summary"),
                    }
                )
        return out


def _why_not_tracked(facts: dict[str, Any], ids: list[int]) -> str:
    if not ids:
        return " (the scope has no links)"
    if not facts["events"]:
        return " (this database has no conversions table yet)"
    return " (turn on click_ids for the link or its domain)"


def _iso(t: float) -> str:
    from admin import timerange

    return timerange.iso_ms(int(t * 1000)) or ""


def apply_failover(
    conn: sqlite3.Connection, alert_id: int, link_id: int, fallback: str, on: bool
) -> dict[str, Any] | None:
    """Send the link to its fallback URL (on) or back to its own (off); what changed."""
    with Transaction(conn):
        row = conn.execute("SELECT failover_from FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        link = conn.execute(
            "SELECT url, archived_at FROM links WHERE id = ?", (link_id,)
        ).fetchone()
        if row is None or link is None or link["archived_at"] is not None:
            return None
        if on and row["failover_from"] is None and link["url"] != fallback:
            catalog.update_link(conn, link_id, {"url": fallback})
            conn.execute(
                "UPDATE alerts SET failover_from = ? WHERE id = ?", (link["url"], alert_id)
            )
            return {"link_id": link_id, "from": link["url"], "to": fallback}
        if not on and row["failover_from"] is not None:
            original = row["failover_from"]
            conn.execute("UPDATE alerts SET failover_from = NULL WHERE id = ?", (alert_id,))
            if link["url"] == fallback:  # an operator who changed it since is not overruled
                catalog.update_link(conn, link_id, {"url": original})
                return {"link_id": link_id, "from": fallback, "to": original}
    return None


# --- the API -------------------------------------------------------------------------------


def add_routes(router: Any, server: Any) -> None:
    api = AlertsApi(server)
    router.add("GET", "/api/alerts", api.list_alerts, ("state",))
    router.add("POST", "/api/alerts", api.create_alert)
    router.add("GET", "/api/alerts/{id}", api.get_alert)
    router.add("PATCH", "/api/alerts/{id}", api.patch_alert)
    router.add("DELETE", "/api/alerts/{id}", api.delete_alert)
    router.add("GET", "/api/alerts/{id}/deliveries", api.alert_deliveries)
    router.add("GET", "/api/checks", api.destination_checks, ("failing",))


_JSON: Final = "application/json"
_RULE_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "scope": {"type": "object"},
        "kind": {"type": "string", "enum": list(KINDS)},
        "window_s": {"type": "integer"},
        "threshold": {"type": ["number", "null"]},
        "notify": {"type": "array", "items": {"type": "object"}},
        "enabled": {"type": "boolean"},
    },
}
# admin/openapi.py's entries for these routes: (summary, status, body schema, content type)
OPENAPI_OPERATIONS: Final[dict[str, tuple[str, int, Any, str]]] = {
    "list_alerts": ("Alert rules with their state (and how many fire)", 200, None, _JSON),
    "create_alert": ("Add an alert rule", 201, {**_RULE_SCHEMA, "required": ["name"]}, _JSON),
    "get_alert": ("One alert rule and its state", 200, None, _JSON),
    "patch_alert": ("Change an alert rule", 200, _RULE_SCHEMA, _JSON),
    "delete_alert": ("Remove an alert rule and its delivery log", 204, None, _JSON),
    "alert_deliveries": ("An alert's delivery log (newest first)", 200, None, _JSON),
    "destination_checks": ("Every checked destination and its last answer", 200, None, _JSON),
}


class AlertsApi:
    def __init__(self, server: Any) -> None:
        self.server = server

    @property
    def engine(self) -> AlertEngine | None:
        return getattr(self.server.runtime, "alerts", None)

    def out(self, alert: dict[str, Any]) -> dict[str, Any]:
        from admin import timerange

        out = dict(alert)
        out["notify"] = notify.targets_out(alert["notify"])
        engine = self.engine
        st = engine.states.get(alert["id"]) if engine is not None else None
        last = engine.status.get(alert["id"]) if engine is not None else None
        if st is not None:
            out["state"] = st.state
            out["state_since"] = int(st.since * 1000)
            out["value"] = st.value
        for name in ("state_since", "fired_at", "resolved_at", "created_at", "updated_at"):
            out[name] = timerange.iso_ms(out[name])
        out["summary"] = last["summary"] if last else None
        out["note"] = last["note"] if last else None
        out["evaluated_at"] = timerange.iso_ms(int(last["evaluated_at"] * 1000)) if last else None
        return out

    async def _evaluated(self, alert_id: int) -> dict[str, Any]:
        engine = self.engine
        if engine is not None and engine.started:
            engine.states.pop(alert_id, None)  # the stored state is the truth after a write
            await engine.evaluate(time.time(), only=alert_id)
        alert: dict[str, Any] = await self.server.runtime.writer.run(get_alert, alert_id)
        return alert

    async def list_alerts(self, call: Call) -> Response:
        state = call.q("state")
        if state is not None and state not in STATES:
            raise InvalidField(f"state must be one of {', '.join(STATES)}", "state")
        alerts = [self.out(a) for a in await self.server.db.run(list_alerts)]
        if state is not None:
            alerts = [a for a in alerts if a["state"] == state]
        firing = sum(1 for a in alerts if a["state"] == "firing")
        return json_response(200, {"alerts": alerts, "firing": firing})

    async def create_alert(self, call: Call) -> Response:
        body = call.json_object(BODY_FIELDS)
        rule = validate_rule(body)
        alert = await self.server.runtime.writer.run(create_alert, rule)
        alert = await self._evaluated(alert["id"])
        return json_response(201, self.out(alert), (("Location", f"/api/alerts/{alert['id']}"),))

    async def get_alert(self, call: Call) -> Response:
        alert = await self.server.db.run(get_alert, call.path_id("alert"))
        return json_response(200, self.out(alert))

    async def patch_alert(self, call: Call) -> Response:
        body = call.json_object(BODY_FIELDS)
        if not body:
            raise InvalidField("nothing to change: send the fields to change")
        alert = await self.server.runtime.writer.run(update_alert, call.path_id("alert"), body)
        alert = await self._evaluated(alert["id"])
        return json_response(200, self.out(alert))

    async def delete_alert(self, call: Call) -> Response:
        await self.server.runtime.writer.run(delete_alert, call.path_id("alert"))
        return Response(204, b"")

    async def alert_deliveries(self, call: Call) -> Response:
        from admin import timerange

        alert_id = call.path_id("alert")
        await self.server.db.run(get_alert, alert_id)
        rows = await self.server.db.run(notify.deliveries, alert_id, notify.DELIVERY_LOG_LIMIT)
        for row in rows:
            for name in ("created_at", "updated_at"):
                row[name] = timerange.iso_ms(row[name])
        return json_response(200, {"deliveries": rows})

    async def destination_checks(self, call: Call) -> Response:
        from admin import timerange

        failing = call.q_bool("failing")
        rows = await self.server.db.run(checks.check_rows)
        if failing:
            rows = [r for r in rows if r["ok"] is False]
        for row in rows:
            for name in ("checked_at", "last_good_at", "failing_since", "next_check_at"):
                row[name] = timerange.iso_ms(row[name])
        return json_response(200, {"checks": rows})
