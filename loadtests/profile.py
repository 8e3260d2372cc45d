# loadtests/profile: where linkedge's CPU goes under the benchmark's load (py-spy).
#
# Starts `linkedge serve` exactly as bench.py's run (d) (or (e) with --no-record), pinned to
# core 0, warms it up, then runs wrk on core 1 while `py-spy record` samples every thread of
# the server (non-blocking, 200 Hz, idle frames dropped). The collapsed stacks are saved
# under loadtests/results/ and summarised per thread: share of samples by function "self"
# (the innermost frame), and "inclusive" for the linkedge / geo / sqlite frames that matter.
# py-spy shares core 1 with wrk, so throughput during a profile is lower than in bench.py:
# the shares, not the rates, are what this is for.
#   python -m loadtests.profile [--no-record] [--duration 10] [--mode keep|close]
from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

from loadtests import bench, common, machine


def summarise(collapsed: Path, top: int = 25) -> str:
    """Per-thread self and inclusive shares from py-spy's raw (collapsed) output."""
    per_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith(("thread", "process")) else "?"
        frames = [f for f in frames if not f.startswith(("thread", "process"))]
        if not frames:
            continue
        totals[thread] += count
        per_thread[thread][_short(frames[-1])] += count
        for name in {_short(f) for f in frames}:
            inclusive[thread][name] += count
    all_samples = sum(totals.values()) or 1
    out = []
    for thread, n in totals.most_common():
        out.append(f"\n== {thread}: {n} samples ({n / all_samples:.0%} of all) ==")
        out.append("  self:")
        for name, c in per_thread[thread].most_common(top):
            out.append(f"    {c / n:6.1%}  {name}")
        out.append("  inclusive:")
        for name, c in inclusive[thread].most_common(top):
            out.append(f"    {c / n:6.1%}  {name}")
    return "\n".join(out)


def _short(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)"; line numbers dropped so
    # samples of one function add up.
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(file.split('/')[-2:])})" if file else name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.profile",
        description="py-spy profile of linkedge serve under the benchmark's wrk load.",
    )
    p.add_argument("--no-record", action="store_true", help="profile run (e) instead of (d)")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--mode", default="keep", choices=("keep", "close"))
    p.add_argument("--links", type=int, default=10_000)
    p.add_argument("--rate", type=int, default=200)
    args = p.parse_args(argv)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
    wl = common.prepare(args.links)
    key = "e" if args.no_record else "d"
    run = bench.start_server(key, wl, common.CACHE / "profile")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = common.RESULTS / f"profile-{key}-{args.mode}-{stamp}.txt"
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        common.run_wrk(run.port, wl.wrk_data, args.mode, 2, 64, 0)
        machine.wait_quiet()
        spy = subprocess.Popen(
            [
                machine.tool_path("taskset"),
                "-c",
                common.CLIENT_CORE,
                pyspy,
                "record",
                "--pid",
                str(run.proc.pid),
                "--duration",
                str(int(args.duration)),
                "--rate",
                str(args.rate),
                "--nonblocking",
                "--threads",
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.5)
        r = common.run_wrk(run.port, wl.wrk_data, args.mode, args.duration, 64, 0)
        spy.wait(60)
    finally:
        stopped = common.stop_server(run)
    text = summarise(out)
    summary = out.with_suffix(".summary.txt")
    head = (
        f"linkedge run ({key}), {args.mode}: {r['rps']:,.0f} req/s while profiled "
        f"(py-spy on the client core)\n{stopped.get('stop_line', '')}\n"
    )
    summary.write_text(head + text + "\n")
    print(head + text)
    print(f"\nprofile: collapsed stacks {out}\nprofile: summary {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
