"""The dashboard in a real browser (Debian's Chromium, driven by Playwright).

Each number read from the page is compared with the public API's answer to
the same question; screenshots of every page are saved in the test's
temporary directory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import GENEROUS_LIMITS, LiveServer
from kaie_analytics.demo import generate_demo
from servers import CHROMIUM_ARGS, chromium

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    server = LiveServer(tmp_path_factory.mktemp("dashboard") / "d",
                        env={"KAIE_RATE_LIMITS": GENEROUS_LIMITS})  # fmt: skip
    key = server.create_key("demo")
    server.start()
    for _, events in generate_demo(days=5):
        for i in range(0, len(events), 1000):
            r = httpx.post(f"{server.url}/v1/events", json={"events": events[i : i + 1000]},
                           headers={"Authorization": f"Bearer {key}"})  # fmt: skip
            assert r.status_code == 200
    yield server, key
    server.stop()


@pytest.fixture
def page(site: tuple[LiveServer, str]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        tab.on("pageerror", lambda e: errors.append(str(e)))
        yield tab
        browser.close()
        assert not errors, errors  # no script error on any page


def api(site: tuple[LiveServer, str], path: str, **params: str) -> Any:
    server, key = site
    r = httpx.get(server.url + path, params=params, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def stat(page: Any, name: str) -> str:
    return page.locator(f"[data-stat={name}]").first.inner_text()  # type: ignore[no-any-return]


def shows(page: Any, name: str, expected: str) -> None:
    """Wait (briefly) until the page's number ``name`` reads ``expected``: after a change
    the page draws again, from new answers."""
    deadline = time.monotonic() + 10
    while (seen := stat(page, name)) != expected:
        assert time.monotonic() < deadline, f"{name}: the page shows {seen}, the API {expected}"
        page.wait_for_timeout(100)


def sign_in(page: Any, site: tuple[LiveServer, str]) -> None:
    server, key = site
    page.goto(server.url + "/")
    page.fill("#api-key", key)
    page.keyboard.press("Enter")  # the keyboard is enough
    page.wait_for_selector(".card.workflow .stat")


def last_30_days(timezone: str) -> dict[str, str]:
    """The page's default period, as the API takes it."""
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    end = datetime.now(ZoneInfo(timezone)).date()
    return {"start_date": str(end - timedelta(days=29)), "end_date": str(end), "timezone": timezone}


def test_sign_in_workflow_numbers_granularity_and_time_zone(
    page: Any, site: tuple[LiveServer, str], tmp_path: Path
) -> None:
    _, key = site
    sign_in(page, site)
    page.screenshot(path=tmp_path / "overview.png", full_page=True)
    assert key not in page.url and page.context.cookies() == []
    assert page.evaluate("sessionStorage.getItem('kaie.api_key')") == key
    page.click("text=Support Bot")
    page.wait_for_selector("[data-stat=total_executions]")
    expected = api(site, "/v1/analytics/workflows/support-bot", **last_30_days("UTC"))
    shows(page, "total_executions", f"{expected['metrics']['total_executions']:,}")
    shows(page, "success_rate", f"{expected['metrics']['success_rate'] * 100:.1f}%")
    page.screenshot(path=tmp_path / "workflow.png", full_page=True)
    page.select_option("#granularity", "week")
    page.wait_for_url("**granularity=week**")
    page.wait_for_selector("#granularity >> [value=week]:checked", state="attached")
    shows(page, "total_executions", f"{expected['metrics']['total_executions']:,}")
    page.fill("#timezone", "Pacific/Kiritimati")  # UTC+14: another set of days
    page.keyboard.press("Enter")
    page.wait_for_url("**Kiritimati**")
    far = api(site, "/v1/analytics/workflows/support-bot", **last_30_days("Pacific/Kiritimati"))
    page.wait_for_selector("#timezone[value='Pacific/Kiritimati']")
    shows(page, "total_executions", f"{far['metrics']['total_executions']:,}")
    page.screenshot(path=tmp_path / "workflow-week-kiritimati.png", full_page=True)
    page.set_viewport_size({"width": 390, "height": 800})  # a phone
    page.screenshot(path=tmp_path / "workflow-phone.png", full_page=True)
    page.click("#sign-out")
    page.wait_for_selector("#api-key")
    assert page.evaluate("sessionStorage.getItem('kaie.api_key')") is None


def test_realtime_moves_after_an_ingest(
    page: Any, site: tuple[LiveServer, str], tmp_path: Path
) -> None:
    """A message on a channel nothing else uses appears on the page by itself (its
    numbers refresh every 5 seconds), as the API counts it."""
    server, key = site
    sign_in(page, site)
    page.goto(server.url + "/#/realtime")
    page.wait_for_selector("[data-stat=messages_in_last_hour]")
    assert page.locator("td", has_text="telegram_test").count() == 0
    event = {"type": "message.sent", "timestamp": datetime.now(UTC).isoformat(),
             "workflow_id": "support-bot", "execution_id": "live-1",
             "customer_id": "live-customer", "channel": "telegram_test"}  # fmt: skip
    r = httpx.post(f"{server.url}/v1/events", json={"events": [event]},
                   headers={"Authorization": f"Bearer {key}"})  # fmt: skip
    assert r.json()["data"]["accepted"] == 1
    row = page.locator("tr", has_text="telegram_test")
    row.wait_for(timeout=15_000)
    counted = api(site, "/v1/analytics/realtime")["channel_metrics"]["telegram_test"]
    assert row.locator("td").nth(2).inner_text() == str(counted["messages_in_last_hour"]) == "1"
    page.screenshot(path=tmp_path / "realtime.png", full_page=True)


def test_customers_journeys_and_a_report_downloaded(
    page: Any, site: tuple[LiveServer, str], tmp_path: Path
) -> None:
    server, _ = site
    sign_in(page, site)
    page.goto(server.url + "/#/customers")
    page.wait_for_selector("[data-stat=total_customers]")
    engagement = api(site, "/v1/analytics/customers/engagement", **last_30_days("UTC"))
    shows(page, "total_customers", f"{engagement['engagement']['total_customers']:,}")
    page.click("text=support")  # the journey types the API named
    page.wait_for_selector(".journey table")
    page.screenshot(path=tmp_path / "customers.png", full_page=True)
    page.goto(server.url + "/#/reports")
    page.wait_for_selector("#report-form")
    page.select_option("select[name=format]", "csv")
    page.click("#report-form button[type=submit]")
    link = page.wait_for_selector("a[download]", timeout=30_000)
    page.screenshot(path=tmp_path / "reports.png", full_page=True)
    r = httpx.get(link.get_attribute("href"))  # the signed link alone, as a browser would
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert b"total_executions" in r.content


def test_the_page_is_strict_about_where_scripts_come_from(site: tuple[LiveServer, str]) -> None:
    server, _ = site
    r = httpx.get(server.url + "/")
    policy = r.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "https://" not in r.text  # nothing from elsewhere
    assert httpx.get(server.url + "/dashboard/plotly.min.js").status_code == 200
