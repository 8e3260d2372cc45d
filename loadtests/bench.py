# loadtests/bench: `make bench` -- linkedge side by side with nginx and uvicorn, with checks.
#
# What it measures, and how:
# - Throughput and latency of five servers answering the same redirects on 127.0.0.1:
#   (a) nginx, 1 worker, `return 302` from a map, access_log off; (b) the same with a
#   buffered access log; (c) uvicorn + Starlette RedirectResponse from a dict (uvloop,
#   httptools, access log off, 1 worker); (d) `linkedge serve` with the full click pipeline
#   (capture, GeoIP + UA enrichment on a realistic City .mmdb, SQLite writes, live counters,
#   X-Forwarded-For trusted from 127.0.0.1); (e) linkedge with --no-record-clicks.
#   Each server is pinned to core 0 with taskset and wrk (-t1 -c64 --latency) to core 1,
#   with loadtests/wrk/redirects.lua cycling over every slug with realistic headers from a
#   few thousand client addresses. Keep-alive rounds and `Connection: close` rounds are
#   interleaved (a b c d e, a b c d e, ...); each server gets a short warm-up first; the
#   report takes the median of the rounds, and each ratio is taken within its round
#   against (b) nginx with access log, then the median of those.
# - Before every measured run the machine must be quiet (no core over 10% busy for 1 s,
#   waiting up to 90 s); the foreign CPU load during the run (busy time that was neither the
#   server, nor wrk, nor this process) and the hypervisor's steal are reported with it. A
#   run with more than --max-foreign cores of foreign load is discarded (kept in the JSON)
#   and run again, up to --retries times.
# - Server CPU per request: utime+stime of the server's process tree (all threads: for
#   linkedge that includes the enrichment and SQLite threads) from /proc over the run, taken
#   once the server has gone idle again (so the last batch's enrichment is included),
#   divided by the requests wrk completed. And all-in: the server's CPU from ready to exit
#   (wait4's rusage, so work deferred past the run, such as rollups written at shutdown,
#   counts too) over every request sent to it.
# - Checks: every answer must be a redirect (wrk's errors.status == 0). After each linkedge
#   run the server is stopped with SIGTERM; its summary line must say 0 dropped and 0
#   unwritten, rows in `clicks` must equal the clicks it captured, and lie between the 3xx
#   answers wrk read and the requests wrk wrote (the difference is at most the requests in
#   flight when wrk stopped; with the one probe request of the parity check counted).
#   How far behind the writer was: the age of the newest row in `clicks`, sampled every
#   0.25 s from a separate read-only connection during the run (max and median), plus the
#   peak queue depth when the server's stop line reports it.
# - Soak: one 60 s run of (d) with the same checks, to see whether its rate is sustainable
#   (the writer's lag stays bounded, nothing is dropped) or only a burst the queue absorbs.
# - Scale figures (loadtests/scale.py) and the pipeline alone (loadtests/pipeline.py).
# - Bot labels: recall, false positives and uncached cost on public corpora
#   (loadtests/bots.py); a 10M-click export's rate and memory (loadtests/exports.py).
# Results: loadtests/results/bench-<UTC time>.json, latest.json, latest.md, and (for a full
# run) docs/benchmarks.md. `--quick` is a ~2 minute smoke run of every part.
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Final

from loadtests import common, machine, report, workload
from loadtests.common import (
    CACHE,
    CLIENT_IPS,
    GEO_NETWORKS,
    LISTENING,
    RESULTS,
    ROOT,
    SERVER_CORE,
    LagSampler,
    Running,
    Workload,
    counts,
    free_port,
    linkedge_cmd,
    pinned,
    probe,
    run_wrk,
    stop_server,
    wait_for_line,
    wait_idle,
)
from loadtests.common import wait_port as _wait_port
from loadtests.peers import nginx

SERVERS: Final = {
    "a": "nginx, access_log off",
    "b": "nginx, buffered access_log",
    "c": "uvicorn + Starlette",
    "d": "linkedge, full pipeline",
    "e": "linkedge, --no-record-clicks",
}
BASELINE: Final = "b"

# --- servers ----------------------------------------------------------------------------


def _pinned(cmd: list[str]) -> list[str]:
    return pinned(cmd, SERVER_CORE)


def start_server(key: str, wl: Workload, run_dir: Path) -> Running:
    work = run_dir / key
    work.mkdir(parents=True, exist_ok=True)
    out = (work / "stdout.log").open("wb")
    err = (work / "stderr.log").open("wb")
    if key in ("a", "b"):
        port = free_port()
        conf = nginx.write_config(work, wl.peer_files["map"], port, access_log=key == "b")
        cmd = _pinned([machine.tool_path("nginx"), "-c", str(conf), "-p", str(work)])
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True)
        _wait_port(port, proc)
        return Running(key, proc, port, work)
    if key == "c":
        port = free_port()
        cmd = _pinned(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "loadtests.peers.starlette_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--loop",
                "uvloop",
                "--http",
                _uvicorn_http(),
                "--no-access-log",
                "--workers",
                "1",
                "--log-level",
                "warning",
            ]
        )
        env = {**os.environ, "LOADTESTS_LINKS": str(wl.peer_files["json"])}
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=err, env=env, cwd=ROOT, start_new_session=True
        )
        _wait_port(port, proc)
        return Running(key, proc, port, work)
    db = workload.copy_db(wl.links_db, work / "linkedge.db")
    cmd = [
        *linkedge_cmd(),
        "serve",
        "--db",
        str(db),
        "--edge",
        "127.0.0.1:0",
        "--no-admin-enabled",
        "--trusted-proxy",
        "127.0.0.1/32",
        "--geoip",
        str(wl.mmdb),
    ]
    if key == "e":
        cmd.append("--no-record-clicks")
    proc = subprocess.Popen(_pinned(cmd), stdout=out, stderr=err, start_new_session=True)
    stdout = work / "stdout.log"
    m = wait_for_line(stdout, LISTENING, proc, timeout_s=120)
    running = Running(key, proc, int(m.group(1)), work, db=db, stdout=stdout)
    running.extra["cmd"] = " ".join(cmd)
    return running


def _uvicorn_http() -> str:
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    return "httptools"


# --- probes -----------------------------------------------------------------------------


# --- wrk -----------------------------------------------------------------------------------


def measured_run(
    run: Running,
    wl: Workload,
    mode: str,
    duration_s: float,
    warmup_s: float,
    connections: int,
    round_no: int,
    quiet_wait_s: float = 90.0,
) -> dict[str, Any]:
    """Warm up, wait for quiet, run wrk, account CPU; the server keeps running."""
    pids = machine.tree_pids(run.proc.pid)
    offset = (round_no * 7919 + ord(run.key)) % wl.requests_in_cycle
    seen = {"requests": 0, "sent": 0, "status_errors": 0}

    def count(r: dict[str, Any]) -> None:
        seen["requests"] += r["requests"]
        seen["sent"] += r["sent"]
        seen["status_errors"] += r["errors"]["status"]

    if warmup_s > 0:
        count(run_wrk(run.port, wl.wrk_data, mode, warmup_s, connections, offset + 1000))
    wait_idle(pids)
    quiet = machine.wait_quiet(max_wait_s=quiet_wait_s)
    sampler = LagSampler(run.db) if run.db is not None and run.key == "d" else None
    cpu0 = machine.cpu_times()
    srv0 = machine.process_cpu_s(pids)
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    if sampler is not None:
        sampler.start()
    r = run_wrk(run.port, wl.wrk_data, mode, duration_s, connections, offset)
    elapsed = time.monotonic() - t0
    lag = sampler.stop() if sampler is not None else None
    cpu1 = machine.cpu_times()
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    srv_at_end = machine.process_cpu_s(pids)
    srv1 = wait_idle(pids)
    count(r)
    server_cpu = srv1 - srv0
    self_cpu = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    d = cpu1["cpu"] - cpu0["cpu"]
    core = cpu1[f"cpu{SERVER_CORE}"] - cpu0[f"cpu{SERVER_CORE}"]
    hz = machine.CLK_TCK
    # Within the wrk window only (the server's CPU after it, draining the last clicks, is
    # not in the machine's figures either).
    foreign = d.busy / hz - (srv_at_end - srv0) - r["client_cpu_s"] - self_cpu
    result = {
        "server": run.key,
        "mode": mode,
        "round": round_no,
        "rps": round(r["rps"], 1),
        "requests": r["requests"],
        "sent": r["sent"],
        "errors": r["errors"],
        "latency_us": r["latency_us"],
        "server_cpu_s": round(server_cpu, 3),
        "cpu_us_per_req": round(server_cpu / r["requests"] * 1e6, 2) if r["requests"] else None,
        # Everything the server's core did per request, softirq included (this kernel
        # accounts loopback softirq work apart from the task that caused it).
        "core_us_per_req": (
            round((core.busy + core.irq) / hz / r["requests"] * 1e6, 2) if r["requests"] else None
        ),
        "client_cpu_share": round(r["client_cpu_s"] / elapsed, 3),
        "server_core_share": round(server_cpu / elapsed, 3),
        "foreign_cores": round(max(foreign, 0.0) / elapsed, 3),
        "irq_cores": round(d.irq / hz / elapsed, 3),
        "steal_cores": round(d.steal / hz / elapsed, 3),
        "quiet_wait": quiet,
        "writer_lag": lag,
        "_seen": seen,
    }
    return result


def one_server_run(
    key: str,
    wl: Workload,
    run_dir: Path,
    mode: str,
    duration_s: float,
    warmup_s: float,
    connections: int,
    round_no: int,
    quiet_wait_s: float = 90.0,
) -> dict[str, Any]:
    slug = next(iter(wl.targets))
    run = start_server(key, wl, run_dir)
    # CPU spent starting up (loading links, opening GeoIP), left out of the all-in figure.
    cpu_at_ready = machine.process_cpu_s(machine.tree_pids(run.proc.pid))
    try:
        status, location = probe(run.port, slug)
        parity = status == 302 and location == wl.targets[slug]
        result = measured_run(
            run, wl, mode, duration_s, warmup_s, connections, round_no, quiet_wait_s
        )
    finally:
        stopped = stop_server(run)
    result["parity"] = {"status": status, "location_matches": parity}
    seen = result.pop("_seen")
    # All-in CPU per request: from ready to exit (warm-up, run, idle time between them and
    # the graceful stop, which for linkedge writes the clicks and rollups still waiting)
    # over every request written to it. Deferred work is counted here even when it falls
    # after the measured window.
    if "lifetime_cpu_s" in stopped:
        result["allin_cpu_us_per_req"] = round(
            (stopped["lifetime_cpu_s"] - cpu_at_ready) / (seen["sent"] + 1) * 1e6, 2
        )
    checks: dict[str, Any] = {
        "non_redirect_answers": seen["status_errors"],
        "socket_errors": sum(v for k, v in result["errors"].items() if k != "status"),
    }
    ok = seen["status_errors"] == 0 and parity
    if key in ("d", "e"):
        assert run.db is not None
        rows = workload.count_clicks(run.db)
        # 3xx wrk read (errors.status counts >= 400; no request here can get a 2xx), plus
        # the probe; and the requests wrk wrote, plus the probe.
        seen_3xx = seen["requests"] - seen["status_errors"] + 1
        sent = seen["sent"] + 1
        checks.update(
            {
                "rows": rows,
                "wrk_3xx": seen_3xx,
                "wrk_sent": sent,
                "in_flight_at_stop": sent - seen_3xx,
                "server": stopped,
            }
        )
        served = stopped.get("served")
        served_ok = served is not None and seen_3xx <= served <= sent
        checks["served_within_wrk_counts"] = served_ok
        if key == "d":
            loss_ok = (
                served_ok
                and served == rows
                and stopped.get("captured") == rows
                and stopped.get("written") == rows
                and stopped.get("dropped") == 0
                and stopped.get("unwritten") == 0
                and seen_3xx <= rows <= sent
            )
            checks["zero_loss"] = loss_ok
            ok = ok and loss_ok
        else:
            ok = ok and served_ok and rows == 0
        run.db.unlink(missing_ok=True)
        for suffix in ("-wal", "-shm"):
            Path(str(run.db) + suffix).unlink(missing_ok=True)
    if key == "b":
        log = run.work / "access.log"
        checks["access_log_lines"] = sum(1 for _ in log.open("rb")) if log.exists() else 0
        log.unlink(missing_ok=True)
    checks["ok"] = ok
    result["checks"] = checks
    return result


# --- the whole run -------------------------------------------------------------------------


def prepare(args: argparse.Namespace) -> Workload:
    return common.prepare(args.links)


def summarise(runs: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    """Medians per server and per-round ratios to the baseline."""
    out: dict[str, Any] = {}
    mine = [r for r in runs if r["mode"] == mode]
    rounds = sorted({r["round"] for r in mine})
    for key in SERVERS:
        rs = [r for r in mine if r["server"] == key]
        if not rs:
            continue
        ratios, vs_uvicorn = [], []
        for rn in rounds:
            by = {r["server"]: r for r in mine if r["round"] == rn}
            if key in by and BASELINE in by:
                ratios.append(by[key]["rps"] / by[BASELINE]["rps"])
            if key in by and "c" in by:
                vs_uvicorn.append(by[key]["rps"] / by["c"]["rps"])
        out[key] = {
            "label": SERVERS[key],
            "rounds": len(rs),
            "rps": statistics.median(r["rps"] for r in rs),
            "rps_all": [r["rps"] for r in rs],
            "ratio_to_nginx_log": statistics.median(ratios) if ratios else None,
            "ratio_to_uvicorn": statistics.median(vs_uvicorn) if vs_uvicorn else None,
            "p50_us": statistics.median(r["latency_us"]["p50"] for r in rs),
            "p99_us": statistics.median(r["latency_us"]["p99"] for r in rs),
            "p99_max_us": max(r["latency_us"]["p99"] for r in rs),
            "cpu_us_per_req": statistics.median(r["cpu_us_per_req"] for r in rs),
            "core_us_per_req": statistics.median(r["core_us_per_req"] for r in rs),
            "allin_cpu_us_per_req": statistics.median(
                r.get("allin_cpu_us_per_req") or 0.0 for r in rs
            ),
            "foreign_cores_max": max(r["foreign_cores"] for r in rs),
            "steal_cores_max": max(r["steal_cores"] for r in rs),
            "client_cpu_share_max": max(r["client_cpu_share"] for r in rs),
            "checks_ok": all(r["checks"]["ok"] for r in rs),
        }
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.bench",
        description="linkedge vs nginx vs uvicorn+Starlette, with zero-loss checks and scale "
        "figures; writes loadtests/results/ and docs/benchmarks.md.",
        epilog="example:\n  python -m loadtests.bench --quick\n"
        "  python -m loadtests.bench --rounds 5 --duration 20 --only bench",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--links", type=int, default=10_000, help="links served (default 10000)")
    p.add_argument("--rounds", type=int, default=3, help="keep-alive rounds (default 3)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per server")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--close-rounds", type=int, default=3, help="Connection: close rounds")
    p.add_argument("--close-duration", type=float, default=5.0, help="seconds per close run")
    p.add_argument("--servers", default="abcde", help="which servers, e.g. 'bd' (default abcde)")
    p.add_argument(
        "--soak", type=float, default=60.0, help="seconds of one long run of (d); 0: none (60)"
    )
    p.add_argument(
        "--max-foreign",
        type=float,
        default=0.15,
        help="a run with more foreign CPU load than this (in cores) is run again (0.15)",
    )
    p.add_argument("--retries", type=int, default=2, help="reruns of a noisy run (default 2)")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=90.0,
        help="at most this many seconds of waiting for a quiet machine per run (90)",
    )
    p.add_argument(
        "--scale-links",
        default="1e5,1e6",
        help="link counts for the RSS / load-time figures (default 1e5,1e6)",
    )
    p.add_argument(
        "--clicks",
        default="1e6,1e7",
        help="synthetic clicks for the stats latency figures (default 1e6,1e7)",
    )
    p.add_argument(
        "--pipeline-clicks", type=float, default=5e5, help="clicks through the pipeline alone"
    )
    p.add_argument(
        "--only",
        default="bench,pipeline,scale,stats,bots,exports",
        help="parts to run, comma-separated: bench, pipeline, scale, stats, bots, exports",
    )
    p.add_argument("--quick", action="store_true", help="a fast smoke run of every part (~2 min)")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = 1
        args.duration = 3.0
        args.warmup = 1.0
        args.close_rounds = 1
        args.close_duration = 2.0
        args.soak = 0.0
        args.retries = 0
        args.quiet_wait = 10.0
        args.scale_links = "1e4,1e5"
        args.clicks = "1e5"
        args.pipeline_clicks = 5e4
        args.no_docs = True
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parts = {p.strip() for p in args.only.split(",")}
    command = "python -m loadtests.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    machine.ensure_tools()
    machine.ensure_python_packages()
    info = machine.describe()
    print(report.machine_text(info), flush=True)
    started = time.time()
    results: dict[str, Any] = {
        "command": command.strip(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": info,
        "settings": {
            k: getattr(args, k)
            for k in (
                "links",
                "rounds",
                "duration",
                "warmup",
                "connections",
                "close_rounds",
                "close_duration",
                "soak",
                "max_foreign",
                "retries",
                "quiet_wait",
                "quick",
            )
        },
    }
    wl = prepare(args)
    results["workload"] = {
        "links": len(wl.targets),
        "client_ips": CLIENT_IPS,
        "geoip_networks": GEO_NETWORKS,
        "requests_in_cycle": wl.requests_in_cycle,
        "mmdb": wl.mmdb.name,
    }
    run_dir = CACHE / "runs"
    errors: dict[str, str] = {}

    def part(name: str, fn: Any) -> None:
        # A part that breaks (say, an import error while edge/ is being changed) is
        # recorded and reported; the parts already measured are still written.
        try:
            fn()
        except Exception:
            errors[name] = traceback.format_exc()
            print(f"bench: {name} failed:\n{errors[name]}", flush=True)

    if "bench" in parts:
        runs: list[dict[str, Any]] = []
        plan = [("keep", args.duration, rn) for rn in range(args.rounds)]
        plan += [("close", args.close_duration, rn) for rn in range(args.close_rounds)]
        discarded: list[dict[str, Any]] = []
        for mode, duration, rn in plan:
            for key in args.servers:
                for attempt in range(args.retries + 1):
                    print(f"bench: round {rn + 1} {mode:5s} ({key}) {SERVERS[key]}", flush=True)
                    try:
                        r = one_server_run(
                            key,
                            wl,
                            run_dir,
                            mode,
                            duration,
                            args.warmup,
                            args.connections,
                            rn,
                            args.quiet_wait,
                        )
                    except Exception:
                        errors[f"{mode} r{rn + 1} {key}"] = traceback.format_exc()
                        print(errors[f"{mode} r{rn + 1} {key}"], flush=True)
                        r = None
                        break
                    print("       " + report.run_line(r), flush=True)
                    if r["foreign_cores"] <= args.max_foreign or attempt == args.retries:
                        break
                    r["discarded"] = f"foreign load {r['foreign_cores']:.2f} cores"
                    discarded.append(r)
                    print(f"       discarded ({r['discarded']}): running it again", flush=True)
                if r is not None:
                    runs.append(r)
        results["runs"] = runs
        results["discarded_runs"] = discarded
        if args.soak > 0 and "d" in args.servers:
            # One long run of (d): is its rate sustainable, or does the writer fall behind
            # further the longer the load lasts (growing lag, then dropped clicks)?
            print(f"bench: soak: linkedge full pipeline for {args.soak:g} s", flush=True)

            def run_soak() -> None:
                for attempt in range(args.retries + 1):
                    soak = one_server_run(
                        "d",
                        wl,
                        run_dir,
                        "keep",
                        args.soak,
                        args.warmup,
                        args.connections,
                        99,
                        args.quiet_wait,
                    )
                    print("       " + report.run_line(soak), flush=True)
                    if soak["foreign_cores"] <= args.max_foreign or attempt == args.retries:
                        break
                    soak["discarded"] = f"foreign load {soak['foreign_cores']:.2f} cores"
                    discarded.append(soak)
                    print(f"       discarded ({soak['discarded']}): running it again", flush=True)
                results["soak"] = soak

            part("soak", run_soak)
        results["summary"] = {mode: summarise(runs, mode) for mode in ("keep", "close")}

    def run_pipeline() -> None:
        from loadtests import pipeline

        print("bench: click pipeline alone (enrich + write)", flush=True)
        results["pipeline"] = pipeline.run(
            wl.links_db, wl.mmdb, int(args.pipeline_clicks), CACHE / "pipeline"
        )

    def run_scale() -> None:
        from loadtests import scale

        results["scale_links"] = [
            scale.link_load(n, CACHE, wl.mmdb, repeats=1 if args.quick else 3)
            for n in counts(args.scale_links)
        ]

    def run_stats() -> None:
        from loadtests import scale

        runs_per_query = 10 if args.quick else 30
        results["stats"] = [
            scale.stats_latency(n, CACHE, runs=runs_per_query) for n in counts(args.clicks)
        ]

    def run_bots() -> None:
        from loadtests import bots

        print("bench: bot labels (loadtests/bots.py)", flush=True)
        result = bots.run(sample=3000 if args.quick else None)
        print(bots.table(result), flush=True)
        results["bots"] = result

    def run_exports() -> None:
        from loadtests import exports

        print("bench: export of 10M clicks (loadtests/exports.py)", flush=True)
        results["exports"] = exports.run(int(1e5 if args.quick else 1e7))

    for name, fn in (
        ("pipeline", run_pipeline),
        ("scale", run_scale),
        ("stats", run_stats),
        ("bots", run_bots),
        ("exports", run_exports),
    ):
        if name in parts:
            part(name, fn)
    if errors:
        results["errors"] = errors
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    # quick-*, partial-* (some parts or servers only) or bench-* files; only a full run
    # rewrites docs/benchmarks.md.
    full = (
        parts >= {"bench", "pipeline", "scale", "stats"}
        and set(args.servers) >= set(SERVERS)
        and not errors
    )
    results["kind"] = "quick" if args.quick else "bench" if full else "partial"
    if not full:
        args.no_docs = True
    results["targets"] = report.targets(results)
    table = report.markdown(results)
    print("\n" + table, flush=True)
    paths = report.write(results, table, RESULTS, docs=None if args.no_docs else ROOT / "docs")
    for path in paths:
        print(f"bench: wrote {path.relative_to(ROOT)}", flush=True)
    checked = [*results.get("runs", []), results.get("soak")]
    failed = [r for r in checked if r and not r["checks"]["ok"]]
    if failed:
        print(f"bench: {len(failed)} run(s) failed their checks", flush=True)
    if errors:
        print(f"bench: part(s) failed: {', '.join(errors)}", flush=True)
    if failed or errors:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
