"""The dashboard in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, via Selenium).

Against a real ``wflo-otel ui`` server with a token: sign-in is required and works through
the form, every page loads with no console error (the browser's own log, CSP violations
included), the totals shown equal the SQL, the filters change the list, and a span named
``<script>...`` shows as text and runs nothing. Screenshots of each page go to
``artifacts/screenshots/`` (gitignored; CI keeps them as artifacts).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import IN_CI
from dashboard_support import HOSTILE, dashboard_spans, write_spans
from test_store_support import query
from wflo_otel.dashboard.server import UIServer

pytestmark = pytest.mark.one_leg

SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
TOKEN = "browser-test-token"


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser():
    found = _chromium()
    if found is None:
        message = "chromium and chromedriver are not installed (apt-get install chromium chromium-driver; .ci/run does)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        if IN_CI:
            raise
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('browser')}/wflo.db"
    write_spans(url, dashboard_spans())
    with UIServer(url, port=0, token=TOKEN) as server:
        yield server, url


@pytest.fixture(scope="module")
def signed_in(browser, site):
    """The browser after signing in through the form (the test of the form itself is below)."""
    server, _ = site
    _sign_in(browser, server.url)
    return browser


def _sign_in(driver, base: str) -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(base + "/executions")
    assert "/signin" in driver.current_url
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.ID, "signin-submit").click()
    assert driver.current_url.endswith("/executions"), driver.current_url


def _visit(driver, url: str, shot: str) -> None:
    """Load ``url``, save a screenshot, and fail on any console error the page logged."""
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(url)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"{shot}.png"))
    errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert not errors, f"console errors on {url}: {errors}"


def test_sign_in_is_required_and_the_form_signs_in(browser, site):
    from selenium.webdriver.common.by import By

    server, _ = site
    browser.delete_all_cookies()
    browser.get(server.url + "/")
    assert "/signin" in browser.current_url
    browser.find_element(By.ID, "token").send_keys("wrong")
    browser.find_element(By.ID, "signin-submit").click()
    assert "wrong token" in browser.find_element(By.ID, "signin-error").text
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "signin.png"))
    _sign_in(browser, server.url)
    session = browser.get_cookie("wflo_session")
    assert session["httpOnly"] and session["sameSite"] == "Strict" and TOKEN not in session["value"]


def test_every_page_loads_without_console_errors(signed_in, site):
    server, url = site
    (execution_id,) = query(url, "SELECT execution_id FROM step_executions WHERE name = :n LIMIT 1", n=HOSTILE)[0]
    for path, shot in (
        ("/?window=today", "overview-today"),
        ("/?window=7d&by=workflow", "overview-7d-by-workflow"),
        ("/?window=30d&by=tenant", "overview-30d-by-tenant"),
        ("/executions?window=7d", "executions"),
        (f"/executions/{execution_id}", "execution"),
    ):
        _visit(signed_in, server.url + path, shot)


def test_the_totals_shown_equal_the_sql(signed_in, site):
    from selenium.webdriver.common.by import By

    server, url = site
    _visit(signed_in, server.url + "/?window=7d", "overview-totals")
    cost, calls, refusals = query(
        url,
        "SELECT SUM(cost_usd), SUM(CASE WHEN COALESCE(error_type, '') <> 'BudgetExceededError' THEN 1 ELSE 0 END),"
        " SUM(CASE WHEN error_type = 'BudgetExceededError' THEN 1 ELSE 0 END) FROM step_executions WHERE kind = 'llm'",
    )[0]
    assert signed_in.find_element(By.ID, "total-cost").text == f"${cost:,.6f}"
    assert signed_in.find_element(By.ID, "total-calls").text == f"{calls:,}"
    assert signed_in.find_element(By.ID, "total-refusals").text == f"{refusals:,}"


def test_the_filters_change_the_executions_listed(signed_in, site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    server, url = site
    _visit(signed_in, server.url + "/executions?window=7d", "executions-all")
    rows = lambda: signed_in.find_elements(By.CSS_SELECTOR, "#executions tbody tr")  # noqa: E731
    assert len(rows()) == 30
    Select(signed_in.find_element(By.ID, "workflow")).select_by_value("triage")
    signed_in.find_element(By.ID, "apply").click()
    assert len(rows()) == 10 and all("triage" in r.text for r in rows())
    Select(signed_in.find_element(By.ID, "status")).select_by_value("BUDGET_EXCEEDED")
    signed_in.find_element(By.ID, "apply").click()
    (expected,) = query(url, "SELECT COUNT(*) FROM workflow_executions WHERE workflow_id = 'triage' AND status = 'BUDGET_EXCEEDED'")[0]
    assert len(rows()) == expected and 0 < expected < 10
    signed_in.save_screenshot(str(SCREENSHOTS / "executions-filtered.png"))
    assert not [e for e in signed_in.get_log("browser") if e["level"] == "SEVERE"]


def test_a_span_named_script_renders_as_text_and_runs_nothing(signed_in, site):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    server, url = site
    (execution_id,) = query(url, "SELECT execution_id FROM step_executions WHERE name = :n LIMIT 1", n=HOSTILE)[0]
    _visit(signed_in, f"{server.url}/executions/{execution_id}", "execution-hostile")
    assert HOSTILE in signed_in.find_element(By.ID, "steps").text
    assert signed_in.find_elements(By.TAG_NAME, "script") == []
    with pytest.raises(NoAlertPresentException):
        signed_in.switch_to.alert.text
