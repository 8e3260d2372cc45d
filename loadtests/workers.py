# loadtests/workers: the edge-workers/collector layout on one core, against nginx (issue 12).
#
# Everything of linkedge (the supervisor, its workers and the collector) is pinned to core
# 0 with taskset, wrk to core 1, as in bench.py; the peer is nginx with its buffered access
# log (bench.py's server (b)) on core 0. Same workload as bench.py (10,000 links, 4,000
# visitors with realistic headers, a 50,000-network City .mmdb). Every linkedge run starts
# a fresh server on a fresh copy of the links database.
#
# Pacing: wrk with a per-connection Lua delay() (loadtests/wrk/redirects.lua, DELAY_MS):
# each of the 64 connections waits C*1000/rate ms on average after each answer, less the
# mean latency of the warm-up at that pacing (so the run gets about the rate asked). It
# is a paced closed loop: a server that answers slowly gets fewer requests, so every
# figure is given at the rate wrk achieved, not the one asked for, and a step whose
# achieved rate is under 90% of the target counts as saturated.
#
# (a) Sustained rate: nginx's closed-loop maximum (64 connections) first, and linkedge's
#     (its burst rate: the search's upper bound). Then paced steps of --step seconds (60):
#     the first at 0.45 x nginx's maximum (or the burst rate, if lower), then a bisection.
#     A step passes when the writer's lag stayed under 2 s through the run (the age of
#     the newest row in `clicks`, sampled every 0.25 s from a read-only connection, and
#     the collector's own max flush lag from its stop line: the oldest click of any write
#     when it committed, over the server's life: warm-up and the drain after wrk stops
#     included) and nothing was lost (rows == captured == written, 0 dropped, 0
#     unwritten, rows between the 302s wrk read and the requests it wrote). Sustained =
#     the highest achieved rate of a passing step; its ratio to nginx's maximum in the
#     same run.
# (b) Latency: paced at 70% of the sustained rate, 64 connections: linkedge (pipeline on)
#     p99 against nginx's p99 at the same pacing, in the same run.
# (c) Hot path: the same pacing with --no-record-clicks: the workers' CPU per redirect
#     (utime+stime of the worker processes from /proc over the wrk window) recording vs not.
# (d) CPU per click by process (workers, collector, supervisor) from the recording run of
#     (b) (the collector's counted once it is idle again: the last batch included), and a
#     capacity model for N cores: rate(1) = 1 / (all processes' CPU per click);
#     rate(N >= 2) = min((N-1) / worker CPU per click, 1 / collector CPU per click).
#     Modelled, not measured, on a machine with fewer cores than N. Beside it, issue 12's
#     lean-pipeline target: the collector's CPU per click <= 0.8x nginx's per request
#     (nginx's from its paced run of (b), the same rate).
# (e) Faults: paced runs with the collector killed (-9) at 40% of the run (the supervisor
#     restarts it, the workers resend): 0 lost; and with a worker killed (-9): the loss
#     (302s wrk read minus rows) next to its bound, ship_interval_s of that worker's traffic
#     (clicks captured and not yet shipped die with it).
# Results: loadtests/results/workers-<time>.json and workers-latest.json (a --quick run:
# workers-quick.json, docs untouched); a full run rewrites its section of
# docs/benchmarks.md (between the "workers.py" markers).
#   python -m loadtests.workers [--quick] [--step 60] [--steps 5] [--workers 1]
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Final

from loadtests import common, machine, workload
from loadtests.common import Running, Workload
from loadtests.peers import nginx

NAME: Final = "workers.py"
LAG_LIMIT_MS: Final = 2000.0
TARGETS: Final = {"sustained": 0.45, "p99": 1.5, "hot_path": 1.15, "lean_pipeline": 0.8}
SATURATED_SHARE: Final = 0.9
SHIP_INTERVAL_S: Final = 0.005  # edge/config.py's default (the bound of a worker's loss)


# --- servers ------------------------------------------------------------------------------


def start_nginx(wl: Workload, work: Path) -> Running:
    work.mkdir(parents=True, exist_ok=True)
    port = common.free_port()
    conf = nginx.write_config(work, wl.peer_files["map"], port, access_log=True)
    cmd = common.pinned([machine.tool_path("nginx"), "-c", str(conf), "-p", str(work)])
    with (work / "stdout.log").open("wb") as out, (work / "stderr.log").open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True)
    common.wait_port(port, proc)
    return Running("nginx", proc, port, work)


def start_linkedge(
    wl: Workload, work: Path, workers: int, record: bool = True, extra: list[str] | None = None
) -> Running:
    options = [
        "--no-admin-enabled",
        "--trusted-proxy",
        "127.0.0.1/32",
        "--geoip",
        str(wl.mmdb),
        "--workers",
        str(workers),
        *(extra or []),
    ]
    if not record:
        options.append("--no-record-clicks")
    return common.start_linkedge("linkedge", wl.links_db, work, options)


# --- one run ------------------------------------------------------------------------------


class Seen:
    """What wrk saw over a server's life (warm-up included): for the zero-loss checks."""

    def __init__(self) -> None:
        self.requests = 0
        self.sent = 0
        self.status_errors = 0
        self.socket_errors = 0

    def add(self, r: dict[str, Any]) -> None:
        self.requests += r["requests"]
        self.sent += r["sent"]
        self.status_errors += r["errors"]["status"]
        self.socket_errors += sum(v for k, v in r["errors"].items() if k != "status")


def load(
    run: Running,
    wl: Workload,
    seen: Seen,
    duration_s: float,
    connections: int,
    rate: float | None,
    offset: int,
    lag: bool = False,
    kill: str | None = None,
    delay: float | None = None,
) -> dict[str, Any]:
    """One wrk run (paced at `rate` with a per-connection pause of `delay` ms, by default
    connections * 1000 / rate; or a closed loop when rate is None) with the CPU of each of
    the server's processes over the wrk window; `kill` ("collector", "worker") sends
    SIGKILL to that process at 40% of the run."""
    if run.db is not None:
        by_role = common.roles(run.proc.pid)
    else:
        by_role = {"server": machine.tree_pids(run.proc.pid)}
    all_pids = [p for pids in by_role.values() for p in pids]
    sampler = common.LagSampler(run.db) if lag and run.db is not None else None
    killed: dict[str, Any] = {}
    timer: threading.Timer | None = None
    if kill is not None:
        pids = by_role["collector" if kill == "collector" else "workers"]

        def do_kill() -> None:
            killed["pid"] = pids[0]
            killed["at_s"] = round(duration_s * 0.4, 2)
            os.kill(pids[0], signal.SIGKILL)

        timer = threading.Timer(duration_s * 0.4, do_kill)
    cpu0 = common.cpu_by_role(by_role)
    core0 = machine.cpu_times()
    if sampler is not None:
        sampler.start()
    if timer is not None:
        timer.start()
    if rate and delay is None:
        delay = common.paced_delay_ms(rate, connections)
    r = common.run_wrk(run.port, wl.wrk_data, "keep", duration_s, connections, offset, delay)
    if timer is not None:
        timer.join()
    core1 = machine.cpu_times()
    seen.add(r)
    cpu_end = common.cpu_by_role(by_role)
    if kill is None:
        common.wait_idle(all_pids)
    cpu1 = common.cpu_by_role(by_role)
    n = r["requests"] or 1
    spent = common.cpu_delta(cpu0, cpu1)
    core = core1[f"cpu{common.SERVER_CORE}"] - core0[f"cpu{common.SERVER_CORE}"]
    out: dict[str, Any] = {
        "target_rps": round(rate, 1) if rate else None,
        "delay_ms": round(delay, 3) if delay is not None else None,
        "rps": round(r["rps"], 1),
        "requests": r["requests"],
        "sent": r["sent"],
        "errors": r["errors"],
        "latency_us": r["latency_us"],
        # over the wrk window, and (the collector's last batch) until the server is idle
        "cpu_s_window": common.cpu_delta(cpu0, cpu_end),
        "cpu_s": spent,
        "cpu_us_per_req": {k: round(v / n * 1e6, 2) for k, v in spent.items()},
        "core_us_per_req": round((core.busy + core.irq) / machine.CLK_TCK / n * 1e6, 2),
        "client_cpu_s": round(r["client_cpu_s"], 3),
    }
    if sampler is not None:
        out["lag"] = sampler.stop()
    if killed:
        out["killed"] = {"process": kill, **killed}
    return out


def finish(run: Running, seen: Seen, record: bool) -> dict[str, Any]:
    """Stop the server; for linkedge compare rows with what wrk saw (the probe counted)."""
    stopped = common.stop_server(run)
    checks: dict[str, Any] = {
        "non_redirect_answers": seen.status_errors,
        "socket_errors": seen.socket_errors,
        "exit": stopped.get("exit"),
    }
    if run.db is None:
        checks["ok"] = seen.status_errors == 0
        return checks
    rows = workload.count_clicks(run.db)
    seen_3xx = seen.requests - seen.status_errors + 1
    sent = seen.sent + 1
    checks.update({"rows": rows, "wrk_3xx": seen_3xx, "wrk_sent": sent, "server": stopped})
    if record:
        loss_ok = (
            stopped.get("captured") == rows
            and stopped.get("written") == rows
            and stopped.get("dropped") == 0
            and stopped.get("unwritten") == 0
            and seen_3xx <= rows <= sent
        )
        checks["zero_loss"] = loss_ok
        checks["lost"] = max(0, seen_3xx - rows)
        checks["ok"] = loss_ok and seen.status_errors == 0
    else:
        checks["ok"] = rows == 0 and seen.status_errors == 0
    common.remove_db(run.db)
    return checks


def server_run(
    wl: Workload,
    work: Path,
    args: argparse.Namespace,
    kind: str,
    duration_s: float,
    rate: float | None,
    offset: int,
    record: bool = True,
    lag: bool = False,
    kill: str | None = None,
) -> dict[str, Any]:
    """Start, probe, warm up (at the same pacing), measure, stop, check."""
    run = (
        start_nginx(wl, work)
        if kind == "nginx"
        else start_linkedge(wl, work, args.workers, record=record)
    )
    seen = Seen()
    try:
        slug = next(iter(wl.targets))
        status, location = common.probe(run.port, slug)
        if status != 302 or location != wl.targets[slug]:
            raise RuntimeError(f"{kind}: /{slug} answered {status} {location}")
        delay = common.paced_delay_ms(rate, args.connections) if rate else None
        if args.warmup > 0:
            warm = load(run, wl, seen, args.warmup, args.connections, rate, offset + 5000)
            if rate and delay is not None:
                # each connection's cycle is its pause plus the answer's latency: take the
                # warm-up's mean latency off the pause so that the run gets the rate asked
                delay = max(0.0, delay - warm["latency_us"]["mean"] / 1000)
        machine.wait_quiet(max_wait_s=args.quiet_wait)
        cpu_before = machine.cpu_times()
        result = load(run, wl, seen, duration_s, args.connections, rate, offset, lag, kill, delay)
        busy = machine.busy_fraction(cpu_before, machine.cpu_times())
        result["machine_busy"] = {k: round(v, 3) for k, v in busy.items()}
        if kill is not None:
            time.sleep(1.0)  # the supervisor's restart, the workers' resend
            after = common.roles(run.proc.pid)
            result["restarted"] = bool(after[kill if kill == "collector" else "workers"]) and (
                result["killed"]["pid"] not in after["collector"] + after["workers"]
            )
    finally:
        checks = finish(run, seen, record)
    result["server"] = kind
    result["record"] = record
    result["checks"] = checks
    lag_ms = [
        (result.get("lag") or {}).get("max_ms"),
        (checks.get("server") or {}).get("max_flush_lag_ms"),
    ]
    result["max_lag_ms"] = max((v for v in lag_ms if v is not None), default=None)
    return result


def line(r: dict[str, Any]) -> str:
    lat = r["latency_us"]
    lag = r.get("max_lag_ms")
    target = f" (asked {r['target_rps']:,.0f}/s)" if r.get("target_rps") else ""
    return (
        f"{r['server']:8s} {r['rps']:>9,.0f} req/s{target}, p50 {lat['p50'] / 1000:.2f} ms, "
        f"p99 {lat['p99'] / 1000:.2f} ms"
        + (f", lag max {lag / 1000:.2f} s" if lag is not None else "")
        + f", checks {'ok' if r['checks']['ok'] else 'FAILED'}"
    )


# --- the parts ----------------------------------------------------------------------------


def step_passes(r: dict[str, Any]) -> bool:
    lag = r.get("max_lag_ms")
    return bool(r["checks"]["ok"]) and lag is not None and lag < LAG_LIMIT_MS


def sustained(
    wl: Workload, work: Path, args: argparse.Namespace, nginx_max: float, burst: float
) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    lo, hi = 0.0, burst * 1.05
    target = min(TARGETS["sustained"] * nginx_max, hi)
    for i in range(args.steps):
        print(f"workers: (a) sustained, step {i + 1}: paced at {target:,.0f}/s", flush=True)
        r = server_run(wl, work / "step", args, "linkedge", args.step, target, 11 * i, lag=True)
        r["passed"] = step_passes(r)
        r["saturated"] = r["rps"] < SATURATED_SHARE * target
        print("         " + line(r) + (" PASS" if r["passed"] else " FAIL"), flush=True)
        steps.append(r)
        # a passing step's achieved rate is sustained; a target it fell short of (the
        # HTTP side saturated) or failed is the new ceiling
        if r["passed"]:
            lo = max(lo, r["rps"])
        if not r["passed"] or r["saturated"]:
            hi = target
        else:
            lo = max(lo, target)
        target = (lo + hi) / 2 if lo > 0 else hi / 2
    passing = [s for s in steps if s["passed"]]
    best = max((s["rps"] for s in passing), default=0.0)
    return {
        "steps": steps,
        "sustained_rps": best,
        "ratio_to_nginx": round(best / nginx_max, 3) if nginx_max else None,
    }


def capacity(per_click_us: dict[str, float], cores: list[int]) -> list[dict[str, Any]]:
    """The model: workers on N-1 cores, the collector on one (N >= 2); all on one core."""
    w = per_click_us.get("workers", 0.0)
    c = per_click_us.get("collector", 0.0)
    s = per_click_us.get("supervisor", 0.0)
    out = []
    for n in cores:
        if n == 1:
            rate = 1e6 / (w + c + s) if w + c + s else 0.0
            bound = "one core shared"
        else:
            by_workers = (n - 1) * 1e6 / w if w else math.inf
            by_collector = 1e6 / c if c else math.inf
            rate = min(by_workers, by_collector)
            bound = "workers" if by_workers <= by_collector else "collector"
        out.append({"cores": n, "workers": max(1, n - 1), "rps": round(rate), "bound": bound})
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def verdict(value: float | None, target: float, higher_is_better: bool) -> str:
    if value is None:
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "PASS" if ok else "FAIL"


def table(res: dict[str, Any]) -> str:
    m = res["machine"]
    rows = [
        f"Machine: {m['cpu_model']}, {m['cores']} cores; linkedge ({res['settings']['workers']} "
        f"worker(s) + collector + supervisor) and nginx on core 0, wrk on core 1; "
        f"{res['settings']['connections']} connections; steps of {res['settings']['step']:g} s; "
        f"load average at start {res['loadavg_at_start'][0]}.",
        "",
        "| figure | linkedge | nginx (access log) | ratio | target | result |",
        "|---|---|---|---|---|---|",
    ]
    a = res.get("sustained") or {}
    nmax = res.get("nginx_max", {}).get("rps")
    if a:
        rows.append(
            f"| (a) sustained rate (lag < 2 s, 0 lost) | {a['sustained_rps']:,.0f}/s | "
            f"{nmax:,.0f}/s (max) | {a['ratio_to_nginx']}x | >= 0.45x | "
            f"{verdict(a['ratio_to_nginx'], TARGETS['sustained'], True)} |"
        )
    if "burst" in res:
        rows.append(
            f"| burst rate (closed loop; max lag) | {res['burst']['rps']:,.0f}/s "
            f"(lag {(res['burst'].get('max_lag_ms') or 0) / 1000:.1f} s) | {nmax:,.0f}/s | "
            f"{ratio(res['burst']['rps'], nmax)}x | (info) | |"
        )
    b = res.get("latency") or {}
    if b:
        basis = res.get("paced_basis", "70% of the sustained rate")
        rows.append(
            f"| (b) p99 at {basis} ({b['linkedge']['rps']:,.0f} vs "
            f"{b['nginx']['rps']:,.0f} req/s) | {b['linkedge']['latency_us']['p99'] / 1000:.2f} ms"
            f" | {b['nginx']['latency_us']['p99'] / 1000:.2f} ms | {b['p99_ratio']}x | <= 1.5x | "
            f"{verdict(b['p99_ratio'], TARGETS['p99'], False)} |"
        )
    c = res.get("hot_path") or {}
    if c:
        rows.append(
            f"| (c) worker CPU per redirect, recording vs not | {c['record_us']:.1f} us | "
            f"{c['no_record_us']:.1f} us (no record) | {c['ratio']}x | <= 1.15x | "
            f"{verdict(c['ratio'], TARGETS['hot_path'], False)} |"
        )
    d = res.get("per_click_us") or {}
    if d:
        parts = ", ".join(f"{k} {v:.1f} us" for k, v in d.items())
        nginx_cpu = (res.get("latency") or {}).get("nginx", {}).get("cpu_us_per_req", {})
        rows.append(
            f"| (d) CPU per click by process | {parts} | "
            f"{nginx_cpu.get('server', 0):.1f} us | | (info) | |"
        )
        lean = ratio(d.get("collector"), nginx_cpu.get("server"))
        rows.append(
            f"| collector CPU per click vs nginx's per request (the lean pipeline) | "
            f"{d.get('collector', 0):.1f} us | {nginx_cpu.get('server', 0):.1f} us | {lean}x | "
            f"<= 0.8x | {verdict(lean, TARGETS['lean_pipeline'], False)} |"
        )
    for key, label in (("collector_kill", "collector"), ("worker_kill", "a worker")):
        e = (res.get("faults") or {}).get(key)
        if not e:
            continue
        ch = e["checks"]
        if key == "collector_kill":
            rows.append(
                f"| (e) {label} killed (-9) mid-run | {ch.get('rows')} rows, "
                f"{ch.get('wrk_3xx')} 302s, lost {ch.get('lost')} | | | 0 lost | "
                f"{'PASS' if ch.get('zero_loss') else 'FAIL'} |"
            )
        else:
            rows.append(
                f"| (e) {label} killed (-9) mid-run | lost {e['lost']} (bound {e['bound']}) | "
                f"| | <= bound | {'PASS' if e['lost'] <= e['bound'] else 'FAIL'} |"
            )
    model = res.get("capacity") or []
    if model:
        rows += [
            "",
            f"Capacity model (modelled, not measured: this machine has {m['cores']} cores):",
            "",
            "| cores | workers | redirects/s | bound by |",
            "|---|---|---|---|",
        ]
        rows += [f"| {x['cores']} | {x['workers']} | {x['rps']:,} | {x['bound']} |" for x in model]
    return "\n".join(rows)


def docs_text(res: dict[str, Any] | None, command: str) -> str:
    about = (
        "(`make bench-workers`; `--quick` for a short smoke run that leaves this page "
        "alone.) How it measures: the header of loadtests/workers.py. Pacing is wrk's "
        "per-connection Lua `delay()` (loadtests/wrk/redirects.lua), calibrated on each "
        "server's warm-up; every rate shown is the one wrk achieved. Targets (issue 12): "
        "sustained rate (writer lag under 2 s through each 60 s step, 0 lost) >= 0.45x "
        "nginx with its access log; p99 at 70% of it <= 1.5x nginx's at the same pacing; "
        "a worker's CPU per redirect recording <= 1.15x without; the collector's CPU per "
        "click <= 0.8x nginx's per request; kill -9 of the collector "
        "loses nothing, of a worker at most ship_interval_s of its traffic."
    )
    model = (
        "Capacity model for N cores, from the CPU per click of each process: all on one "
        "core, rate(1) = 1 / (workers + collector + supervisor CPU per click); with N >= 2, "
        "N-1 workers and the collector on its own core, rate(N) = min((N-1) / worker CPU "
        "per click, 1 / collector CPU per click). Scaling is modelled, not measured: the "
        "machines this ran on have 2 cores (kernel networking time, counted on the core "
        "but not in any process, is left out; so is the SQLite write lock's limit)."
    )
    head = [
        "## Edge workers and the collector on one core (loadtests/workers.py, issue 12)",
        "",
        "```",
        command,
        "```",
        "",
        textwrap.fill(about, 90),
        "",
        textwrap.fill(model, 90),
        "",
    ]
    if res is None:
        return "\n".join([*head, "Not yet measured on a quiet machine."])
    return "\n".join([*head, f"Run {res['started']} - {res['finished']}.", "", table(res), ""])


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.workers",
        description="linkedge's workers + collector on one core vs nginx with its access log: "
        "sustained rate, paced p99, hot path, CPU per process, capacity model, faults.",
    )
    p.add_argument("--links", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=1, help="edge workers (default 1)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--step", type=float, default=60.0, help="seconds per sustained step (60)")
    p.add_argument("--steps", type=int, default=5, help="sustained steps (default 5)")
    p.add_argument("--max-duration", type=float, default=10.0, help="closed-loop runs (10 s)")
    p.add_argument("--latency-duration", type=float, default=30.0, help="paced runs (30 s)")
    p.add_argument("--fault-duration", type=float, default=20.0, help="fault runs (20 s)")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--quiet-wait", type=float, default=30.0)
    p.add_argument("--only", default="a,b,c,e", help="parts: a,b,c,e (d comes with b)")
    p.add_argument("--quick", action="store_true", help="short steps: a smoke run (~2 min)")
    p.add_argument("--no-docs", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.step, args.steps = 4.0, 2
        args.max_duration, args.latency_duration, args.fault_duration = 3.0, 3.0, 4.0
        args.warmup, args.quiet_wait, args.no_docs = 1.0, 2.0, True
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parts = {p.strip() for p in args.only.split(",")}
    command = "python -m loadtests.workers " + " ".join(sys.argv[1:] if argv is None else argv)
    machine.ensure_tools()
    common.pin_self(common.CLIENT_CORE)
    res: dict[str, Any] = {
        "command": command.strip(),
        "started": common.utc_now(),
        "machine": machine.describe(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "settings": {k: v for k, v in vars(args).items() if k != "only"},
        "targets": TARGETS,
    }
    wl = common.prepare(args.links)
    work = common.CACHE / "workers"
    print("workers: nginx (access log), closed loop", flush=True)
    nmax = server_run(wl, work / "nginx", args, "nginx", args.max_duration, None, 1)
    print("         " + line(nmax), flush=True)
    res["nginx_max"] = nmax
    print("workers: linkedge, closed loop (burst rate)", flush=True)
    burst = server_run(wl, work / "burst", args, "linkedge", args.max_duration, None, 2, lag=True)
    print("         " + line(burst), flush=True)
    res["burst"] = burst
    ok = nmax["checks"]["ok"] and burst["checks"]["ok"]
    rate = 0.0
    if "a" in parts:
        res["sustained"] = sustained(wl, work, args, nmax["rps"], burst["rps"])
        rate = 0.7 * res["sustained"]["sustained_rps"]
        ok = ok and all(s["checks"]["ok"] for s in res["sustained"]["steps"])
    basis = "70% of the sustained rate"
    if not rate:  # (a) not run, or no step passed: 70% of the target rate instead
        rate = 0.7 * TARGETS["sustained"] * nmax["rps"]
        basis = "70% of 0.45x nginx's maximum (no sustained rate measured)"
    res["paced_rps"] = round(rate, 1)
    res["paced_basis"] = basis
    if "b" in parts or "c" in parts:
        print(f"workers: (b)(c)(d) paced at {rate:,.0f}/s", flush=True)
        lk = server_run(wl, work / "paced", args, "linkedge", args.latency_duration, rate, 3)
        print("         " + line(lk), flush=True)
        ng = server_run(wl, work / "nginx", args, "nginx", args.latency_duration, rate, 3)
        print("         " + line(ng), flush=True)
        ok = ok and lk["checks"]["ok"] and ng["checks"]["ok"]
        res["latency"] = {
            "linkedge": lk,
            "nginx": ng,
            "p99_ratio": ratio(lk["latency_us"]["p99"], ng["latency_us"]["p99"]),
        }
        per_click = {k: v for k, v in lk["cpu_us_per_req"].items() if k != "other"}
        res["per_click_us"] = per_click
        res["capacity"] = capacity(per_click, [1, 2, 4, 8])
        if "c" in parts:
            nr = server_run(
                wl, work / "norecord", args, "linkedge", args.latency_duration, rate, 3, False
            )
            print("         " + line(nr) + " (--no-record-clicks)", flush=True)
            ok = ok and nr["checks"]["ok"]
            rec_us = lk["cpu_us_per_req"]["workers"]
            no_us = nr["cpu_us_per_req"]["workers"]
            res["hot_path"] = {
                "record_us": rec_us,
                "no_record_us": no_us,
                "ratio": ratio(rec_us, no_us),
                "no_record_run": nr,
            }
    if "e" in parts:
        faults: dict[str, Any] = {}
        for kill in ("collector", "worker"):
            print(f"workers: (e) {kill} killed (-9) at 40% of a paced run", flush=True)
            r = server_run(
                wl, work / "fault", args, "linkedge", args.fault_duration, rate, 4, kill=kill
            )
            ch = r["checks"]
            if kill == "worker":
                r["lost"] = max(0, ch["wrk_3xx"] - ch["rows"])
                per_worker = r["rps"] / max(1, args.workers)
                r["bound"] = math.ceil(per_worker * SHIP_INTERVAL_S)
                print(
                    "         " + line(r) + f"; lost {r['lost']} (bound {r['bound']})", flush=True
                )
            else:
                print("         " + line(r), flush=True)
                ok = ok and ch["ok"]
            faults[f"{kill}_kill"] = r
        res["faults"] = faults
    res["finished"] = common.utc_now()
    text = table(res)
    print("\n" + text, flush=True)
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    data = json.dumps(res, indent=2, default=str) + "\n"
    if args.quick:
        paths = [common.RESULTS / "workers-quick.json"]
    else:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        paths = [common.RESULTS / f"workers-{stamp}.json", common.RESULTS / "workers-latest.json"]
    for path in paths:
        path.write_text(data)
        print(f"workers: wrote {path.relative_to(common.ROOT)}", flush=True)
    if not args.no_docs:
        page = common.replace_docs_section(NAME, docs_text(res, res["command"]))
        print(f"workers: wrote {page.relative_to(common.ROOT)}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
