# loadtests/workload: the links and the traffic every server under test gets, all seeded.
#
# - Links: N links on one domain (go.example.com), created with edge.catalog.create_link in
#   one transaction, into a SQLite file cached under loadtests/.cache/ (each linkedge run
#   serves a fresh copy of it). Half carry UTM fields, all belong to one of 40 campaigns.
# - The same set for the peers: each link's Location exactly as linkedge serves it
#   (edge.links.Link(row).location), written as an nginx `map $uri $target` include and as
#   a JSON dict for the Starlette app.
# - Traffic: a few thousand visitors, each a distinct client IP (sent as X-Forwarded-For,
#   as a local TLS proxy would) with its own User-Agent (real browser strings across
#   versions and platforms, ~7% bots: crawlers, link unfurlers, monitors, curl) and
#   Accept-Language; a referrer per request (40% direct, the rest from social networks,
#   search, mail and newsletters). Browsers send the header set Chrome sends on a
#   navigation, bots a short one. 100,000 prebuilt requests: every slug ten times, each
#   time with a random visitor, so (visitor, link) pairs rarely repeat within a run.
# - The wrk data file: one request head per line, header lines joined by TAB (no header
#   value here contains one); loadtests/wrk/redirects.lua turns TABs into CRLFs.
from __future__ import annotations

import json
import random
import shutil
import sqlite3
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from edge import catalog, schema
from edge.db import connect

HOST: Final = "go.example.com"
CAMPAIGNS: Final = tuple(
    f"{season}-{topic}"
    for season in ("spring", "summer", "autumn", "winter", "launch")
    for topic in ("sale", "webinar", "newsletter", "podcast", "docs", "jobs", "promo", "event")
)
UTM_SOURCES: Final = ("newsletter", "twitter", "linkedin", "facebook", "instagram", "qr", "email")
UTM_MEDIUMS: Final = ("email", "social", "print", "cpc", "referral")
SECTIONS: Final = ("blog", "products", "pricing", "events", "docs", "careers", "shop", "podcast")
SLUG_CHARS: Final = string.ascii_letters + string.digits


def _chrome_versions() -> range:
    return range(118, 132)


def _browser_ua(rng: random.Random) -> str:
    """One real-world browser User-Agent string (platform and version drawn by share)."""
    kind = rng.choices(
        (
            "chrome_win",
            "chrome_mac",
            "chrome_android",
            "safari_iphone",
            "safari_mac",
            "safari_ipad",
            "firefox_win",
            "firefox_linux",
            "edge_win",
            "samsung",
            "instagram_ios",
            "facebook_ios",
            "chrome_ios",
        ),
        weights=(22, 8, 20, 20, 5, 3, 5, 2, 5, 4, 3, 2, 1),
    )[0]
    cv = rng.choice(_chrome_versions())
    ios = f"{rng.choice((16, 17, 18))}_{rng.randrange(0, 7)}"
    ios_dot = ios.replace("_", ".")
    android = rng.choice((10, 11, 12, 13, 14))
    if kind == "chrome_win":
        return (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
            f" Chrome/{cv}.0.0.0 Safari/537.36"
        )
    if kind == "chrome_mac":
        return (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like"
            f" Gecko) Chrome/{cv}.0.0.0 Safari/537.36"
        )
    if kind == "chrome_android":
        return (
            f"Mozilla/5.0 (Linux; Android {android}; K) AppleWebKit/537.36 (KHTML, like Gecko)"
            f" Chrome/{cv}.0.0.0 Mobile Safari/537.36"
        )
    if kind == "safari_iphone":
        return (
            f"Mozilla/5.0 (iPhone; CPU iPhone OS {ios} like Mac OS X) AppleWebKit/605.1.15"
            f" (KHTML, like Gecko) Version/{ios_dot} Mobile/15E148 Safari/604.1"
        )
    if kind == "safari_mac":
        return (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like"
            f" Gecko) Version/{ios_dot} Safari/605.1.15"
        )
    if kind == "safari_ipad":
        return (
            f"Mozilla/5.0 (iPad; CPU OS {ios} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like"
            f" Gecko) Version/{ios_dot} Mobile/15E148 Safari/604.1"
        )
    fv = rng.randrange(115, 134)
    if kind == "firefox_win":
        return f"Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:{fv}.0) Gecko/20100101 Firefox/{fv}.0"
    if kind == "firefox_linux":
        return f"Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:{fv}.0) Gecko/20100101 Firefox/{fv}.0"
    if kind == "edge_win":
        return (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
            f" Chrome/{cv}.0.0.0 Safari/537.36 Edg/{cv}.0.{rng.randrange(2000, 2900)}"
            f".{rng.randrange(10, 99)}"
        )
    if kind == "samsung":
        return (
            f"Mozilla/5.0 (Linux; Android {android}; SAMSUNG"
            f" SM-S{rng.choice((901, 911, 918, 928))}B)"
            f" AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/{rng.randrange(22, 27)}.0"
            f" Chrome/{cv}.0.0.0 Mobile Safari/537.36"
        )
    if kind == "instagram_ios":
        return (
            f"Mozilla/5.0 (iPhone; CPU iPhone OS {ios} like Mac OS X) AppleWebKit/605.1.15"
            f" (KHTML, like Gecko) Mobile/15E148 Instagram {rng.randrange(300, 350)}.0.0.28.110"
            " (iPhone14,5; iOS 17_5; en_US; en; scale=3.00; 1170x2532; 563459864)"
        )
    if kind == "facebook_ios":
        return (
            f"Mozilla/5.0 (iPhone; CPU iPhone OS {ios} like Mac OS X) AppleWebKit/605.1.15"
            " (KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/"
            f"{rng.randrange(440, 480)}.0.0.38.108;FBBV/587178462;FBDV/iPhone15,2;FBMD/iPhone;"
            f"FBSN/iOS;FBSV/{ios_dot};FBSS/3;FBCR/;FBID/phone;FBLC/en_US;FBOP/5]"
        )
    return (
        f"Mozilla/5.0 (iPhone; CPU iPhone OS {ios} like Mac OS X) AppleWebKit/605.1.15 (KHTML,"
        f" like Gecko) CriOS/{cv}.0.6478.54 Mobile/15E148 Safari/604.1"
    )


BOT_UAS: Final = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0;"
    " +http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "Twitterbot/1.0",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
    "WhatsApp/2.23.20.0",
    "TelegramBot (like TwitterBot)",
    "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
    "curl/8.5.0",
    "python-requests/2.32.3",
    "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " HeadlessChrome/126.0.6478.126 Safari/537.36",
)
BOT_SHARE: Final = 0.07

LANGUAGES: Final = (
    ("en-US,en;q=0.9", 30),
    ("en-GB,en;q=0.9", 8),
    ("de-DE,de;q=0.9,en-US;q=0.8,en;q=0.7", 8),
    ("fr-FR,fr;q=0.9,en-US;q=0.8,en;q=0.7", 6),
    ("es-ES,es;q=0.9", 5),
    ("pt-BR,pt;q=0.9,en-US;q=0.8,en;q=0.7", 5),
    ("ja,en-US;q=0.9,en;q=0.8", 4),
    ("it-IT,it;q=0.9,en-US;q=0.8,en;q=0.7", 3),
    ("nl-NL,nl;q=0.9,en-US;q=0.8,en;q=0.7", 3),
    ("sv-SE,sv;q=0.9,en-US;q=0.8,en;q=0.7", 2),
    ("zh-CN,zh;q=0.9", 3),
    ("ko-KR,ko;q=0.9,en-US;q=0.8,en;q=0.7", 2),
    ("en", 3),
)


def _referer(rng: random.Random) -> str:
    kind = rng.choices(
        (
            "direct",
            "tco",
            "facebook",
            "google",
            "linkedin",
            "reddit",
            "hn",
            "gmail_app",
            "webmail",
            "newsletter",
            "instagram",
            "bing",
        ),
        weights=(40, 12, 9, 8, 7, 4, 3, 4, 3, 5, 3, 2),
    )[0]
    tok = "".join(rng.choices(SLUG_CHARS, k=10))
    return {
        "direct": "",
        "tco": f"https://t.co/{tok}",
        "facebook": f"https://l.facebook.com/l.php?u=https%3A%2F%2Fgo.example.com%2F&h={tok}",
        "google": "https://www.google.com/",
        "linkedin": "https://www.linkedin.com/",
        "reddit": f"https://out.reddit.com/t3_{tok[:6].lower()}?app_name=web",
        "hn": "https://news.ycombinator.com/",
        "gmail_app": "android-app://com.google.android.gm/",
        "webmail": "https://mail.google.com/",
        "newsletter": f"https://newsletter.example.org/issues/{rng.randrange(1, 120)}",
        "instagram": "https://l.instagram.com/",
        "bing": "https://www.bing.com/",
    }[kind]


@dataclass(frozen=True, slots=True)
class Visitor:
    ip: str
    user_agent: str
    language: str
    bot: bool
    dnt: bool


def visitors(ips: list[str], seed: int = 3) -> list[Visitor]:
    """One visitor per client IP, each with a stable User-Agent and language."""
    rng = random.Random(seed)
    langs = [lang for lang, _ in LANGUAGES]
    lang_weights = [w for _, w in LANGUAGES]
    out = []
    for ip in ips:
        bot = rng.random() < BOT_SHARE
        ua = rng.choice(BOT_UAS) if bot else _browser_ua(rng)
        lang = "" if bot else rng.choices(langs, lang_weights)[0]
        out.append(Visitor(ip, ua, lang, bot, dnt=not bot and rng.random() < 0.03))
    return out


BROWSER_ACCEPT: Final = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8"
)


def request_head(slug: str, visitor: Visitor, referer: str) -> list[str]:
    """A request head's lines (no Connection line, no final blank line)."""
    lines = [f"GET /{slug} HTTP/1.1", f"Host: {HOST}", f"User-Agent: {visitor.user_agent}"]
    if visitor.bot:
        lines += ["Accept: */*", "Accept-Encoding: gzip"]
    else:
        lines += [
            f"Accept: {BROWSER_ACCEPT}",
            "Accept-Encoding: gzip, deflate, br, zstd",
            f"Accept-Language: {visitor.language}",
        ]
        if referer:
            lines.append(f"Referer: {referer}")
        if visitor.dnt:
            lines.append("DNT: 1")
        lines += [
            "Upgrade-Insecure-Requests: 1",
            "Sec-Fetch-Dest: document",
            "Sec-Fetch-Mode: navigate",
            "Sec-Fetch-Site: cross-site",
        ]
    lines += [f"X-Forwarded-For: {visitor.ip}", "X-Forwarded-Proto: https"]
    return lines


def write_wrk_data(
    path: Path, slugs: list[str], people: list[Visitor], min_requests: int = 100_000, seed: int = 5
) -> int:
    """The request heads wrk cycles through: every slug at least once, shuffled."""
    rng = random.Random(seed)
    rounds = max(1, -(-min_requests // len(slugs)))
    order: list[str] = []
    for _ in range(rounds):
        batch = slugs[:]
        rng.shuffle(batch)
        order += batch
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for slug in order:
            visitor = people[rng.randrange(len(people))]
            lines = request_head(slug, visitor, "" if visitor.bot else _referer(rng))
            f.write("\t".join(lines) + "\n")
    return len(order)


def random_referer(rng: random.Random) -> str:
    return _referer(rng)


# --- links -------------------------------------------------------------------------------


def _slugs(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    seen: set[str] = set()
    out = []
    while len(out) < count:
        slug = "".join(rng.choices(SLUG_CHARS, k=7))
        if slug not in seen:
            seen.add(slug)
            out.append(slug)
    return out


def create_links_db(path: Path, count: int, seed: int = 1) -> None:
    """A fresh linkedge database with `count` links on HOST (the default domain)."""
    rng = random.Random(seed)
    tmp = path.with_name(path.name + ".tmp")
    for suffix in ("", "-wal", "-shm"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = catalog.open_db(str(tmp))
    catalog.add_domain(conn, HOST, default=True)
    conn.execute("BEGIN IMMEDIATE")
    for i, slug in enumerate(_slugs(count, seed)):
        fields: dict[str, object] = {
            "url": f"https://www.example.com/{rng.choice(SECTIONS)}/item-{i}",
            "campaign": CAMPAIGNS[i % len(CAMPAIGNS)],
            "tags": [rng.choice(SECTIONS)],
        }
        if i % 2 == 0:
            fields["utm_source"] = rng.choice(UTM_SOURCES)
            fields["utm_medium"] = rng.choice(UTM_MEDIUMS)
            fields["utm_campaign"] = fields["campaign"]
        catalog.create_link(conn, fields, slug=slug)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    tmp.replace(path)
    for suffix in ("-wal", "-shm"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)


def ensure_links_db(cache: Path, count: int) -> Path:
    path = cache / f"links-{count}.db"
    if not path.exists():
        print(f"bench: creating {count:,} links in {path}", flush=True)
        create_links_db(path, count)
    return ensure_schema(path)


def ensure_schema(path: Path) -> Path:
    """Bring a cached database up to the current schema once, in place, so that no server
    start in a measured run pays for a migration (delete loadtests/.cache/ when a
    migration changes what the cached data means)."""
    latest = schema.MIGRATIONS[-1][0]
    conn = connect(str(path))
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] < latest:
            print(f"bench: migrating cached {path.name} to schema {latest}", flush=True)
            schema.migrate(conn)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return path


def copy_db(src: Path, dst: Path) -> Path:
    """A private copy of a (checkpointed) database for one server run."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(dst) + suffix).unlink(missing_ok=True)
    shutil.copyfile(src, dst)
    return dst


def locations(db: Path) -> dict[str, str]:
    """slug -> Location, exactly as linkedge serves it (from the link table's own code)."""
    from edge.links import Link, is_servable

    conn = connect(str(db))
    try:
        out = {}
        for row in catalog.all_links(conn):
            if is_servable(row):
                link = Link(row)
                out[link.slug] = link.location
        return out
    finally:
        conn.close()


def write_peer_files(db: Path, out_dir: Path) -> dict[str, Path]:
    """The nginx map include and the JSON dict for the Starlette app."""
    targets = locations(db)
    out_dir.mkdir(parents=True, exist_ok=True)
    map_path = out_dir / "links.map"
    with map_path.open("w", encoding="utf-8") as f:
        for slug, location in targets.items():
            if any(c in location for c in '"\\$;{}'):
                raise ValueError(f"destination not expressible in an nginx map: {location}")
            f.write(f'"/{slug}" "{location}";\n')
    json_path = out_dir / "links.json"
    json_path.write_text(json.dumps(targets))
    return {"map": map_path, "json": json_path}


def count_clicks(db: Path) -> int:
    conn = sqlite3.connect(str(db))
    try:
        return int(conn.execute("SELECT count(*) FROM clicks").fetchone()[0])
    finally:
        conn.close()
