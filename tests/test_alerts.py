"""Alerts end to end (admin/alerts.py, admin/notify.py, admin/checks.py): a real server with
short intervals, a real webhook receiver (signatures checked here with hmac), a real SMTP
server (aiosmtpd), a destination server that starts answering 500. Each kind fires once
and resolves once; conversion_rate_below says why it cannot be judged."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.conftest import ServerProcess
from tests.test_api import TOKEN, Api, edge_get

SECRET = "whsec-test-0123456789"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"


class Receiver:
    """A webhook receiver on 127.0.0.1 and a destination server in one: /hook* record
    what they get (/hook-flaky answers 500 to its first request), /dest answers
    `self.dest_status`, /fallback 200."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, str], bytes]] = []
        self.dest_status = 200
        self.flaky_left = 1
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.got.append((self.path, dict(self.headers.items()), body))
                if self.path == "/hook-flaky" and receiver.flaky_left > 0:
                    receiver.flaky_left -= 1
                    self._answer(500)
                    return
                self._answer(204)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(receiver.dest_status if self.path == "/dest" else 200)

            do_GET = do_HEAD  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def events(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(b) for p, _h, b in self.got if p == path]


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        from email import message_from_bytes

        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    receiver = Receiver()
    mailbox = Mailbox()
    with socket.socket() as probe:  # aiosmtpd's Controller needs a port of its own
        probe.bind(("127.0.0.1", 0))
        smtp_port = probe.getsockname()[1]
    smtp = Controller(mailbox, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    env = {
        "LINKEDGE_ADMIN_TOKEN": TOKEN,
        "LINKEDGE_ALERT_EVAL_INTERVAL_S": "0.2",
        "LINKEDGE_DESTINATION_CHECK_INTERVAL_S": "0.5",
        "LINKEDGE_DESTINATION_CHECK_TIMEOUT_S": "2",
        "LINKEDGE_ALLOW_PRIVATE_FETCH": "1",
        "LINKEDGE_ALERT_RETRY_BASE_S": "0.1",
        "LINKEDGE_SMTP_HOST": "127.0.0.1",
        "LINKEDGE_SMTP_PORT": str(smtp_port),
        "LINKEDGE_SMTP_STARTTLS": "0",
        "LINKEDGE_SMTP_FROM": "alerts@linkedge.test",
    }
    db = tmp_path_factory.mktemp("alerts") / "linkedge.db"
    server = ServerProcess(db, "--workers", "1", env=env)
    yield {"server": server, "receiver": receiver, "mailbox": mailbox, "db": db}
    if server.proc.poll() is None:
        server.stop()
    smtp.stop()
    receiver.server.shutdown()
    receiver.server.server_close()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def clicks(port: int, slug: str, n: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        for _ in range(n):
            conn.request("GET", f"/{slug}", headers={"Host": "localhost", "User-Agent": BROWSER})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 302
    finally:
        conn.close()


def verify(headers: dict[str, str], body: bytes) -> bool:
    fields = dict(p.split("=", 1) for p in headers["X-Linkedge-Signature"].split(","))
    expected = hmac.new(SECRET.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), fields["v1"]) and (
        abs(time.time() - int(fields["t"])) < 60
    )


def state(api: Api, alert_id: int) -> str:
    status, alert = api.get(f"/api/alerts/{alert_id}")
    assert status == 200, alert
    return str(alert["state"])


def test_every_kind_fires_once_and_resolves_once(world: dict[str, Any]) -> None:
    server: ServerProcess = world["server"]
    receiver: Receiver = world["receiver"]
    api = Api(server.admin_port)
    edge = server.edge_port
    links = {}
    for slug in ("above", "below", "zero", "anomaly", "conv"):
        status, link = api.post("/api/links", {"url": "https://example.com/" + slug, "slug": slug})
        assert status == 201, link
        links[slug] = link["id"]
    status, link = api.post("/api/links", {"url": receiver.url("/dest"), "slug": "dest"})
    links["dest"] = link["id"]
    fast = {"for_s": 0, "cooldown_s": 120}

    def hook(path: str) -> list[dict[str, Any]]:
        return [{"webhook": receiver.url(path), "secret": SECRET}]

    rules = {
        "above": {"kind": "clicks_above", "window_s": 2, "threshold": 5, **fast,
                  "notify": [*hook("/hook-above"), {"slack": receiver.url("/slack")},
                             {"email": "ops@example.com"}]},
        "below": {"kind": "clicks_below", "window_s": 2, "threshold": 3, **fast,
                  "notify": hook("/hook-below")},
        "zero": {"kind": "zero", "window_s": 2, **fast, "notify": hook("/hook-zero")},
        "anomaly": {"kind": "anomaly", "window_s": 2, "baseline_s": 4, "min_count": 5,
                    **fast, "notify": hook("/hook-anomaly")},
        "conv": {"kind": "conversion_rate_below", "window_s": 60, "threshold": 0.02,
                 "min_clicks": 1, "notify": hook("/hook-conv")},
        "dest": {"kind": "destination", "fallback_url": receiver.url("/fallback"),
                 "notify": [{"webhook": receiver.url("/hook-flaky"), "secret": SECRET}]},
    }  # fmt: skip
    ids = {}
    for slug, rule in rules.items():
        body = {"name": f"{slug} alert", "scope": {"link_id": links[slug]}, **rule}
        status, alert = api.post("/api/alerts", body)
        assert status == 201, alert
        # a rule is judged when written: clicks_below fires at once on a link without
        # clicks if the counters are old enough already
        assert alert["state"] in (("ok", "firing") if slug == "below" else ("ok",)), alert
        ids[slug] = alert["id"]
    clicks(edge, "zero", 3)  # traffic that will stop

    # clicks_above: a burst over 5 in 2 s fires; two seconds later it resolves
    clicks(edge, "above", 10)
    wait_for("above firing", lambda: state(api, ids["above"]) == "firing")
    status, live = api.get("/api/live")
    assert ids["above"] in [a["id"] for a in live["alerts"]["firing"]]
    status, listed = api.get("/api/alerts?state=firing")
    assert ids["above"] in [a["id"] for a in listed["alerts"]] and listed["firing"] >= 1

    # clicks_below: under 3 in 2 s (once the counters have 2 s) fires; clicks resolve it
    wait_for("below firing", lambda: state(api, ids["below"]) == "firing")
    clicks(edge, "below", 10)
    wait_for("below resolved", lambda: state(api, ids["below"]) == "resolved")

    # zero: the link had clicks, then none for a window (clicked again here: on a loaded
    # machine the steps above can outlast the window its first clicks were in)
    clicks(edge, "zero", 3)
    wait_for("zero firing", lambda: state(api, ids["zero"]) == "firing", 30.0)
    clicks(edge, "zero", 1)
    wait_for("zero resolved", lambda: state(api, ids["zero"]) == "resolved")
    wait_for("above resolved", lambda: state(api, ids["above"]) == "resolved")

    # anomaly: nothing for the baseline, then 20 in the window; resolves once the burst
    # has left both the window and the baseline
    wait_for(
        "anomaly warmed up", lambda: api.get(f"/api/alerts/{ids['anomaly']}")[1]["note"] is None
    )
    assert state(api, ids["anomaly"]) == "ok"
    clicks(edge, "anomaly", 20)
    wait_for("anomaly firing", lambda: state(api, ids["anomaly"]) == "firing")
    wait_for("anomaly resolved", lambda: state(api, ids["anomaly"]) == "resolved")

    # conversion_rate_below cannot be judged: it says why
    status, conv = api.get(f"/api/alerts/{ids['conv']}")
    assert conv["state"] == "ok" and conv["note"].startswith("conversions not tracked on this link")

    for slug in ("above", "below", "zero", "anomaly"):
        events = receiver.events(f"/hook-{slug}")
        assert [e["event"] for e in events] == ["firing", "resolved"], (slug, events)
        assert events[0]["alert"]["id"] == ids[slug]
    for path, headers, body in receiver.got:
        if path.startswith("/hook"):
            assert verify(headers, body), path
    slack = receiver.events("/slack")
    assert [s["text"].split(":")[0] for s in slack] == ["[linkedge] FIRING", "[linkedge] resolved"]
    mails = wait_for(
        "two emails", lambda: len(world["mailbox"].messages) >= 2 and world["mailbox"].messages
    )
    assert "FIRING: above alert" in mails[0]["Subject"] and mails[0]["To"] == "ops@example.com"
    assert "resolved: above alert" in mails[1]["Subject"]
    status, log = api.get(f"/api/alerts/{ids['above']}/deliveries")
    assert {(d["channel"], d["event"], d["status"]) for d in log["deliveries"]} == {
        (c, e, "delivered") for c in ("webhook", "slack", "email") for e in ("firing", "resolved")
    }


def test_a_failing_destination_fires_fails_over_and_recovers(world: dict[str, Any]) -> None:
    server: ServerProcess = world["server"]
    receiver: Receiver = world["receiver"]
    api = Api(server.admin_port)
    status, alerts = api.get("/api/alerts")
    dest = next(a for a in alerts["alerts"] if a["kind"] == "destination")
    link_id = dest["scope"]["link_id"]
    wait_for(
        "the destination checked good",
        lambda: any(
            c["ok"] for c in api.get("/api/checks")[1]["checks"] if c["url"].endswith("/dest")
        ),
    )
    assert dest["state"] == "ok"
    receiver.dest_status = 500
    started = time.monotonic()
    wait_for("destination firing", lambda: state(api, dest["id"]) == "firing", timeout=5)
    # check interval 0.5 s + a confirmation 0.5 s later + one evaluation (0.2 s) + margin
    assert time.monotonic() - started < 4.0
    status, checks = api.get("/api/checks?failing=true")
    failing = [c for c in checks["checks"] if c["url"].endswith("/dest")]
    assert failing and failing[0]["status"] == 500 and failing[0]["error_kind"] == "http"
    assert failing[0]["last_good_at"] is not None
    # the fallback is served by the edge within a second of the firing
    wait_for(
        "the edge serves the fallback",
        lambda: edge_get(server.edge_port, "/dest")[1] == receiver.url("/fallback"),
        timeout=1.5,
    )
    receiver.dest_status = 200
    wait_for("destination resolved", lambda: state(api, dest["id"]) == "resolved", timeout=10)
    wait_for(
        "the edge serves the destination again",
        lambda: edge_get(server.edge_port, "/dest")[1] == receiver.url("/dest"),
        timeout=1.5,
    )
    assert api.get(f"/api/links/{link_id}")[1]["url"] == receiver.url("/dest")
    events = receiver.events("/hook-flaky")
    # the first POST got 500 and was retried: three requests, two events delivered
    assert [e["event"] for e in events] == ["firing", "firing", "resolved"]
    assert events[0]["failover"] == {
        "link_id": link_id,
        "from": receiver.url("/dest"),
        "to": receiver.url("/fallback"),
    }
    status, log = api.get(f"/api/alerts/{dest['id']}/deliveries")
    by_event = {d["event"]: d for d in log["deliveries"]}
    assert by_event["firing"]["attempts"] == 2 and by_event["firing"]["status"] == "delivered"
    assert by_event["resolved"]["attempts"] == 1


def test_alert_errors_name_the_field(world: dict[str, Any]) -> None:
    api = Api(world["server"].admin_port)
    cases = [
        ({"name": "x", "scope": {"link_id": 1}, "kind": "nope", "window_s": 60}, "kind"),
        ({"name": "x", "scope": {"link_id": 999}, "kind": "zero", "window_s": 60}, "scope.link_id"),
        ({"name": "x", "scope": {"link_id": 1}, "kind": "clicks_above", "window_s": 60},
         "threshold"),
        ({"name": "x", "scope": {"link_id": 1}, "kind": "zero", "window_s": 7200}, "window_s"),
        ({"name": "x", "scope": {"campaign": "c"}, "kind": "zero", "window_s": 60,
          "notify": [{"webhook": "ftp://x"}]}, "notify[0].webhook"),
        ({"name": "x", "scope": {"link_id": 1}, "kind": "zero", "window_s": 60, "p_value": 0.1},
         "p_value"),
    ]  # fmt: skip
    for body, field in cases:
        status, error = api.post("/api/alerts", body)
        assert status == 400, (body, error)
        assert error["error"]["field"] == field, (body, error)
    assert api.get("/api/alerts/424242")[0] == 404
    assert api.patch("/api/alerts/424242", {"name": "y"})[0] == 404


def test_the_cli_manages_alerts(tmp_path: Path) -> None:
    from tests.conftest import cli, init_db

    db = init_db(tmp_path / "cli.db")
    cli("link", "add", "https://example.com/", "--slug", "launch", db=db)
    out = cli(
        "alert",
        "add",
        "spike",
        "--link",
        "launch",
        "--kind",
        "clicks_above",
        "--window",
        "5m",
        "--threshold",
        "50",
        "--webhook",
        "https://hooks.example.com/x",
        "--secret",
        "s3",
        "--email",
        "ops@example.com",
        "--json",
        db=db,
    ).stdout
    alert = json.loads(out)
    assert alert["window_s"] == 300 and alert["threshold"] == 50
    assert alert["notify"] == [
        {"webhook": "https://hooks.example.com/x", "signed": True},
        {"email": "ops@example.com"},
    ]
    changed = cli(
        "alert", "set", str(alert["id"]), "--threshold", "80", "--disable", "--json", db=db
    ).stdout
    assert json.loads(changed)["threshold"] == 80 and json.loads(changed)["enabled"] is False
    listed = cli("alert", "list", db=db).stdout
    assert "spike" in listed and "clicks_above" in listed and "disabled" in listed
    bad = cli("alert", "add", "x", "--campaign", "c", "--kind", "clicks_above", "--window",
              "5m", db=db, check=False)  # fmt: skip
    assert bad.returncode == 2 and "threshold" in bad.stderr and len(bad.stderr.splitlines()) == 1
    cli("alert", "rm", str(alert["id"]), db=db)
    gone = cli("alert", "show", str(alert["id"]), db=db, check=False)
    assert gone.returncode == 2 and f"no alert with id {alert['id']}" in gone.stderr


# --- the rules, the maths and the state machine, without a server ------------------------

import asyncio  # noqa: E402
import math  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from admin import alerts  # noqa: E402
from edge.config import Config  # noqa: E402
from edge.errors import InvalidField  # noqa: E402
from edge.live import LiveCounters  # noqa: E402

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**13), 10**13) | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
_plausible = {
    "name": st.text(max_size=30),
    "scope": st.sampled_from([{"link_id": 1}, {"campaign": "Spring"}, {"link_id": 0}, {}]),
    "kind": st.sampled_from(alerts.KINDS),
    "window_s": st.integers(-5, 4000),
    "threshold": st.floats(-1, 200) | st.integers(0, 100) | st.none(),
    "notify": st.lists(
        st.sampled_from(
            [{"webhook": "https://h.example/x", "secret": "s"}, {"slack": "https://s.example/"},
             {"email": "ops@example.com"}, {"email": "not an address"}, {"webhook": "x"}]
        ), max_size=3,
    ),
    "baseline_s": st.integers(0, 4000),
    "fallback_url": st.sampled_from(["https://fallback.example/", "nope", None]),
}  # fmt: skip
_options = {
    "for_s": st.integers(0, 100),
    "cooldown_s": st.integers(0, 100) | st.floats(-1, 1),
    "hysteresis": st.floats(0, 1.2),
    "count": st.sampled_from(["clicks", "humans", "bots"]),
    "min_clicks": st.integers(0, 5),
    "min_count": st.integers(1, 50),
    "baseline_s": st.integers(0, 4000),
    "p_value": st.floats(0, 0.6),
    "p_clear": st.floats(0, 1),
    "fallback_url": _plausible["fallback_url"],
}


def _rule_of(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    threshold = st.sampled_from([0.02, 0.5] if kind == "conversion_rate_below" else [0, 50])
    required: dict[str, Any] = {
        "name": st.sampled_from(["spike", " launch ", ""]),
        "scope": st.sampled_from([{"link_id": 1}, {"campaign": "Spring"}]),
        "kind": st.just(kind),
        "window_s": st.integers(1, 1300),
    }
    if kind in alerts.NEEDS_THRESHOLD:
        required["threshold"] = threshold
    optional = {k: _options[k] for k in alerts.KIND_OPTIONS[kind]}
    optional.update({"notify": _plausible["notify"], "enabled": st.booleans()})
    return st.fixed_dictionaries(required, optional=optional)


_valid_ish = st.sampled_from(alerts.KINDS).flatmap(_rule_of)
_junk = st.dictionaries(
    st.sampled_from(sorted(alerts.BODY_FIELDS)) | st.text(max_size=6), _json, max_size=8
).flatmap(
    lambda extra: st.fixed_dictionaries(
        {}, optional={k: v | _json for k, v in _plausible.items()}
    ).map(lambda body: {**extra, **body})
)
_bodies = _valid_ish | _junk


def _as_body(rule: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rule.items() if k != "options"} | rule["options"]


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(_bodies)
def test_a_rule_is_stored_or_refused_with_its_field_and_a_stored_rule_validates_to_itself(
    body: dict[str, Any],
) -> None:
    try:
        rule = alerts.validate_rule(body)
    except InvalidField as exc:
        root = (exc.field or "").split(".")[0].split("[")[0]
        assert exc.field is None or exc.field in body or root in body or root in alerts.BODY_FIELDS
        return
    assert (
        rule["kind"] in alerts.KINDS and set(rule["options"]) <= alerts.KIND_OPTIONS[rule["kind"]]
    )
    assert alerts.validate_rule(_as_body(rule)) == rule


@given(
    st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans(), st.floats(0, 30)), max_size=80),
    st.sampled_from([0, 5, 30]),
    st.sampled_from([0, 10, 60]),
)
def test_the_state_machine_fires_after_for_s_resolves_once_and_keeps_the_cooldown(
    readings: list[tuple[bool, bool, bool, int]], for_s: float, cooldown_s: float
) -> None:
    state = alerts.AlertState()
    now = 0.0
    held_since: float | None = None  # since when the fire condition has held
    events: list[tuple[str, float]] = []
    for fire, clear, unknown, dt in readings:
        now += dt
        reading = alerts.Reading(1, fire, clear, "s", "warming up" if unknown else None)
        new, event = alerts.step(state, reading, now, for_s, cooldown_s)
        if unknown:
            assert (new.state, event) == (state.state, None)
        elif state.state == "firing":
            assert new.state == ("resolved" if clear else "firing")
            assert event == ("resolved" if clear else None)
            held_since = None
        else:
            held_since = (now if held_since is None else held_since) if fire else None
            if event == "firing":
                assert held_since is not None and now - held_since >= for_s
                last_resolve = state.resolved_at
                assert last_resolve is None or now - last_resolve >= cooldown_s
            assert new.state == "firing" if event == "firing" else new.state != "firing"
            assert new.state != "pending" or fire
        if event is not None:
            events.append((event, now))
        state = new
    names = [e for e, _t in events]
    assert names == ["firing", "resolved"] * (len(names) // 2) + ["firing"] * (len(names) % 2)


@given(st.integers(0, 300), st.floats(0, 150))
def test_the_poisson_tails_match_a_direct_sum(k: int, lam: float) -> None:
    pmf = [math.exp(-lam + i * math.log(lam) - math.lgamma(i + 1)) if lam > 0 else float(i == 0)
           for i in range(k + 1)]  # fmt: skip
    cdf = sum(pmf)
    assert math.isclose(alerts.poisson_cdf(k, lam), min(1.0, cdf), rel_tol=1e-7, abs_tol=1e-12)
    assert math.isclose(
        alerts.poisson_sf(k, lam), max(0.0, 1 - cdf + pmf[k]), rel_tol=1e-7, abs_tol=1e-9
    )


@given(st.integers(5001, 3_000_000), st.floats(-6, 6))
def test_the_tails_of_large_counts_are_close_to_the_exact_ones(lam: int, z: float) -> None:
    k = max(5001, round(lam + z * math.sqrt(lam)))
    for approx, exact in (
        (alerts.poisson_cdf(k, lam), 1.0 - alerts._gamma_p(k + 1, lam)),
        (alerts.poisson_sf(k, lam), alerts._gamma_p(k, lam)),
    ):
        assert math.isclose(approx, exact, rel_tol=2e-3, abs_tol=1e-10), (k, lam, approx, exact)


def _engine(counts: dict[int, list[tuple[int, int]]], uptime_s: float, now: int) -> Any:
    live = LiveCounters()
    live.add([(link, sec, n, n) for link, series in counts.items() for sec, n in series])
    runtime = SimpleNamespace(config=Config(), live=live, started_at=now - uptime_s)
    return alerts.AlertEngine(runtime)


def _read(engine: Any, body: dict[str, Any], now: int) -> alerts.Reading:
    rule = alerts.validate_rule({"name": "r", **body})
    rule["id"] = 1
    facts = {"members": {}, "tracked": set(), "events": False, "destinations": {}, "checks": {}}
    result: alerts.Reading = asyncio.run(engine.read(rule, facts, now))
    return result


def test_a_threshold_fires_above_it_and_clears_only_past_the_hysteresis_band() -> None:
    now = 1_000_000
    engine = _engine({i: [(now - 5, n)] for i, n in enumerate([11, 10, 9, 2], 1)}, 3600, now)
    above = {"kind": "clicks_above", "window_s": 60, "threshold": 10, "hysteresis": 0.1}
    got = [_read(engine, {**above, "scope": {"link_id": i}}, now) for i in (1, 2, 3)]
    assert [(r.value, r.fire, r.clear) for r in got] == [
        (11, True, False),
        (10, False, False),
        (9, False, True),
    ]
    below = {"kind": "clicks_below", "window_s": 60, "threshold": 5, "hysteresis": 0.2}
    assert _read(engine, {**below, "scope": {"link_id": 4}}, now).fire
    assert not _read(engine, {**below, "scope": {"link_id": 1}}, now).fire
    young = _engine({}, 30, now)  # the counters are younger than the window: no verdict
    assert _read(young, {**below, "scope": {"link_id": 4}}, now).note is not None


def test_an_anomaly_needs_a_surprising_count_and_a_minimum_so_quiet_links_do_not_page() -> None:
    now = 2_000_000
    steady = [(s, 1) for s in range(now - 660, now - 60)]  # 1 a second for 10 minutes
    quiet = [(s, 1) for s in range(now - 660, now - 60, 20)]  # 3 a minute
    history = {
        1: steady + [(now - 30, 60)],  # as usual: 60 in the last minute
        2: steady + [(now - 30, 130)],  # a spike
        3: steady + [(now - 30, 10)],  # a drop
        4: quiet + [(now - 30, 12)],  # 4x its rate, but 12 < min_count
        5: quiet + [(now - 30, 25)],  # a real spike on a quiet link
    }
    engine = _engine(history, 3600, now)
    rule = {"kind": "anomaly", "window_s": 60, "baseline_s": 600, "min_count": 20}
    fired = {i: _read(engine, {**rule, "scope": {"link_id": i}}, now).fire for i in history}
    assert fired == {1: False, 2: True, 3: True, 4: False, 5: True}


def test_deliveries_left_pending_by_a_stop_are_sent_at_the_next_start(tmp_path: Path) -> None:
    from admin import notify
    from edge import catalog
    from edge.db import Database

    receiver = Receiver()
    path = str(tmp_path / "resume.db")
    conn = catalog.open_db(path)
    catalog.create_link(conn, {"url": "https://example.com/"}, slug="r")
    target = {"webhook": receiver.url("/hook-resume"), "secret": SECRET}
    rule = alerts.validate_rule(
        {"name": "r", "scope": {"link_id": 1}, "kind": "zero", "window_s": 60, "notify": [target]}
    )
    alert = alerts.create_alert(conn, rule)
    payload = {"event": "firing", "alert": {"id": alert["id"]}, "summary": "s"}
    (kept,) = notify.add_deliveries(conn, alert["id"], "firing", payload, [target])
    (dropped,) = notify.add_deliveries(
        conn, alert["id"], "firing", payload, [{"slack": "https://s.example/x"}]
    )

    async def start_again() -> None:
        writer = await Database(path).open()
        runtime = SimpleNamespace(config=Config(allow_private_fetch=True), writer=writer)
        notifier = notify.Notifier(runtime)
        await notifier.resume()
        await asyncio.gather(*notifier.tasks)
        await writer.close()

    try:
        asyncio.run(start_again())
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
    ((path_, headers, body),) = receiver.got
    assert path_ == "/hook-resume" and verify(headers, body) and json.loads(body) == payload
    log = {d["id"]: d for d in notify.deliveries(conn, alert["id"], 10)}
    assert log[kept]["status"] == "delivered" and log[kept]["attempts"] == 1
    assert log[dropped]["status"] == "failed" and "removed" in log[dropped]["error"]
