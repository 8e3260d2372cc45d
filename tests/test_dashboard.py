"""The dashboard in a real browser: Debian's chromium through chromedriver (selenium),
against a real server. Log in, see the overview, send clicks and watch the link's chart and
numbers move without a reload, change the destination from the page and see the edge serve
it, reach the form by keyboard, fit a phone's width, and log no console error.

Skips, saying why, only where no browser is installed (.ci/run installs chromium and
chromium-driver with apt-get). Screenshots go to the test's tmp dir; with
LINKEDGE_SCREENSHOTS=DIR they are copied there too (docs/img/ holds the ones in the docs).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProcess
from tests.test_api import TOKEN, Api, edge_get, start_server
from tests.test_insights import insert_clicks

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_S = 15.0  # a loaded 2-core machine: generous, the test waits only as long as needed

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no browser: install Debian's chromium and chromium-driver (apt-get install "
    "chromium chromium-driver; .ci/run does) to run the dashboard's browser test",
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path / "linkedge.db")
    yield proc
    if proc.proc.poll() is None:
        proc.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a dev dependency")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
        # nothing a test does not need: a faster start, and no request leaves the machine
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-features=Translate,OptimizationHints,MediaRouter",
        "--password-store=basic",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # an element not there yet
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def text_of(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def console_errors(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def shoot(driver: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 1000
    target = os.environ.get("LINKEDGE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


def test_watch_a_link_live_and_change_it_from_the_page(
    server: ServerProcess, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    api = Api(server.admin_port)
    status, link = api.post(
        "/api/links",
        {"url": "https://example.com/before", "slug": "live", "campaign": "launch-day"},
    )
    assert status == 201
    # three earlier links of the campaign with a first hour a day ago: a baseline to show
    day_ago = int(time.time() * 1000) - 86_400_000
    for i in range(3):
        status, peer = api.post(
            "/api/links",
            {"url": "https://example.com/p", "slug": f"p{i}", "campaign": "launch-day"},
        )
        assert status == 201
        insert_clicks(server.db, peer["id"], [(day_ago + m * 60_000, 2, 2) for m in range(60)])
    base = f"http://127.0.0.1:{server.admin_port}"
    driver = browser

    # log in
    driver.get(base + "/")
    wait_for("the login form", lambda: driver.find_element(By.ID, "token"))
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
    newest = f"#recent-body tr[data-link='{link['id']}']"
    wait_for("the overview's row of the link", lambda: driver.find_element(By.CSS_SELECTOR, newest))
    wait_for("the live stream", lambda: text_of(driver, "#live-state").startswith("live"))

    # create a link from the page, with UTM fields: its short URL and a copy button
    for name, value in (
        ("url", "https://example.com/new"),
        ("slug", "fresh"),
        ("utm_source", "newsletter"),
    ):
        driver.find_element(By.ID, f"new-{name}").send_keys(value)
    driver.find_element(By.CSS_SELECTOR, "#create button[type=submit]").click()
    wait_for(
        "the new short URL", lambda: text_of(driver, "#created-url") == "https://localhost/fresh"
    )
    assert driver.find_element(By.CSS_SELECTOR, "#created button.copy").is_enabled()
    status, fresh = api.get("/api/links/localhost/fresh")
    assert status == 200 and fresh["utm_source"] == "newsletter"
    assert edge_get(server.edge_port, "/fresh", ua="curl/8.5.0") == (
        302,
        "https://example.com/new?utm_source=newsletter",
    )

    # the link view; then clicks, seen without a reload
    driver.get(f"{base}/dashboard/#/link/{link['id']}")
    wait_for("the link's numbers", lambda: text_of(driver, "#link-clicks-60m") == "0")
    wait_for("the live stream", lambda: text_of(driver, "#live-state").startswith("live"))
    driver.execute_script("window.__sameDocument = true")
    line = "#chart-60m svg polyline.line"
    before = driver.find_element(By.CSS_SELECTOR, line).get_attribute("points")
    humans_ua = (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0 Safari/537.36"
    )
    for _ in range(4):
        assert edge_get(server.edge_port, "/live", ua=humans_ua)[0] == 302
    assert edge_get(server.edge_port, "/live", ua="curl/8.5.0")[0] == 302
    wait_for("5 clicks on the page", lambda: text_of(driver, "#link-clicks-60m") == "5")
    assert driver.execute_script("return window.__sameDocument === true"), "the page reloaded"
    wait_for(
        "the chart to move",
        lambda: driver.find_element(By.CSS_SELECTOR, line).get_attribute("points") != before,
    )
    # the page's numbers are the API's
    status, stats = api.get(f"/api/links/{link['id']}/stats?from=-60m&interval=minute")
    assert status == 200
    for css, key in (
        ("#link-clicks-60m", "clicks"),
        ("#link-humans-60m", "humans"),
        ("#link-bots-60m", "bots"),
    ):
        assert text_of(driver, css) == str(stats["totals"][key]), css
    assert stats["totals"] == {**stats["totals"], "clicks": 5, "humans": 4, "bots": 1}
    assert text_of(driver, "#link-velocity") == stats["velocity"]["label"]
    # its first hour against the earlier links' curve (a band and a median)
    wait_for(
        "the first-hour chart", lambda: driver.find_element(By.ID, "first-hour").is_displayed()
    )
    assert driver.find_elements(By.CSS_SELECTOR, "#first-hour svg polygon.band")
    assert "from 3 earlier links of campaign 'launch-day'" in text_of(driver, "#baseline")

    # change the destination from the page, by keyboard: Tab reaches the field
    driver.find_element(By.TAG_NAME, "body").click()
    active = None
    for _ in range(40):
        driver.switch_to.active_element.send_keys(Keys.TAB)
        active = driver.switch_to.active_element.get_attribute("id")
        if active == "dest":
            break
    assert active == "dest", "the destination field is not reachable with Tab"
    field = driver.switch_to.active_element
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys("https://example.com/after")
    field.send_keys(Keys.ENTER)
    wait_for(
        "the page to say the edge serves it",
        lambda: "served by the edge" in text_of(driver, "#notice"),
    )
    status, location = edge_get(server.edge_port, "/live", ua=humans_ua)
    assert (status, location) == (302, "https://example.com/after")
    wait_for("the history entry", lambda: "destination" in text_of(driver, "#history"))
    wait_for(
        "a change marker on the chart",
        lambda: driver.find_elements(By.CSS_SELECTOR, "#chart-60m g.marker"),
    )
    assert text_of(driver, "#current-url") == "https://example.com/after"
    wait_for("6 clicks on the page", lambda: text_of(driver, "#link-clicks-60m") == "6")
    # pause and resume from the page: the edge answers 410, then redirects again
    driver.find_element(By.ID, "pause").click()
    wait_for("paused", lambda: "Paused: saved and served" in text_of(driver, "#notice"))
    assert edge_get(server.edge_port, "/live", ua="curl/8.5.0")[0] == 410
    wait_for("the resume button", lambda: text_of(driver, "#pause") == "Resume")
    driver.find_element(By.ID, "pause").click()
    wait_for("resumed", lambda: "Resumed: saved and served" in text_of(driver, "#notice"))
    assert edge_get(server.edge_port, "/live", ua="curl/8.5.0")[0] == 302
    # a paused link's 410 is not a click: 7 now
    wait_for("7 clicks on the page", lambda: text_of(driver, "#link-clicks-60m") == "7")
    driver.set_window_size(1280, 2200)  # the whole page in the screenshot
    shoot(driver, tmp_path, "dashboard-link")
    driver.set_window_size(1280, 1000)

    # launch from the page (the launch route): on the link and in its history
    wait_for("the launch button", lambda: driver.find_element(By.ID, "launch").is_displayed())
    driver.find_element(By.ID, "launch").click()
    wait_for("launched", lambda: "Launched: saved and served" in text_of(driver, "#notice"))
    status, launched = api.get(f"/api/links/{link['id']}")
    assert launched["launched_at"] is not None
    wait_for("the launch in the history", lambda: " launch: " in text_of(driver, "#history"))

    # variant weights from the page: the API has them, the history says "weights"
    variants = [
        {"url": "https://example.com/x", "name": "x"},
        {"url": "https://example.com/y", "name": "y"},
    ]
    status, _ = api.patch(f"/api/links/{link['id']}", {"variants": variants})
    assert status == 200
    driver.refresh()
    wait_for("the weights", lambda: driver.find_element(By.ID, "weight-1"))
    weight = driver.find_element(By.ID, "weight-1")
    weight.send_keys(Keys.CONTROL, "a")
    weight.send_keys("3")
    driver.find_element(By.CSS_SELECTOR, "#weights button[type=submit]").click()
    wait_for(
        "the weights saved",
        lambda: "Weights changed: saved and served" in text_of(driver, "#notice"),
    )
    status, now = api.get(f"/api/links/{link['id']}")
    assert [v["weight"] for v in now["variants"]] == [1, 3]
    wait_for("the weights in the history", lambda: " weights: " in text_of(driver, "#history"))

    # the overview's numbers are the API's too
    row = f"#links-body tr[data-link='{link['id']}']"
    driver.get(base + "/dashboard/#/")
    wait_for("the overview row", lambda: text_of(driver, row + " td.clicks") == "7")
    status, stats = api.get(f"/api/links/{link['id']}/stats?from=-60m&interval=minute")
    assert text_of(driver, row + " td.humans") == str(stats["totals"]["humans"])
    assert text_of(driver, row + " td.bots") == str(stats["totals"]["bots"])
    status, groups = api.get("/api/stats?group_by=campaign&from=-60m")
    (group,) = [g for g in groups["groups"] if g["key"] == "launch-day"]
    campaign_row = "#campaigns-body tr[data-campaign='launch-day']"
    for cell in ("clicks", "humans", "bots"):
        assert text_of(driver, f"{campaign_row} td.{cell}") == str(group[cell]), cell
    shoot(driver, tmp_path, "dashboard-overview")

    # a phone's width: nothing wider than the screen (tables scroll in their box)
    driver.set_window_size(390, 844)
    driver.get(f"{base}/dashboard/#/campaign/launch-day")
    wait_for("the campaign view", lambda: text_of(driver, "#campaign-clicks") == "7")
    assert "15 min: median 30" in text_of(driver, "#campaign-baseline")  # 2 humans a minute
    width = driver.execute_script("return document.documentElement.scrollWidth")
    inner = driver.execute_script("return window.innerWidth")
    assert width <= inner, f"the page is {width}px wide on a {inner}px screen"
    shoot(driver, tmp_path, "dashboard-phone")
    driver.get(f"{base}/dashboard/#/report/launch-day")
    wait_for("the report", lambda: "Best channel" in text_of(driver, "#report-facts"))
    assert "Best placement" in text_of(driver, "#report-facts")
    assert console_errors(driver) == []
