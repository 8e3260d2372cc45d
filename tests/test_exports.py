"""admin/exports.py: links, clicks and stats as CSV and NDJSON, with filters, streamed."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from admin import exports
from edge import catalog, rollups
from edge.db import Transaction
from tests.conftest import cli

DAY_MS = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def click(link_id: int, ts: int, bot: str | None = None) -> tuple[Any, ...]:
    row: dict[str, Any] = dict.fromkeys(rollups.CLICK_COLUMNS)
    row.update(
        ts=ts,
        link_id=link_id,
        visitor_id=bytes(range(8)),
        bot_kind=bot,
        bot_reason="linkedge:curl/" if bot else None,
        method="GET",
        country="GB",
        source="direct",
        dnt=0,
    )
    return tuple(row[c] for c in rollups.CLICK_COLUMNS)


@pytest.fixture
def filled(db_path: Path) -> tuple[Path, dict[str, int]]:
    conn = catalog.open_db(str(db_path))
    ids = {
        "a": catalog.create_link(
            conn, {"url": "https://e.example/a", "campaign": "spring"}, slug="a"
        )["id"],
        "b": catalog.create_link(
            conn, {"url": "https://e.example/b", "tags": ["x", "y"]}, slug="b"
        )["id"],
    }
    rows = [click(ids["a"], T0 + i * 3_600_000) for i in range(30)]  # 30 hours: 2 days
    rows += [click(ids["b"], T0 + 1000, bot="automation")]
    with Transaction(conn):
        rollups.insert_clicks(conn, rows[:20])
    from edge.clicks import _catch_up

    _catch_up(conn)  # the first 20 rolled up, the rest a tail
    with Transaction(conn):
        rollups.insert_clicks(conn, rows[20:])
    conn.close()
    return db_path, ids


def export(db: Path, kind: str, fmt: str, **kw: Any) -> bytes:
    conn = catalog.open_db(str(db))
    out = io.BytesIO()
    filters = exports.Filters(conn, now_s=T0 / 1000 + 10 * 86400, **kw)
    exports.write(out, kind, fmt, conn, filters)
    conn.close()
    return out.getvalue()


def test_links_csv_and_ndjson(filled: tuple[Path, dict[str, int]]) -> None:
    db, ids = filled
    rows = list(csv.DictReader(io.StringIO(export(db, "links", "csv").decode())))
    assert [(r["slug"], r["url"], r["tags"]) for r in rows] == [
        ("a", "https://e.example/a", ""),
        ("b", "https://e.example/b", "x,y"),
    ]
    assert list(rows[0]) == list(exports.LINK_EXPORT_COLUMNS)
    lines = export(db, "links", "ndjson", campaign="spring").splitlines()
    assert [json.loads(x)["slug"] for x in lines] == ["a"]
    assert json.loads(export(db, "links", "ndjson").splitlines()[1])["tags"] == ["x", "y"]


def test_clicks_with_time_and_link_filters(filled: tuple[Path, dict[str, int]]) -> None:
    db, ids = filled
    every = [json.loads(x) for x in export(db, "clicks", "ndjson").splitlines()]
    assert len(every) == 31
    first = every[0]
    assert (first["slug"], first["domain"], first["ts"]) == (
        "a",
        "localhost",
        "2026-01-01T00:00:00.000Z",
    )
    assert first["visitor_id"] == "0001020304050607"
    assert set(first) == set(exports.CLICK_EXPORT_COLUMNS)
    day2 = export(db, "clicks", "ndjson", from_text="2026-01-02", to_text="2026-01-03")
    assert len(day2.splitlines()) == 6  # hours 24..29
    only_b = [json.loads(x) for x in export(db, "clicks", "ndjson", slug="b").splitlines()]
    assert [(c["slug"], c["bot_kind"], c["bot_reason"]) for c in only_b] == [
        ("b", "automation", "linkedge:curl/")
    ]
    spring = export(db, "clicks", "csv", campaign="spring").decode().splitlines()
    assert len(spring) == 31 and spring[0].startswith("id,domain,slug,ts,")


def test_stats_per_link_per_day_are_exact(filled: tuple[Path, dict[str, int]]) -> None:
    db, ids = filled
    rows = list(csv.DictReader(io.StringIO(export(db, "stats", "csv").decode())))
    got = [(r["day"], r["slug"], int(r["clicks"]), int(r["human_clicks"])) for r in rows]
    # rolled-up days and the tail not rolled up yet, added together
    assert got == [
        ("2026-01-01", "a", 24, 24),
        ("2026-01-01", "b", 1, 0),
        ("2026-01-02", "a", 6, 6),
    ]
    only = export(db, "stats", "ndjson", from_text="2026-01-02", slug="a").splitlines()
    assert [json.loads(x)["clicks"] for x in only] == [6]


def test_the_export_command(filled: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    db, _ids = filled
    out = tmp_path / "clicks.ndjson"
    done = cli("export", "clicks", "--format", "ndjson", "-o", str(out), "--link", "a", db=db)
    assert len(out.read_bytes().splitlines()) == 30
    assert "exported 30 clicks rows as ndjson" in done.stderr
    piped = cli("export", "stats", "--from", "-3650d", db=db)
    assert piped.stdout.startswith("day,link_id,domain,slug,clicks,human_clicks\n")  # text mode
    bad = cli("export", "clicks", "--from", "yesterday", db=db, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "from" in bad.stderr
    nolink = cli("export", "clicks", "--link", "zzz", db=db, check=False)
    assert nolink.returncode == 2 and "zzz" in nolink.stderr


def test_an_export_reads_one_snapshot(filled: tuple[Path, dict[str, int]]) -> None:
    db, ids = filled
    conn = catalog.open_db(str(db))
    writer = sqlite3.connect(str(db))
    rows = exports.click_rows(conn, exports.Filters(conn))
    conn.execute("BEGIN")
    first = next(rows)
    writer.execute(
        f"INSERT INTO clicks ({', '.join(rollups.CLICK_COLUMNS)}) VALUES "
        f"({', '.join('?' for _ in rollups.CLICK_COLUMNS)})",
        click(ids["a"], T0),
    )
    writer.commit()
    assert 1 + sum(1 for _ in rows) == 31  # the click written meanwhile is not in it
    conn.execute("COMMIT")
    assert first[0] == 1
    writer.close()
    conn.close()
