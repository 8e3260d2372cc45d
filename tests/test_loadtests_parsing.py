"""The benchmarks' parsers agree with what the server prints (loadtests/common.py).

The zero-loss checks of loadtests/bench.py and workers.py read linkedge's stop line; if
its wording changed, every benchmark run would fail its checks or, worse, read a figure
from the wrong field. The line here is made by the server's own code.
"""

from __future__ import annotations

from pathlib import Path

from admin.runtime import stop_line
from loadtests import common


def test_stop_line_figures_are_read_from_the_servers_own_line() -> None:
    report = {
        "recording": True,
        "unwritten": 3,
        "peak_queue": 5233,
        "max_flush_lag_s": 1.705,
        "workers": {
            "redirects": 10717,
            "captured": 10716,
            "acked": 10700,
            "dropped": 7,
            "queued": 6,
        },
    }
    got = common.parse_stop_line("some log line\n" + stop_line(report) + "\n")
    assert {k: got[k] for k in ("served", "captured", "written", "dropped", "unwritten")} == {
        "served": 10717,
        "captured": 10716,
        "written": 10700,
        "dropped": 7,
        "unwritten": 9,
    }
    assert got["peak_queue"] == 5233
    assert got["max_flush_lag_ms"] == 1705.0


def test_wrk_line_and_metrics_page_parse() -> None:
    text = (
        'noise\nWRK_JSON {"requests": 200, "sent": 201, "duration_us": 2000000, "bytes": 1, '
        '"errors": {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}, '
        '"latency_us": {"p99": 5}}\n'
    )
    r = common.parse_wrk(text, 0, 0.5)
    assert (r["rps"], r["sent"], r["client_cpu_s"]) == (100.0, 201, 0.5)
    page = (
        "# HELP x y\n"
        'linkedge_loop_stalls_total{process="collector",over="5ms"} 4\n'
        'linkedge_loop_lag_recent_max_seconds{process="worker 0"} 0.0031\n'
    )
    m = common.prometheus(page)
    assert m['linkedge_loop_stalls_total{process="collector",over="5ms"}'] == 4
    assert m['linkedge_loop_lag_recent_max_seconds{process="worker 0"}'] == 0.0031


def test_docs_section_is_replaced_in_place(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nkept\n")
    common.replace_docs_section("x.py", "first", page)
    common.replace_docs_section("y.py", "other", page)
    common.replace_docs_section("x.py", "second", page)
    text = page.read_text()
    assert text.count("<!-- x.py: begin -->") == 1
    assert "second" in text and "first" not in text
    assert text.index("kept") < text.index("second") < text.index("other")
