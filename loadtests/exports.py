# loadtests/exports: `linkedge export clicks` of 10M clicks runs in constant memory.
#
# How: a database of N synthetic clicks (one realistic enriched row repeated with growing
# ts and cycling links, written with executemany: the export reads `clicks` only, so no
# rollups are built) is made once per N in loadtests/.cache/exports; then the real CLI
# (`python -m admin.cli export clicks --format F -o FILE`) runs in a child process, and
# its peak RSS (wait4's ru_maxrss), wall time and rows per second are reported for CSV
# and NDJSON, at 1M and 10M clicks: the same peak at both sizes is constant memory.
# `python -m loadtests.exports [--clicks 1e6,1e7]`; `make bench` runs it too.
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
CACHE: Final = ROOT / "loadtests" / ".cache" / "exports"
CHUNK: Final = 200_000
LINKS: Final = 1_000
T0_MS: Final = 1_767_225_600_000


def ensure_db(clicks: int) -> Path:
    sys.path.insert(0, str(ROOT))
    from edge import catalog, rollups
    from edge.db import Transaction

    path = CACHE / f"clicks-{clicks}.db"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    for suffix in ("", "-wal", "-shm"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)
    conn = catalog.open_db(str(tmp))
    with Transaction(conn):
        for i in range(LINKS):
            catalog.create_link(conn, {"url": f"https://example.com/{i}"}, slug=f"l{i}")
    base: dict[str, Any] = dict.fromkeys(rollups.CLICK_COLUMNS)
    base.update(
        method="GET",
        country="GB",
        region="England",
        city="London",
        device_type="desktop",
        os="Windows",
        os_version="10",
        browser="Chrome",
        browser_version="126",
        referrer="https://t.co/abc",
        referrer_host="t.co",
        source="twitter",
        language="en",
        dnt=0,
    )
    cols = rollups.CLICK_COLUMNS
    at_ts, at_link, at_vid = cols.index("ts"), cols.index("link_id"), cols.index("visitor_id")
    template = [base[c] for c in cols]
    sql = f"INSERT INTO clicks ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
    started = time.monotonic()
    for first in range(0, clicks, CHUNK):
        rows = []
        for i in range(first, min(first + CHUNK, clicks)):
            row = template[:]
            row[at_ts] = T0_MS + i * 10
            row[at_link] = 1 + i % LINKS
            row[at_vid] = i.to_bytes(8, "little")
            rows.append(row)
        with Transaction(conn):
            conn.executemany(sql, rows)
        print(f"exports: {first + len(rows):,}/{clicks:,} clicks written", flush=True)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    tmp.replace(path)
    print(f"exports: database of {clicks:,} clicks in {time.monotonic() - started:.0f} s")
    return path


def export_once(db: Path, fmt: str) -> dict[str, Any]:
    out = CACHE / f"out.{fmt}"
    cmd = [sys.executable, "-m", "admin.cli", "export", "clicks", "--format", fmt]
    cmd += ["-o", str(out), "--db", str(db)]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    err = proc.stderr.read().decode() if proc.stderr else ""
    if status != 0:
        raise RuntimeError(f"export failed: {err}")
    rows = int(err.split("exported ", 1)[1].split(" ", 1)[0])
    size = out.stat().st_size
    out.unlink()
    return {
        "format": fmt,
        "rows": rows,
        "seconds": round(wall, 1),
        "rows_per_s": round(rows / wall),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "output_mib": round(size / 2**20),
    }


def run(clicks: int) -> list[dict[str, Any]]:
    sizes = sorted({min(clicks, 1_000_000), clicks})
    results = []
    for n in sizes:
        db = ensure_db(n)
        for fmt in ("csv", "ndjson"):
            r = export_once(db, fmt)
            r["clicks"] = n
            print(
                f"exports: {n:,} clicks as {fmt}: {r['rows_per_s']:,} rows/s, "
                f"peak RSS {r['peak_rss_mib']} MiB, {r['seconds']} s, {r['output_mib']} MiB out",
                flush=True,
            )
            results.append(r)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.exports")
    p.add_argument("--clicks", type=float, default=1e7)
    args = p.parse_args(argv)
    results = run(int(args.clicks))
    out = ROOT / "loadtests" / "results" / "exports-latest.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"exports: wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
