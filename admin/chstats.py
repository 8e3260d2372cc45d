"""The stats of admin/stats.py answered from ClickHouse, when it is the click sink: the
same functions, the same JSON, the same numbers.

Rules:
- Links, their groups (campaign, UTM fields, tags, domain) and names come from the link
  store (the SQLite connection every stats function is given); clicks come from the
  ClickHouse `clicks` table (edge/chsink.py). A link is grouped by its *current* fields,
  as in SQLite: the selected links and their group numbers travel in the query
  (`transform(link_id, [ids], [groups])`), nothing about groups is stored with a click.
- The resolution rules are admin/stats.py's (docs/api.md): clicks and the series exact to
  the minute, breakdowns over the whole UTC hours that overlap the range, unique visitors
  per whole UTC day (uniqExact, never the approximate uniq), summed over the days; a
  visitor of two links of a group counts once per day. Humans are `bot_kind = ''`.
- Series buckets: ClickHouse counts per unit of time (the largest of a day, an hour, a
  quarter hour or a minute that every bucket start of the zone is a multiple of) and
  Python places the units into the zone's buckets, as the SQLite rollups do.
- Every query is one statement of ClickHouse 18.16 SQL that current releases also run:
  no WITH FILL, window functions, toStartOfInterval, CTEs or query parameters (integers
  are formatted by us, strings quoted by chclient.quote).
- Blocking: these run on the API's stats thread or in the CLI, never on an event loop.
"""

from __future__ import annotations

import bisect
import sqlite3
from collections.abc import Sequence
from typing import Any, Final

from admin import stats
from admin.timerange import TimeRange, bucket_starts, iso_local, iso_ms
from admin.velocity import velocity_of
from edge.catalog import LinkFilter, domain_hosts, link_names
from edge.chclient import BlockingClient, ClickHouseError, SinkURL, parse_sink_url
from edge.config import Config
from edge.errors import InvalidField, LinkedgeError

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000
# Units a series is counted in (minutes), coarsest first; each bucket is made of whole units.
_UNITS: Final = (1440, 60, 15, 1)
_INTERVAL_MINUTES: Final = {"minute": 1, "hour": 60, "day": 1440}
HUMAN: Final = "bot_kind = ''"


class StatsUnavailable(LinkedgeError):
    """ClickHouse did not answer a stats query (down, unreachable, or an error)."""

    status = 503
    code = "stats_unavailable"


class _Links:
    """The selected links and their groups (index 1.. in `keys`), as SQL over `clicks`."""

    def __init__(self, conn: sqlite3.Connection, flt: LinkFilter, group_by: str | None) -> None:
        where, params = flt.where()
        key_sql = "NULL" if group_by is None else stats.GROUP_KEY_SQL[group_by]
        tags = ", json_each(l.tags) t" if group_by == "tag" else ""
        self.keys: list[Any] = []  # group index - 1 -> key
        index: dict[Any, int] = {}
        self.groups_of: dict[int, list[int]] = {}
        self.sizes: dict[Any, int] = {}
        for link_id, key in conn.execute(
            f"SELECT l.id, {key_sql} FROM links l{tags} WHERE {where}", params
        ):
            i = index.get(key)
            if i is None:
                self.keys.append(key)
                i = index[key] = len(self.keys)
            self.groups_of.setdefault(int(link_id), []).append(i)
            self.sizes[key] = self.sizes.get(key, 0) + 1
        # the selection (for tags: also the links without one, counted in the totals)
        self.selected = (
            [int(r[0]) for r in conn.execute(f"SELECT l.id FROM links l WHERE {where}", params)]
            if group_by == "tag"
            else list(self.groups_of)
        )
        self.everything = where == "1"
        self.purged = (
            [int(r[0]) for r in conn.execute("SELECT id FROM purged_links")]
            if self.everything
            else []
        )
        self.multi = group_by == "tag"
        self.label: dict[Any, Any] = {}
        if group_by == "domain":
            hosts = domain_hosts(conn)
            self.label = {k: hosts.get(int(k), k) for k in self.sizes}

    def where(self, only: Sequence[int] | None = None) -> str:
        """The clicks of the selected links (or of the links of groups `only`)."""
        if only is not None:
            wanted = set(only)
            ids = [i for i, gs in self.groups_of.items() if wanted.intersection(gs)]
            return f"link_id IN ({_ints(ids)})"
        if self.everything:
            return f"link_id NOT IN ({_ints(self.purged)})" if self.purged else "1"
        return f"link_id IN ({_ints(self.selected)})"

    def key(self) -> str:
        """The group number of a click (tags: one row per tag of its link)."""
        ids = list(self.groups_of)
        if self.multi:
            values = ", ".join("'" + ",".join(map(str, self.groups_of[i])) + "'" for i in ids)
            return (
                f"toUInt32(arrayJoin(splitByChar(',', transform(link_id, [{_ints(ids)}], "
                f"[{values}], '0'))))"
            )
        groups = _ints(self.groups_of[i][0] for i in ids)
        return f"transform(link_id, [{_ints(ids)}], [{groups}], 0)"

    def output_key(self, i: int) -> Any:
        key = self.keys[i - 1]
        return self.label.get(key, key)


def _ints(values: Any) -> str:
    out = ", ".join(str(int(v)) for v in values)
    return out or "0"  # IN (0): no link has id 0


def _unit(rng: TimeRange, starts: Sequence[int]) -> int:
    """Minutes per counted unit: the largest that fits the interval and divides every
    bucket start (a day or an hour in UTC, quarter hours in Asia/Kolkata)."""
    limit = _INTERVAL_MINUTES[rng.interval]
    for unit in _UNITS:
        if unit <= limit and all((s // 60) % unit == 0 for s in starts):
            return unit
    return 1


class ClickHouseStats:
    """admin/stats.py's reads, with ClickHouse holding the clicks."""

    def __init__(self, url: SinkURL) -> None:
        self.url = url
        self.client = BlockingClient(url)

    def _rows(self, sql: str) -> list[list[Any]]:
        try:
            return self.client.rows(sql)
        except ClickHouseError as exc:
            raise StatsUnavailable(f"the click store did not answer: {exc}") from None

    # -- pieces ---------------------------------------------------------------------------

    def _series_rows(
        self,
        links: _Links,
        rng: TimeRange,
        starts: Sequence[int],
        key_sql: str,
        only: Sequence[int] | None,
    ) -> dict[int, list[list[int]]]:
        """Per group number (0 without group_by): [clicks, humans] per bucket."""
        unit = _unit(rng, starts)
        m_first, m_last = rng.minutes
        keep = f" AND k IN ({_ints(only)})" if only is not None else ""
        out: dict[int, list[list[int]]] = {}
        n = len(starts)
        for k, u, clicks, humans in self._rows(
            f"SELECT {key_sql} AS k, intDiv(ts_ms, {unit * MINUTE_MS}) AS u, count() AS c, "
            f"countIf({HUMAN}) AS h FROM clicks WHERE {links.where(only)} "
            f"AND ts_ms >= {m_first * MINUTE_MS} AND ts_ms < {(m_last + 1) * MINUTE_MS} "
            f"GROUP BY k, u HAVING 1{keep}"
        ):
            i = bisect.bisect_right(starts, int(u) * unit * 60) - 1
            if 0 <= i < n:
                buckets = out.get(int(k))
                if buckets is None:
                    buckets = out[int(k)] = [[0, 0] for _ in range(n)]
                buckets[i][0] += int(clicks)
                buckets[i][1] += int(humans)
        return out

    def _uniques(
        self, links: _Links, rng: TimeRange, key_sql: str, only: Sequence[int] | None
    ) -> dict[int, list[int]]:
        d_first, d_last = rng.days
        keep = f" AND k IN ({_ints(only)})" if only is not None else ""
        return {
            int(k): [int(u), int(h)]
            for k, u, h in self._rows(
                f"SELECT k, sum(u), sum(h) FROM (SELECT {key_sql} AS k, "
                f"intDiv(ts_ms, {DAY_MS}) AS day, uniqExact(visitor_id) AS u, "
                f"uniqExactIf(visitor_id, {HUMAN}) AS h FROM clicks "
                f"WHERE {links.where(only)} AND has_visitor = 1 "
                f"AND ts_ms >= {d_first * DAY_MS} AND ts_ms < {(d_last + 1) * DAY_MS} "
                f"GROUP BY k, day HAVING 1{keep}) GROUP BY k"
            )
        }

    def _bot_kinds(
        self, links: _Links, rng: TimeRange, key_sql: str, only: Sequence[int] | None
    ) -> dict[int, dict[str, int]]:
        h_first, h_last = rng.hours
        keep = f" AND k IN ({_ints(only)})" if only is not None else ""
        out: dict[int, dict[str, int]] = {}
        for k, kind, n in self._rows(
            f"SELECT {key_sql} AS k, bot_kind, count() AS c FROM clicks "
            f"WHERE {links.where(only)} AND bot_kind != '' "
            f"AND ts_ms >= {h_first * HOUR_MS} AND ts_ms < {(h_last + 1) * HOUR_MS} "
            f"GROUP BY k, bot_kind HAVING 1{keep}"
        ):
            out.setdefault(int(k), {})[str(kind)] = int(n)
        return {
            k: dict(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))
            for k, kinds in out.items()
        }

    # -- answers --------------------------------------------------------------------------

    def selection_stats(
        self,
        conn: sqlite3.Connection,
        flt: LinkFilter,
        rng: TimeRange,
        top: int = stats.DEFAULT_TOP,
    ) -> dict[str, Any]:
        """stats.selection_stats from ClickHouse."""
        links = _Links(conn, flt, None)
        starts = bucket_starts(rng.from_s, rng.to_s, rng.interval, rng.tz)
        labels = [iso_local(t, rng.tz) for t in starts]
        buckets = [[0, 0] for _ in starts]
        top_lists: dict[str, list[dict[str, Any]]] = {n: [] for n in stats.DIMENSION_NAMES.values()}
        unique = human_unique = 0
        kinds: dict[str, int] = {}
        if links.selected:
            buckets = self._series_rows(links, rng, starts, "0", None).get(0, buckets)
            unique, human_unique = self._uniques(links, rng, "0", None).get(0, [0, 0])
            kinds = self._bot_kinds(links, rng, "0", None).get(0, {})
            top_lists = self._top(links, rng, top)
        clicks = sum(c for c, _h in buckets)
        humans = sum(h for _c, h in buckets)
        return {
            "totals": {
                "clicks": clicks,
                "humans": humans,
                "bots": clicks - humans,
                "uniques": unique,
                "human_uniques": human_unique,
            },
            "bots_by_kind": kinds,
            "series": [
                {"t": label, "clicks": c, "humans": h}
                for label, (c, h) in zip(labels, buckets, strict=True)
            ],
            "top": top_lists,
        }

    def _top(self, links: _Links, rng: TimeRange, top: int) -> dict[str, list[dict[str, Any]]]:
        """The top values of every breakdown dimension over the range's UTC hours: most
        clicks first, on a tie known values before the unknown one (''), then by value
        (byte order of UTF-8 = code point order, as Python sorts)."""
        h_first, h_last = rng.hours
        dims = list(stats.DIMENSION_NAMES)
        out: dict[str, list[dict[str, Any]]] = {stats.DIMENSION_NAMES[d]: [] for d in dims}
        for dim, value, clicks, humans in self._rows(
            f"SELECT d, v, count() AS c, countIf({HUMAN}) AS h FROM clicks "
            f"ARRAY JOIN [{', '.join(repr(d) for d in dims)}] AS d, [{', '.join(dims)}] AS v "
            f"WHERE {links.where()} "
            f"AND ts_ms >= {h_first * HOUR_MS} AND ts_ms < {(h_last + 1) * HOUR_MS} "
            f"GROUP BY d, v ORDER BY d, c DESC, v = '', v LIMIT {int(top)} BY d"
        ):
            out[stats.DIMENSION_NAMES[dim]].append(
                {"value": value or None, "clicks": int(clicks), "humans": int(humans)}
            )
        return out

    def group_stats(
        self,
        conn: sqlite3.Connection,
        flt: LinkFilter,
        group_by: str,
        rng: TimeRange,
        limit: int = stats.DEFAULT_GROUPS,
    ) -> dict[str, Any]:
        """stats.group_stats from ClickHouse."""
        if group_by not in stats.GROUP_KEY_SQL:
            raise InvalidField(f"group_by must be one of {', '.join(stats.GROUP_BY)}", "group_by")
        links = _Links(conn, flt, group_by)
        starts = bucket_starts(rng.from_s, rng.to_s, rng.interval, rng.tz)
        labels = [iso_local(t, rng.tz) for t in starts]
        m_first, m_last = rng.minutes
        totals: dict[int, list[int]] = {}
        overall = [0, 0]
        if links.selected:
            span = f"ts_ms >= {m_first * MINUTE_MS} AND ts_ms < {(m_last + 1) * MINUTE_MS}"
            key_sql = links.key()
            for k, clicks, humans in self._rows(
                f"SELECT {key_sql} AS k, count(), countIf({HUMAN}) FROM clicks "
                f"WHERE {links.where()} AND {span} GROUP BY k"
            ):
                if int(k):  # 0: a link without a tag (in the totals only)
                    totals[int(k)] = [int(clicks), int(humans)]
            if links.multi:  # a click of a link with two tags counts once in the totals
                for clicks, humans in self._rows(
                    f"SELECT count(), countIf({HUMAN}) FROM clicks WHERE {links.where()} AND {span}"
                ):
                    overall = [int(clicks), int(humans)]
            else:
                for clicks, humans in totals.values():
                    overall[0] += clicks
                    overall[1] += humans
        ranked = sorted(
            (k for k, (c, _h) in totals.items() if c),
            key=lambda k: (-totals[k][0], str(links.output_key(k))),
        )[:limit]
        series: dict[int, list[list[int]]] = {}
        uniques: dict[int, list[int]] = {}
        kinds: dict[int, dict[str, int]] = {}
        if ranked:
            key_sql = links.key()
            series = self._series_rows(links, rng, starts, key_sql, ranked)
            uniques = self._uniques(links, rng, key_sql, ranked)
            kinds = self._bot_kinds(links, rng, key_sql, ranked)
        raw_keys = [links.keys[k - 1] for k in ranked]
        names = link_names(conn, raw_keys) if group_by == "link" else {}
        groups = []
        for k, raw in zip(ranked, raw_keys, strict=True):
            clicks, humans = totals[k]
            unique, human_unique = uniques.get(k, [0, 0])
            group: dict[str, Any] = {"key": links.output_key(k)}
            if raw in names:
                group["domain"], group["slug"] = names[raw]
                group["short_url"] = stats.short_url(*names[raw])
            points = series.get(k) or [[0, 0] for _ in starts]
            group.update(
                {
                    "links": links.sizes.get(raw, 0),
                    "clicks": clicks,
                    "humans": humans,
                    "bots": clicks - humans,
                    "bots_by_kind": kinds.get(k, {}),
                    "uniques": unique,
                    "human_uniques": human_unique,
                    "series": [
                        {"t": label, "clicks": c, "humans": h}
                        for label, (c, h) in zip(labels, points, strict=True)
                    ],
                }
            )
            groups.append(group)
        clicks, humans = overall
        return {
            "group_by": group_by,
            "groups": groups,
            "totals": {"clicks": clicks, "humans": humans, "bots": clicks - humans},
        }

    def launch_checkpoints(
        self,
        conn: sqlite3.Connection,
        link_id: int,
        launch_ms: int | None,
        launch_from: str | None,
        now_ms: int,
    ) -> dict[str, Any]:
        """stats.launch_checkpoints from ClickHouse: from the link's launch, else from its
        first human click."""
        link_id = int(link_id)
        first = first_human = None
        for n, at, n_human, at_human in self._rows(
            f"SELECT count(), min(ts_ms), countIf({HUMAN}), minIf(ts_ms, {HUMAN}) "
            f"FROM clicks WHERE link_id = {link_id}"
        ):
            first = int(at) if int(n) else None
            first_human = int(at_human) if int(n_human) else None
        start = launch_ms if launch_ms is not None else first_human
        head: dict[str, Any] = {
            "launched_at": iso_ms(launch_ms) if launch_ms is not None else None,
            "launch_from": launch_from,
            "first_click_at": iso_ms(first) if first is not None else None,
            "first_human_click_at": iso_ms(first_human) if first_human is not None else None,
            "started_at": iso_ms(start) if start is not None else None,
            "started_by": (
                "launch" if launch_ms is not None else "first_human_click" if start else None
            ),
        }
        if start is None:
            return {**head, "checkpoints": []}
        ends = [start + n * MINUTE_MS for n in stats.CHECKPOINT_MINUTES]
        parts = [
            f"countIf(ts_ms < {end}), countIf(ts_ms < {end} AND {HUMAN}), "
            f"uniqExactIf(visitor_id, ts_ms < {end} AND has_visitor = 1)"
            for end in ends
        ]
        values = self._rows(
            f"SELECT {', '.join(parts)} FROM clicks WHERE link_id = {link_id} "
            f"AND ts_ms >= {int(start)} AND ts_ms < {max(start, min(ends[-1], now_ms + 1))}"
        )[0]
        checkpoints = []
        for i, n in enumerate(stats.CHECKPOINT_MINUTES):
            clicks, humans, uniques = values[3 * i : 3 * i + 3]
            checkpoints.append(
                {
                    "minutes": n,
                    "at": iso_ms(ends[i]),
                    "complete": now_ms >= ends[i],
                    "clicks": int(clicks),
                    "humans": int(humans),
                    "uniques": int(uniques),
                }
            )
        return {**head, "checkpoints": checkpoints}

    def rollup_velocity(
        self, conn: sqlite3.Connection, link_id: int, window_s: int, now_s: int
    ) -> dict[str, Any]:
        """velocity.rollup_velocity (the CLI's, without live counters) from ClickHouse."""
        now_ms = (now_s + 1) * 1000
        w_ms = window_s * 1000
        current, previous = self._rows(
            f"SELECT countIf(ts_ms >= {now_ms - w_ms}), countIf(ts_ms < {now_ms - w_ms}) "
            f"FROM clicks WHERE link_id = {int(link_id)} AND ts_ms >= {now_ms - 2 * w_ms} "
            f"AND ts_ms < {now_ms}"
        )[0]
        return velocity_of(int(current), int(previous), window_s)

    # the link-store reads stay admin/stats.py's
    selected_link_ids = staticmethod(stats.selected_link_ids)
    group_keys_of = staticmethod(stats.group_keys_of)


def for_sink(config: Config) -> ClickHouseStats:
    """The stats reads of a config whose click sink is ClickHouse."""
    assert config.click_sink
    return for_url(config.click_sink)


def for_url(url: str) -> ClickHouseStats:
    try:
        return ClickHouseStats(parse_sink_url(url))
    except ValueError as exc:
        raise InvalidField(str(exc), "click_sink") from None
