# loadtests/bots: how honest are the bot labels? Recall, false positives and uncached cost of
# geo.bots on public corpora (`python -m loadtests.bots`; `make bench` runs it too).
#
# Corpora, built offline from registry packages (fetched once with `pip download` into
# loadtests/.cache/bots; nothing is installed) and the team's ../shared/testdata:
#   bots    cd    CrawlerDetect's test suite: tests/fixtures/user_agent/crawlers.txt in the
#                 crawlerdetect sdist (the list linkedge adopted: a SELF-TEST)
#           mtm   Matomo's bots.yml test cases in the device-detector wheel
#           cua   every `instances` string of crawler-user-agents.json (its wheel)
#           uap   uap-core test_device.yaml cases of the family "Spider" (ua-parser's own
#                 tests: a self-test of the last signal)
#           held  out: mtm + cua + uap strings that appear in no adopted list's fixtures
#                 (not in CrawlerDetect's crawlers.txt or devices.txt): how linkedge does on
#                 a bot nobody listed for it
#   people  uap_ua   uap-core test_ua.yaml, mainstream browsers and in-app browsers
#           uap_dev  uap-core test_device.yaml browser-engine strings that are not Spider
#           cd_dev   CrawlerDetect's devices.txt (self-test of the list)
#           mtm_br   Matomo's fixtures whose client type is "browser"
#   apps    mtm_app  Matomo's "mobile app" cases (in-app browsers, podcast and Office apps):
#                 people mostly, reported apart
# Rules: exact-string dedup; a string labelled bot in one suite and person in another is
# dropped from both; linkedge's own policy (Office's ms-office link probes, PowerShell and
# WinHTTP are "automation" on purpose: the person's browser request follows) is shown as
# its own column rather than counted as a false positive.
# Cost: explain() with its cache bypassed, per string, ua-parser's parse excluded (the
# collector parses every new string for its device columns anyway; its figure is printed
# beside). Medians and p99 in microseconds.
from __future__ import annotations

import argparse
import gc
import glob
import json
import re
import statistics
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
CACHE: Final = ROOT / "loadtests" / ".cache" / "bots"
UAP_DIR: Final = ROOT.parent / "shared" / "testdata" / "ua"
RESULTS: Final = ROOT / "loadtests" / "results"

# The targets.
RECALL_TARGET: Final = 97.0
FP_TARGET: Final = 0.3

# tests/test_bots.py's set of mainstream browser and in-app families (uap-core names).
MAINSTREAM: Final = frozenset(
    f.strip()
    for f in """Chrome|Chrome Mobile|Chrome Mobile iOS|Chrome Mobile WebView|Chromium|Firefox|
    Firefox Beta|Firefox Mobile|Firefox iOS|Safari|Mobile Safari|Mobile Safari UI/WKWebView|Edge|
    Edge Mobile|IE|IE Mobile|Opera|Opera GX|Opera Mini|Opera Mobile|Opera Touch|Opera Tablet|
    Opera Coast|Opera Neon|Samsung Internet|UC Browser|Yandex Browser|Brave|Vivaldi|Amazon Silk|
    Android|Whale|Coc Coc|Huawei Browser|MiuiBrowser|DuckDuckGo Mobile|QQ Browser|
    QQ Browser Mobile|Puffin|Maxthon|Pale Moon|Waterfox|Baidu Browser|360 Secure Browser|
    Seznam prohlížeč|Avast Secure Browser|Aloha Browser|Honor Browser|HeyTap Browser|VivoBrowser|
    Mint Browser|MullvadBrowser|Facebook|Facebook Messenger|Instagram|Pinterest|Twitter|LINE|
    WeChat Browser|Snapchat|TikTok|KakaoTalk|Telegram|Weibo""".split("|")  # noqa: SIM905
)
SELF_IDENTIFIED: Final = frozenset(
    {
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko; Google Web "
        "Preview) Chrome/27.0 .1453 Safari/537.36.",
        "Pinterest/0.1",
        "Pinterest/0.2 (+http://www.pinterest.com/)",
    }
)
_BROWSER_ENGINE: Final = re.compile(r"^Mozilla/.*(?:AppleWebKit/|Gecko/|Presto/|Trident/)")
# linkedge labels these automation on purpose (geo/bots.py: Office link probes etc.).
_POLICY: Final = re.compile(r"ms-office|msoffice|windowspowershell|winhttp", re.IGNORECASE)

BOT_CORPORA: Final = ("cd", "mtm", "cua", "uap", "held")
PEOPLE_CORPORA: Final = ("uap_ua", "uap_dev", "cd_dev", "mtm_br", "mtm_app")
SELF_TESTS: Final = frozenset({"cd", "cd_dev", "uap"})


def _dedup(uas: list[str]) -> list[str]:
    return list(dict.fromkeys(u.strip() for u in uas if u.strip() and "\n" not in u.strip()))


def _download(package: str, binary: bool) -> Path:
    """The package's newest wheel (binary) or sdist, fetched once into the cache."""
    CACHE.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_") if binary else package
    pattern = f"{stem}-*.whl" if binary else f"{package}-*.tar.gz"
    found = sorted(glob.glob(str(CACHE / pattern)))
    if not found:
        kind = ["--only-binary", ":all:"] if binary else ["--no-binary", ":all:"]
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *kind, package]
        subprocess.run([*cmd, "-d", str(CACHE)], check=True)
        found = sorted(glob.glob(str(CACHE / pattern)))
    return Path(found[-1])


def build_corpora(uap_dir: Path = UAP_DIR) -> tuple[dict[str, list[str]], dict[str, str]]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    sources: dict[str, str] = {}
    raw: dict[str, list[str]] = {}
    sdist = _download("crawlerdetect", binary=False)
    sources["cd"] = sdist.name
    with tarfile.open(sdist) as tf:
        for member in tf.getmembers():
            name = member.name
            if name.endswith("fixtures/user_agent/crawlers.txt"):
                raw["cd"] = tf.extractfile(member).read().decode("utf-8", "replace").splitlines()  # type: ignore[union-attr]
            elif name.endswith("fixtures/user_agent/devices.txt"):
                data = tf.extractfile(member).read()  # type: ignore[union-attr]
                raw["cd_dev"] = data.decode("utf-8", "replace").splitlines()
    wheel = _download("device-detector", binary=True)
    sources["mtm"] = wheel.name
    raw["mtm"], raw["mtm_br"], raw["mtm_app"] = [], [], []
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            if "tests/fixtures/upstream/" not in name or not name.endswith(".yml"):
                continue
            for case in yaml.load(zf.read(name), Loader=loader) or []:
                ua = case.get("user_agent") if isinstance(case, dict) else None
                if not isinstance(ua, str):
                    continue
                client = case.get("client")
                ctype = client.get("type") if isinstance(client, dict) else None
                if name.endswith("/bots.yml") or case.get("bot"):
                    raw["mtm"].append(ua)
                elif ctype == "browser":
                    raw["mtm_br"].append(ua)
                elif ctype == "mobile app":
                    raw["mtm_app"].append(ua)
    wheel = _download("crawler-user-agents", binary=True)
    sources["cua"] = wheel.name
    with zipfile.ZipFile(wheel) as zf:
        entry = next(n for n in zf.namelist() if n.endswith("crawler-user-agents.json"))
        raw["cua"] = [i for e in json.loads(zf.read(entry)) for i in e.get("instances", [])]
    devices = yaml.load((uap_dir / "test_device.yaml").read_text(), Loader=loader)["test_cases"]
    agents = yaml.load((uap_dir / "test_ua.yaml").read_text(), Loader=loader)["test_cases"]
    sources["uap"] = f"uap-core test_device.yaml / test_ua.yaml ({uap_dir})"
    raw["uap"] = [c["user_agent_string"] for c in devices if c["family"] == "Spider"]
    raw["uap_dev"] = [
        c["user_agent_string"]
        for c in devices
        if c["family"] != "Spider" and _BROWSER_ENGINE.match(c["user_agent_string"])
    ]
    raw["uap_ua"] = [
        c["user_agent_string"]
        for c in agents
        if c["family"] in MAINSTREAM and c["user_agent_string"] not in SELF_IDENTIFIED
    ]
    corpora = {k: _dedup(v) for k, v in raw.items()}
    bots = set().union(*(corpora[k] for k in ("cd", "mtm", "cua", "uap")))
    people = set().union(*(corpora[k] for k in PEOPLE_CORPORA))
    conflicts = bots & people
    corpora = {k: [u for u in v if u not in conflicts] for k, v in corpora.items()}
    own = set(corpora["cd"]) | set(corpora["cd_dev"])  # the adopted list's fixtures
    corpora["held"] = _dedup([u for k in ("mtm", "cua", "uap") for u in corpora[k] if u not in own])
    return corpora, sources


def _timed(fn: Callable[[str], Any], uas: list[str]) -> tuple[list[Any], list[int]]:
    out: list[Any] = []
    ns: list[int] = []
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for ua in uas:
            t0 = clock()
            out.append(fn(ua))
            ns.append(clock() - t0)
    finally:
        gc.enable()
    return out, ns


def _us(ns: list[int]) -> dict[str, float]:
    ns = sorted(ns)
    return {
        "median_us": round(statistics.median(ns) / 1e3, 1),
        "p99_us": round(ns[int(len(ns) * 0.99)] / 1e3, 1),
    }


def measure(corpora: dict[str, list[str]], sample: int | None = None) -> dict[str, Any]:
    from geo import bots
    from geo.useragent import UserAgentParser

    parser = UserAgentParser(cache_size=0)
    uncached = bots.ua_verdict.__wrapped__  # type: ignore[attr-defined]

    def explain(ua: str, info: Any) -> bots.Verdict:
        verdict = uncached(ua)
        if verdict.kind is None and info is not None and info.spider:
            return bots.SPIDER
        return verdict

    rows: dict[str, Any] = {}
    for name in (*BOT_CORPORA, *PEOPLE_CORPORA):
        uas = corpora[name]
        if sample is not None and len(uas) > sample:
            uas = uas[:: max(1, len(uas) // sample)][:sample]
        infos, parse_ns = _timed(parser.parse, uas)
        for ua in uas[:200]:
            uncached(ua)  # warm-up
        verdicts: list[bots.Verdict] = []
        ns: list[int] = []
        clock = time.perf_counter_ns
        gc.disable()
        for ua, info in zip(uas, infos, strict=True):
            t0 = clock()
            verdicts.append(explain(ua, info))
            ns.append(clock() - t0)
        gc.enable()
        flagged = [(ua, v) for ua, v in zip(uas, verdicts, strict=True) if v.kind is not None]
        policy = sum(1 for ua, _ in flagged if _POLICY.search(ua))
        by_signal: dict[str, int] = {}
        for _, v in flagged:
            signal = (v.reason or "").split(":", 1)[0]
            by_signal[signal] = by_signal.get(signal, 0) + 1
        row: dict[str, Any] = {
            "strings": len(uas),
            "flagged": len(flagged),
            "rate_pct": round(100 * len(flagged) / max(1, len(uas)), 2),
            "by_signal": by_signal,
            "cost": _us(ns),
            "ua_parser_cost": _us(parse_ns),
            "self_test": name in SELF_TESTS,
        }
        if name in PEOPLE_CORPORA:
            rest = len(uas) - policy
            row["policy"] = policy
            row["fp_pct"] = round(100 * (len(flagged) - policy) / max(1, rest), 2)
            row["examples"] = [ua for ua, _ in flagged if not _POLICY.search(ua)][:10]
        else:
            row["examples"] = [ua for ua, v in zip(uas, verdicts, strict=True) if v.kind is None][
                :10
            ]
        rows[name] = row
    union = [u for k in ("cd", "mtm", "cua", "uap") for u in corpora[k]]
    flagged_union = {u for u in union if explain(u, parser.parse(u)).kind is not None}
    rows["all_bots"] = {
        "strings": len(set(union)),
        "rate_pct": round(100 * len(flagged_union) / max(1, len(set(union))), 2),
    }
    return {"list": bots.list_info(), "corpora": rows}


def table(result: dict[str, Any]) -> str:
    c = result["corpora"]
    lines = [
        "| corpus | strings | bots found (recall) / people flagged (FP) | target | met | "
        "uncached µs, median / p99 |",
        "|---|---|---|---|---|---|",
    ]
    for name in BOT_CORPORA:
        r = c[name]
        label = f"`{name}`" + (" (self-test)" if r["self_test"] else "")
        met = "yes" if r["rate_pct"] >= RECALL_TARGET else "**no**"
        lines.append(
            f"| {label} | {r['strings']:,} | recall {r['rate_pct']:.2f}% | >= {RECALL_TARGET:g}% "
            f"| {met} | {r['cost']['median_us']} / {r['cost']['p99_us']} |"
        )
    u = c["all_bots"]
    met = "yes" if u["rate_pct"] >= RECALL_TARGET else "**no**"
    lines.append(
        f"| all four bot corpora (cd+mtm+cua+uap) | {u['strings']:,} | recall "
        f"{u['rate_pct']:.2f}% | >= {RECALL_TARGET:g}% | {met} | - |"
    )
    for name in PEOPLE_CORPORA:
        r = c[name]
        label = f"`{name}`" + (" (self-test)" if r["self_test"] else "")
        target = "reported" if name == "mtm_app" else f"<= {FP_TARGET:g}%"
        met = "-" if name == "mtm_app" else ("yes" if r["fp_pct"] <= FP_TARGET else "**no**")
        policy = f" (+{r['policy']:,} Office/PowerShell probes, automation by policy)"
        lines.append(
            f"| {label} | {r['strings']:,} | FP {r['fp_pct']:.2f}%"
            f"{policy if r['policy'] else ''} | {target} | {met} | "
            f"{r['cost']['median_us']} / {r['cost']['p99_us']} |"
        )
    return "\n".join(lines)


def run(sample: int | None = None) -> dict[str, Any]:
    if not (UAP_DIR / "test_device.yaml").exists():
        raise SystemExit(f"bots: {UAP_DIR} is missing (the team's shared/testdata)")
    started = time.time()
    corpora, sources = build_corpora()
    result = measure(corpora, sample)
    result["sources"] = sources
    result["seconds"] = round(time.time() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bots", description=__doc__)
    p.add_argument("--sample", type=int, help="at most this many strings per corpus (a quick run)")
    p.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = p.parse_args(argv)
    result = run(args.sample)
    lst = result["list"]
    print(f"bots: list {lst['name']} {lst['version']} ({lst['patterns']} patterns)")
    print(table(result))
    for name, r in result["corpora"].items():
        if r.get("examples"):
            what = "missed" if name in BOT_CORPORA else "flagged"
            print(f"\n{name}: first {what}:")
            for ua in r["examples"]:
                print("   ", ua[:140])
    out = args.json or RESULTS / "bots-latest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nbots: wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
