"""What case_insensitive_slugs costs the edge's lookup (issue 11 item 11): a
micro-benchmark of LinkTable.answer(), the one answering path, not a test.

    python -m tests.bench_slug_case                 # this checkout's edge/links.py
    python -m tests.bench_slug_case OLD_LINKS.py    # and another version, to compare

e.g. `git show e808f90:edge/links.py > /tmp/links_before.py` for the code before the
option. Each case answers the same prepared request many times (best of several runs) on
a table of 10,000 links per domain: an exact-case hit and a miss (404) on a domain without
the option (what every existing domain does), and on a domain with it, an exact-case hit
and a hit in another case.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from edge import catalog
from edge.http import parse_head

LINKS_PER_DOMAIN = 10_000
CALLS = 200_000
RUNS = 5


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"links_{abs(hash(path))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(db: str) -> None:
    conn = catalog.open_db(db)
    catalog.add_domain(conn, "exact.example")
    catalog.add_domain(conn, "folded.example", case_insensitive_slugs=True)
    with catalog.Transaction(conn):
        for host in ("exact.example", "folded.example"):
            for i in range(LINKS_PER_DOMAIN):
                catalog.create_link(
                    conn, {"url": f"https://example.com/{i}"}, slug=f"Slug{i}", domain=host
                )
    conn.close()


def measure(module: ModuleType, db: str) -> dict[str, float]:
    conn = catalog.open_db(db)
    table = module.LinkTable()
    table.apply(*catalog.changes_since(conn, 0))
    cases = {
        "exact domain, hit": (b"exact.example", b"/Slug77"),
        "exact domain, miss (404)": (b"exact.example", b"/nope"),
        "folding domain, exact-case hit": (b"folded.example", b"/Slug77"),
        "folding domain, other-case hit": (b"folded.example", b"/SLUG77"),
    }
    out: dict[str, float] = {}
    for name, (host, path) in cases.items():
        parsed = parse_head(b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        assert parsed is not None
        req = parsed[0]
        answer = table.answer
        now = time.time()
        best = float("inf")
        for _ in range(RUNS):
            start = time.perf_counter()
            for _ in range(CALLS):
                answer(req, now)
            best = min(best, time.perf_counter() - start)
        out[name] = best / CALLS * 1e9
    return out


def main(paths: list[str]) -> None:
    here = str(Path(__file__).resolve().parents[1] / "edge" / "links.py")
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "bench.db")
        build(db)
        results = {path: measure(load(path), db) for path in [here, *paths]}
    names = list(next(iter(results.values())))
    print(f"{'ns per answer()':34}" + "".join(f"{Path(p).name:>18}" for p in results))
    for name in names:
        print(f"{name:34}" + "".join(f"{r[name]:18.0f}" for r in results.values()))


if __name__ == "__main__":
    main(sys.argv[1:])
