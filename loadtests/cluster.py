# loadtests/cluster: several linkedge nodes sharing a PostgreSQL link store (and one
# ClickHouse click sink where clickhouse-server is installed), on this one machine.
#
# Starts a throwaway PostgreSQL (initdb in a tmp dir, as tests/pg_fixtures.py does) and
# ClickHouse (tests/clickhouse_fixture.py), then N `linkedge serve` nodes (each its own
# SQLite copy, --workers W, its own edge and admin ports), and seeds --links links through
# node 0's bulk API. Then:
# - change propagation, idle: --changes changes (a create, then an edit of its URL), each
#   through the next node's API in turn; for every other node, the time from the write's
#   answer until that node's edge serves the change (polled every ms on a keep-alive
#   connection), and the write's own latency (the API call, PostgreSQL included);
# - the cluster's redirect rate: one wrk per node at once (-t1 -c --connections for
#   --duration, one slug per node), while changes keep being made through the nodes'
#   APIs every 0.25 s and their propagation is timed the same way (under load);
# - the clicks: after a graceful stop, what the sink holds (ClickHouse rows, or the sum
#   of the nodes' SQLite rows) against the 3xx answers wrk read (plus the probes'): equal,
#   or more by at most the requests in flight when wrk stopped (one per connection).
# Prints a Markdown table and writes loadtests/results/cluster-latest.json.
#   python -m loadtests.cluster [--nodes 2] [--workers 1] [--duration 10] [--no-clickhouse]
from __future__ import annotations

import argparse
import http.client
import json
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from loadtests import machine
from tests.clickhouse_fixture import ClickHouseServer, database_of, server_binary
from tests.conftest import ServerProcess, init_db
from tests.pg_fixtures import PgServer, _bin_dir

TOKEN = "cluster-bench-token-0123456789abcdef"
RESULTS = Path(__file__).resolve().parent / "results"


class Node:
    def __init__(self, i: int, run_dir: Path, store: str, sink: str | None, workers: int) -> None:
        self.i = i
        self.db = init_db(run_dir / f"node{i}.db")
        args = ["--workers", str(workers), "--link-store", store]
        if sink:
            args += ["--click-sink", sink]
        self.proc = ServerProcess(self.db, *args, env={"LINKEDGE_ADMIN_TOKEN": TOKEN})
        self._edge = http.client.HTTPConnection("127.0.0.1", self.proc.edge_port, timeout=10)
        self.redirects = 0

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.proc.admin_port, timeout=30)
        try:
            conn.request(
                method,
                path,
                body=None if body is None else json.dumps(body),
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, json.loads(data) if data else None
        finally:
            conn.close()

    def location(self, slug: str) -> str | None:
        """The Location this node's edge answers for a slug (None: not a redirect); each
        redirect is a click, counted in `redirects`."""
        for _attempt in range(2):
            try:
                self._edge.request("GET", f"/{slug}", headers={"Host": "localhost"})
                resp = self._edge.getresponse()
                resp.read()
                if resp.status != 302:
                    return None
                self.redirects += 1
                return resp.getheader("location")
            except (OSError, http.client.HTTPException):
                self._edge.close()
                self._edge = http.client.HTTPConnection(
                    "127.0.0.1", self.proc.edge_port, timeout=10
                )
        return None


def propagate(nodes: list[Node], writer: Node, n: int) -> dict[str, Any]:
    """One change through `writer`'s API; how long until every other node serves it."""
    slug = f"chg{n}"
    url = f"https://example.com/{n}"
    t0 = time.monotonic()
    if n % 2 == 0:
        status, body = writer.api("POST", "/api/links", {"url": url, "slug": slug})
        assert status == 201, body
    else:
        slug = f"chg{n - 1}"
        status, body = writer.api("PATCH", f"/api/links/localhost/{slug}", {"url": url})
        assert status == 200, body
    answered = time.monotonic()
    took = []
    for node in nodes:
        if node is writer:
            continue
        while True:
            if node.location(slug) == url:
                took.append(time.monotonic() - answered)
                break
            if time.monotonic() - answered > 10:
                raise RuntimeError(f"node {node.i} did not serve change {n} within 10 s")
            time.sleep(0.001)
    return {"write_s": answered - t0, "served_after_s": took}


def summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    if not values:
        return {}
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(values) * 1000, 1),
        "p95_ms": round(values[min(len(values) - 1, int(len(values) * 0.95))] * 1000, 1),
        "max_ms": round(values[-1] * 1000, 1),
    }


def run_wrk(port: int, slug: str, connections: int, duration_s: float) -> dict[str, Any]:
    script = (
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format(\'{"requests": %d, "status": %d, "connect": %d, '
        '"read": %d, "timeout": %d, "p99_us": %d}\\n\', summary.requests, '
        "summary.errors.status, summary.errors.connect, summary.errors.read, "
        "summary.errors.timeout, latency:percentile(99)))\nend\n"
    )
    lua = Path(tempfile.mkstemp(suffix=".lua")[1])
    lua.write_text(script)
    proc = subprocess.run(
        [
            machine.tool_path("wrk"),
            "-t1",
            f"-c{connections}",
            f"-d{round(duration_s)}s",
            "-H",
            "Host: localhost",
            "-s",
            str(lua),
            f"http://127.0.0.1:{port}/{slug}",
        ],
        capture_output=True,
        text=True,
        timeout=duration_s + 60,
        check=True,
    )
    lua.unlink()
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="edge workers per node")
    p.add_argument("--links", type=int, default=1000)
    p.add_argument("--changes", type=int, default=40, help="timed changes while idle")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of wrk per node")
    p.add_argument("--connections", type=int, default=32, help="wrk connections per node")
    p.add_argument("--no-clickhouse", action="store_true", help="each node keeps its clicks")
    args = p.parse_args()

    run_dir = Path(tempfile.mkdtemp(prefix="linkedge-cluster."))
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    # its own directory under /tmp: the `postgres` user (initdb as root) must reach it
    pg = PgServer(bin_dir, Path(tempfile.mkdtemp(prefix="linkedge-pg.")))
    pg.init()
    pg.start()
    ch = None
    sink = None
    binary = server_binary()
    if binary and not args.no_clickhouse:
        ch = ClickHouseServer(binary, str(run_dir / "ch"))
        ch.start()
        sink = ch.new_database()
    store = pg.create_database()
    nodes: list[Node] = []
    result: dict[str, Any] = {"machine": machine.describe()}
    try:
        started = time.monotonic()
        nodes = [Node(i, run_dir, store, sink, args.workers) for i in range(args.nodes)]
        result["start_s"] = round(time.monotonic() - started, 2)
        for first in range(0, args.links, 1000):
            batch = [
                {"url": f"https://example.com/l{i}", "slug": f"l{i}"}
                for i in range(first, min(args.links, first + 1000))
            ]
            status, body = nodes[0].api("POST", "/api/links/bulk", {"links": batch})
            assert status == 201, body
        idle = [propagate(nodes, nodes[n % len(nodes)], n) for n in range(args.changes)]
        # the rate, with changes made meanwhile
        busy: list[dict[str, Any]] = []
        stop = threading.Event()

        def keep_changing() -> None:
            n = 10_000
            while not stop.is_set():
                busy.append(propagate(nodes, nodes[n % len(nodes)], n))
                n += 1
                stop.wait(0.25)

        for node in nodes:
            assert node.location("l0") == "https://example.com/l0"
        changer = threading.Thread(target=keep_changing, daemon=True)
        wrk_out: list[dict[str, Any]] = [{} for _ in nodes]

        def one(i: int) -> None:
            wrk_out[i] = run_wrk(nodes[i].proc.edge_port, "l0", args.connections, args.duration)

        loads = [threading.Thread(target=one, args=(i,)) for i in range(len(nodes))]
        t0 = time.monotonic()
        changer.start()
        for t in loads:
            t.start()
        for t in loads:
            t.join()
        wall = time.monotonic() - t0
        stop.set()
        changer.join(30)
        requests = sum(w["requests"] for w in wrk_out)
        errors = sum(w["status"] + w["connect"] + w["read"] + w["timeout"] for w in wrk_out)
        result.update(
            {
                "nodes": args.nodes,
                "workers_per_node": args.workers,
                "links": args.links,
                "sink": "clickhouse" if sink else "sqlite per node",
                "idle_write": summary([c["write_s"] for c in idle]),
                "idle_served_after": summary([t for c in idle for t in c["served_after_s"]]),
                "load_write": summary([c["write_s"] for c in busy]),
                "load_served_after": summary([t for c in busy for t in c["served_after_s"]]),
                "wrk": wrk_out,
                "cluster_rps": round(requests / wall),
                "wrk_errors": errors,
            }
        )
    finally:
        reports = []
        for node in nodes:
            node._edge.close()
            code, out, err = node.proc.stop(timeout=120)
            reports.append((code, out.strip().splitlines()[-1] if out.strip() else err[-300:]))
        result["stops"] = reports
    # 3xx read by wrk, and our probes' redirects; a request wrk had sent when it stopped
    # may have been answered (and recorded) without being read: at most one per connection
    served = sum(w["requests"] - w["status"] for w in result.get("wrk", []))
    served += sum(node.redirects for node in nodes)
    in_flight = args.connections * len(nodes)
    if ch is not None and sink is not None:
        stored = int(ch.query("SELECT count() FROM clicks", database_of(sink)).strip())
    else:
        stored = 0
        for node in nodes:
            conn = sqlite3.connect(node.db)
            stored += int(conn.execute("SELECT count(*) FROM clicks").fetchone()[0])
            conn.close()
    result["clicks"] = {"served": served, "stored": stored, "in_flight_max": in_flight}
    if ch is not None:
        ch.stop()
    pg.stop("fast")
    shutil.rmtree(pg.root, ignore_errors=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cluster-latest.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    ok = served <= stored <= served + in_flight and result.get("wrk_errors") == 0
    ok = ok and all(code == 0 for code, _line in result.get("stops", []))
    return 0 if ok else 1


def table(r: dict[str, Any]) -> str:
    def row(name: str, s: dict[str, float]) -> str:
        cells = [s.get(k) for k in ("n", "p50_ms", "p95_ms", "max_ms")]
        return f"| {name} | " + " | ".join(str(c) for c in cells) + " |"

    p99 = ", ".join(f"{w['p99_us'] / 1000:.1f}" for w in r["wrk"])
    lines = [
        f"{r['nodes']} nodes x {r['workers_per_node']} worker(s), {r['links']} links, "
        f"clicks to {r['sink']}; nodes started in {r['start_s']} s",
        "",
        "| | n | p50 ms | p95 ms | max ms |",
        "|---|---|---|---|---|",
        row("write through the API (idle)", r["idle_write"]),
        row("served by another node after (idle)", r["idle_served_after"]),
        row("write through the API (under load)", r["load_write"]),
        row("served by another node after (under load)", r["load_served_after"]),
        "",
        f"cluster rate: {r['cluster_rps']} redirects/s over {r['nodes']} nodes "
        f"({', '.join(str(w['requests']) for w in r['wrk'])} requests; p99 "
        f"{p99} ms), "
        f"{r['wrk_errors']} errors",
        f"clicks: {r['clicks']['served']} served and read, {r['clicks']['stored']} stored "
        f"(at most {r['clicks']['in_flight_max']} more: answered as wrk stopped)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
