# loadtests/fuzz: coverage-guided fuzzing (atheris, libFuzzer) of the request parser and
# the URL/host/slug validators, for a bounded time.
#
# The invariant is h11's: whatever the bytes, the parser gives a request, "need more", or
# its one protocol error (BadRequest); the validators give a value or a LinkedgeError
# subclass. Any other exception is a failure: its input and traceback are saved under
# loadtests/results/fuzz-crashes/ (one file per distinct failure: exception type and the
# innermost frame in edge/), fuzzing goes on so one run reports every bug it reaches, and
# the run fails. On top of that:
# - http: the same bytes fed in random pieces (HeadScanner, then parse_head; BodyReader
#   piece by piece) must give what they give in one piece: the same request, the same end
#   offset, the same body, or a BadRequest both ways. The scanner's work stays linear
#   (`examined` <= bytes + 4 per read).
# - urls-safe: what the validators return must be safe to put in a header and stable: pure
#   ASCII without spaces or control characters, a destination starting http:// or https://
#   within MAX_URL_LENGTH, and normalizing the result again gives the result (an edit that
#   resends a stored URL does not change it).
#
# Each target runs in its own process (atheris.Fuzz() never returns); the parent parses
# libFuzzer's last status line (executions, `cov` = covered edges, `ft` = features) and
# lists the crash files. A corpus per target lives in loadtests/.cache/fuzz/ (it grows from
# run to run) and starts from seeds written here: valid requests, bodies, and heads at the
# size limits, since limits are where parsers break.
#
#   python -m loadtests.fuzz --seconds 60                 # every target, 60 s each
#   python -m loadtests.fuzz --targets http --seconds 10 --json-out /tmp/fuzz.json
#   python -m loadtests.fuzz --run http -- -runs=1000      # one target, libFuzzer flags
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

try:
    import atheris
except ImportError:  # reported as a skip by main(); the module still imports
    atheris = None

# --- the code under test: every import of it is here (the restructuring may move these) ---
with atheris.instrument_imports() if atheris is not None else contextlib.nullcontext():
    from edge.errors import LinkedgeError
    from edge.http import MAX_HEAD_BYTES, BadRequest, BodyReader, HeadScanner, parse_head
    from edge.urls import MAX_URL_LENGTH, normalize_destination, normalize_host, validate_slug

ROOT: Final = Path(__file__).resolve().parent.parent
CRASHES: Final = ROOT / "loadtests" / "results" / "fuzz-crashes"
CORPUS: Final = ROOT / "loadtests" / ".cache" / "fuzz"
TARGETS: Final = ("http", "urls", "urls-safe")
# The http target's inputs reach past the 16 KiB head limit and the chunk-line cap.
MAX_LEN: Final = {"http": 20_000, "urls": 9_000, "urls-safe": 9_000}
_REQUEST_FIELDS: Final = (
    "method",
    "target",
    "path",
    "query",
    "http11",
    "keep_alive",
    "host",
    "headers",
    "user_agent",
    "referer",
    "accept_language",
    "forwarded_for",
    "forwarded",
    "content_length",
    "chunked",
    "expect_continue",
    "prefetch",
    "dnt",
    "gpc",
)
_UNSAFE_CHARS: Final = re.compile(r"[\x00-\x20\x7f]")


# --- the http target -------------------------------------------------------------------------
# Input framing (not FuzzedDataProvider, so that seeds are easy to write by hand):
#   byte 0: number of split points (mod 7); then 2 bytes per split point (a fraction of the
#   length, 0..65535); then 3 bytes of body limit (mod 131072); the rest is the bytes sent.


def _frame(payload: bytes, splits: tuple[int, ...] = (), limit: int = 65536) -> bytes:
    out = bytes([len(splits)])
    for s in splits:
        out += s.to_bytes(2, "big")
    return out + limit.to_bytes(3, "big") + payload


def _unframe(data: bytes) -> tuple[list[int], int, bytes]:
    if not data:
        return [], 65536, b""
    n = data[0] % 7
    pos = 1
    fracs = []
    for _ in range(n):
        fracs.append(int.from_bytes(data[pos : pos + 2], "big"))
        pos += 2
    limit = int.from_bytes(data[pos : pos + 3], "big") % 131072
    return fracs, limit, data[pos + 3 :]


def _request_fields(req: Any) -> tuple[Any, ...]:
    return tuple(getattr(req, name) for name in _REQUEST_FIELDS)


def _cuts(fracs: list[int], size: int) -> list[int]:
    return sorted({f * size // 65535 for f in fracs} | {size})


def fuzz_http(data: bytes) -> None:
    fracs, limit, buf = _unframe(data)
    # One piece: "need more" (None), a request, or BadRequest. Anything else propagates.
    try:
        whole = parse_head(buf)
    except BadRequest:
        whole_bad = True
        whole = None
    else:
        whole_bad = False
    # The same bytes in pieces, as the server sees them: the scanner on a growing buffer,
    # then one parse once it finds the end.
    pending = bytearray()
    scanner = HeadScanner()
    calls = 0
    piece_result: tuple[Any, int] | None = None
    piece_bad = False
    start = 0
    for cut in _cuts(fracs, len(buf)):
        pending += buf[start:cut]
        start = cut
        calls += 1
        try:
            end = scanner.advance(pending)
            if end >= 0:
                piece_result = parse_head(pending)
                if piece_result is None:
                    raise AssertionError("the scanner found a head end that parse_head did not")
                if piece_result[1] != end:
                    raise AssertionError(
                        f"scanner and parse_head disagree: {end} vs {piece_result[1]}"
                    )
                break
        except BadRequest:
            piece_bad = True
            break
    if scanner.examined > len(pending) + 4 * calls:
        raise AssertionError(f"scanner work not linear: {scanner.examined} of {len(pending)} bytes")
    if whole is not None:
        req, end = whole
        if piece_bad or piece_result is None:
            got = "BadRequest" if piece_bad else "need more"
            raise AssertionError(
                f"a head that parses in one piece is refused in pieces: {got}, head end {end}, "
                f"pieces end at {_cuts(fracs, len(buf))}"
            )
        if _request_fields(piece_result[0]) != _request_fields(req) or piece_result[1] != end:
            raise AssertionError("a head parses differently in pieces: fields or end differ")
        if req.chunked or req.content_length:
            _check_body(req, buf, end, fracs, limit)
    elif not whole_bad and piece_result is not None:
        raise AssertionError("a head found in pieces that one piece does not hold: end")


def _body_outcome(req: Any, buf: bytes, end: int, cuts: list[int], limit: int) -> tuple[Any, ...]:
    try:
        reader = BodyReader(req, limit)
    except BadRequest as exc:
        return ("bad", exc.status)
    pos = end
    try:
        for cut in cuts:
            if cut <= pos:
                continue
            piece = buf[pos:cut]
            used = reader.feed(piece, 0)
            if used > len(piece):
                raise AssertionError("BodyReader consumed more than it was given: bytes")
            pos += used
            if reader.done:
                break
            if used != len(piece):
                raise AssertionError("BodyReader left bytes of an unfinished body: unconsumed")
    except BadRequest as exc:
        return ("bad", exc.status)
    if reader.examined > pos - end:
        raise AssertionError("BodyReader work not linear: examined more than consumed")
    return ("done", reader.body, pos) if reader.done else ("more",)


def _check_body(req: Any, buf: bytes, end: int, fracs: list[int], limit: int) -> None:
    size = len(buf)
    one = _body_outcome(req, buf, end, [size], limit)
    cuts = sorted({end + f * (size - end) // 65535 for f in fracs} | {size})
    many = _body_outcome(req, buf, end, cuts, limit)
    if one != many:
        raise AssertionError(f"a body reads differently in pieces: {one[:2]!r} vs {many[:2]!r}")


# --- the validators --------------------------------------------------------------------------


def _text(data: bytes) -> str:
    """Any str, lone surrogates included: argv decodes undecodable bytes to them."""
    if not data:
        return ""
    mode, rest = data[0] % 3, data[1:]
    if mode == 0:
        return rest.decode("latin-1")
    if mode == 1:
        return rest.decode("utf-8", "surrogateescape")
    return (
        rest.decode("utf-16-le", "surrogatepass")
        if len(rest) % 2 == 0
        else rest.decode("utf-8", "replace")
    )


def _validate(fn: Callable[[str], str], text: str) -> str | None:
    try:
        return fn(text)
    except LinkedgeError:
        return None


def _output_of(fn: Callable[[str], str], text: str) -> str | None:
    """What a validator returns; None when it raises anything (the urls target reports
    exceptions other than LinkedgeError, this one judges outputs only)."""
    try:
        return fn(text)
    except Exception:
        return None


def fuzz_urls(data: bytes) -> None:
    text = _text(data)
    _validate(normalize_destination, text)
    _validate(normalize_host, text)
    _validate(validate_slug, text)


def _header_safe(value: str) -> bool:
    return value.isascii() and not _UNSAFE_CHARS.search(value)


def fuzz_urls_safe(data: bytes) -> None:
    text = _text(data)
    url = _output_of(normalize_destination, text)
    if url is not None:
        if not _header_safe(url):
            raise AssertionError(f"a destination unsafe in a Location header: {url!r}")
        if not url.startswith(("http://", "https://")) or len(url) > MAX_URL_LENGTH:
            raise AssertionError(f"a destination outside the rules: {url[:200]!r}")
        again = _output_of(normalize_destination, url)
        if again != url:
            raise AssertionError(f"normalizing {url!r} again gives {again!r}")
    host = _output_of(normalize_host, text)
    if host is not None:
        if not host or not _header_safe(host) or "/" in host:
            raise AssertionError(f"a host unsafe in a header or a URL: {host!r}")
        again = _output_of(normalize_host, host)
        if again != host:
            raise AssertionError(f"normalizing host {host!r} again gives {again!r}")
    slug = _output_of(validate_slug, text)
    if slug is not None and (slug != text or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", slug)):
        raise AssertionError(f"a slug outside [A-Za-z0-9_-]{{1,64}}: {slug!r}")


FUZZERS: Final[dict[str, Callable[[bytes], None]]] = {
    "http": fuzz_http,
    "urls": fuzz_urls,
    "urls-safe": fuzz_urls_safe,
}


# --- seeds -----------------------------------------------------------------------------------


def _head(*lines: str, pad_to: int = 0) -> bytes:
    head = "\r\n".join(lines)
    if pad_to:
        head += "\r\nX-Pad: " + "a" * max(0, pad_to - len(head) - 9)
    return head.encode() + b"\r\n\r\n"


def seeds(target: str) -> list[bytes]:
    if target == "http":
        get = _head("GET /launch?utm_source=x HTTP/1.1", "Host: go.example.com", "User-Agent: t")
        chunked = (
            _head("GET /a HTTP/1.1", "Host: h", "Transfer-Encoding: chunked")
            + b"1;ext="
            + b"e" * 200
            + b"\r\nA\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
        )
        sized = _head("GET /a HTTP/1.1", "Host: h", "Content-Length: 5") + b"hello"
        near_limit = _head("GET /a HTTP/1.1", "Host: h", pad_to=MAX_HEAD_BYTES - 1)
        pipelined = get + _head("HEAD /b HTTP/1.0", "Connection: keep-alive")
        return [
            _frame(get),
            _frame(get, (30000,)),
            _frame(chunked, (20000, 40000, 60000), 65536),
            _frame(chunked, (50000,), 100),
            _frame(sized, (32000, 64000)),
            _frame(near_limit, (65534,)),
            _frame(near_limit, (65535 * (len(near_limit) - 2) // len(near_limit),)),
            _frame(pipelined, (10000, 50000)),
        ]
    texts = [
        "https://example.com/path?q=1#frag",
        "http://[::1]:8080/x",
        "https://bücher.example/ü?ä=ö",
        "go.example.com",
        "[2001:db8::1]",
        "Go.Example.COM.:443",
        "launch-2024_x",
    ]
    out = []
    for t in texts:
        out.append(b"\x00" + t.encode("latin-1", "replace"))
        out.append(b"\x01" + t.encode("utf-8"))
    return out


def write_seeds(target: str, corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    for data in seeds(target):
        name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
        path = corpus / name
        if not path.exists():
            path.write_bytes(data)


# --- running ---------------------------------------------------------------------------------

# libFuzzer's status lines: "#12345	NEW    cov: 311 ft: 902 corp: 40/2Kb ... exec/s: 5120".
STATUS_LINE: Final = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+)", re.M)


def run_one(target: str, seconds: float, crashes: Path = CRASHES) -> dict[str, Any]:
    """One target for `seconds` in its own process; its executions, coverage and crashes."""
    corpus = CORPUS / target
    write_seeds(target, corpus)
    crashes.mkdir(parents=True, exist_ok=True)
    started_wall = time.time() - 1
    cmd = [
        sys.executable,
        "-m",
        "loadtests.fuzz",
        "--run",
        target,
        "--",
        f"-max_total_time={max(1, round(seconds))}",
        f"-max_len={MAX_LEN[target]}",
        f"-artifact_prefix={crashes}/{target}-",
        "-print_final_stats=1",
        str(corpus),
    ]
    started = time.monotonic()
    env = {**os.environ, "LINKEDGE_FUZZ_CRASHES": str(crashes)}
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=seconds + 120,
    )
    elapsed = time.monotonic() - started
    output = proc.stdout + proc.stderr
    statuses = STATUS_LINE.findall(output)
    # Each distinct failure has a stable file name (a hash of its signature), rewritten
    # whenever a run meets it again: this run's are the ones written since it started.
    found = sorted(
        n
        for n in os.listdir(crashes)
        if n.startswith(f"{target}-")
        and not n.endswith(".txt")
        and (crashes / n).stat().st_mtime >= started_wall
    )
    result: dict[str, Any] = {
        "target": target,
        "seconds": round(elapsed, 1),
        "exit": proc.returncode,
        "executions": int(statuses[-1][0]) if statuses else 0,
        "coverage": int(statuses[-1][2]) if statuses else 0,
        "features": int(statuses[-1][3]) if statuses else 0,
        "corpus_files": len(os.listdir(corpus)),
        "failures": [
            {
                "input": str((crashes / n).relative_to(ROOT)),
                "signature": _read_signature(crashes / f"{n}.txt"),
            }
            for n in found
        ],
    }
    if proc.returncode != 0:
        result["error"] = output[-3000:].strip()
    result["ok"] = proc.returncode == 0 and not found and result["executions"] > 0
    return result


def _read_signature(path: Path) -> str:
    try:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("signature: "):
                return line[len("signature: ") :]
    except OSError:
        pass
    return "?"


def run_targets(names: list[str], seconds: float) -> list[dict[str, Any]]:
    results = []
    for name in names:
        print(f"fuzz: {name} for {seconds:g} s", flush=True)
        r = run_one(name, seconds)
        verdict = "PASS" if r["ok"] else "FAIL"
        print(
            f"fuzz: {name}: {r['executions']:,} executions, cov {r['coverage']}, "
            f"ft {r['features']}, {len(r['failures'])} distinct failure(s): {verdict}",
            flush=True,
        )
        for f in r["failures"]:
            print(f"fuzz:   {f['signature']}  ({f['input']})", flush=True)
        if "error" in r:
            print(r["error"], flush=True)
        results.append(r)
    return results


def _signature(exc: BaseException) -> str:
    """What makes two failures the same bug: the exception type, the innermost function of
    edge/ it passed through, and for our own invariant checks the message up to its first
    colon."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f"{os.sep}edge{os.sep}" in f.filename] or frames
    where = f"{Path(ours[-1].filename).stem}.{ours[-1].name}" if ours else "?"
    what = str(exc).split(":")[0][:80] if isinstance(exc, AssertionError) else ""
    return f"{type(exc).__name__} at {where} {what}".strip()


class FailureLog:
    """Records each distinct failure once (its input and traceback under CRASHES) and lets
    the fuzzer go on, so one run reports every bug it reaches, not only the first."""

    def __init__(self, target: str, crashes: Path) -> None:
        self.target = target
        self.crashes = crashes
        self.seen: set[str] = set()

    def wrap(self, fn: Callable[[bytes], None]) -> Callable[[bytes], None]:
        def one_input(data: bytes) -> None:
            try:
                fn(data)
            except Exception as exc:
                self.record(exc, data)

        return one_input

    def record(self, exc: Exception, data: bytes) -> None:
        sig = _signature(exc)
        if sig in self.seen:
            return
        self.seen.add(sig)
        name = f"{self.target}-{hashlib.sha1(sig.encode()).hexdigest()[:12]}"
        self.crashes.mkdir(parents=True, exist_ok=True)
        (self.crashes / name).write_bytes(data)
        text = "".join(traceback.format_exception(exc))
        (self.crashes / f"{name}.txt").write_text(
            f"target: {self.target}\nsignature: {sig}\n"
            f"reproduce: python -m loadtests.fuzz --reproduce {self.target} "
            f"loadtests/results/fuzz-crashes/{name}\n\n{text}"
        )
        print(f"FUZZ-FAILURE {name}: {sig}", file=sys.stderr, flush=True)


def _run_in_process(target: str, libfuzzer_args: list[str]) -> None:
    assert atheris is not None
    log = FailureLog(target, Path(os.environ.get("LINKEDGE_FUZZ_CRASHES", str(CRASHES))))
    atheris.Setup([sys.argv[0], *libfuzzer_args], log.wrap(FUZZERS[target]))
    atheris.Fuzz()


def reproduce(target: str, path: Path) -> int:
    """Run one saved input through its target and let whatever it raises show."""
    FUZZERS[target](path.read_bytes())
    print(f"{path}: no failure", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.fuzz",
        description="Coverage-guided fuzzing (atheris) of edge/http.py's parser and "
        "edge/urls.py's validators; crashing inputs go to loadtests/results/fuzz-crashes/.",
        epilog="example:\n  python -m loadtests.fuzz --seconds 60\n"
        "  python -m loadtests.fuzz --targets http --seconds 10",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seconds", type=float, default=60.0, help="per target (default 60)")
    p.add_argument("--targets", default=",".join(TARGETS), help="comma-separated targets")
    p.add_argument("--json-out", type=Path, help="also write the results here as JSON")
    p.add_argument("--run", choices=TARGETS, help=argparse.SUPPRESS)
    p.add_argument(
        "--reproduce",
        nargs=2,
        metavar=("TARGET", "FILE"),
        help="run one saved input (loadtests/results/fuzz-crashes/...) and show what it raises",
    )
    p.add_argument("libfuzzer_args", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if atheris is None:
        print("fuzz: atheris is not installed (pip install -e '.[fuzz]'): skipped", flush=True)
        if args.json_out:
            args.json_out.write_text(json.dumps({"skipped": "atheris is not installed"}))
        return 2
    if args.reproduce:
        return reproduce(args.reproduce[0], Path(args.reproduce[1]))
    if args.run:
        _run_in_process(args.run, args.libfuzzer_args)
        return 0
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [n for n in names if n not in FUZZERS]
    if unknown:
        p.error(f"unknown target(s): {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    results = run_targets(names, args.seconds)
    if args.json_out:
        args.json_out.write_text(json.dumps({"results": results}, indent=1))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
