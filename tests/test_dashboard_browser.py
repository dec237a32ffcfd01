"""The dashboard in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, via Selenium).

Against a real ``wflo-otel ui`` server with a token: sign-in is required and works through
the form, every page loads with no console error (the browser's own log, CSP violations
included), the totals shown equal the SQL, the filters change the list, and a span named
``<script>...`` shows as text and runs nothing, the Limits page shows the spend the SQL has,
and an Approve click releases a workflow waiting in ``require_approval``. Screenshots of each page go to
``artifacts/screenshots/`` (gitignored; CI keeps them as artifacts).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import IN_CI
from dashboard_support import HOSTILE, add_limit_periods, dashboard_spans, write_spans
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
    add_limit_periods(url)
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
    from selenium.webdriver.support.ui import WebDriverWait

    driver.delete_all_cookies()
    driver.get(base + "/executions")
    assert "/signin" in driver.current_url
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    _submit(driver, "signin-submit")
    # The sign-in page's own URL ends in ``next=/executions`` too: wait for the cookie and the page.
    WebDriverWait(driver, 10).until(lambda d: d.get_cookie("wflo_session") and "/signin" not in d.current_url)
    assert driver.current_url.endswith("/executions"), driver.current_url


def _visit(driver, url: str, shot: str) -> None:
    """Load ``url``, save a screenshot, and fail on any console error the page logged."""
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(url)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"{shot}.png"))
    errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert not errors, f"console errors on {url}: {errors}"


def _submit(driver, button_id: str) -> None:
    """Click a submit button and wait until the next page has loaded (a click does not wait for it).

    The old page is marked by a script variable; a new document does not have it. Checking
    "the old element is stale" instead races chromedriver mid-navigation ("Node with given
    id does not belong to the document"), so any driver error while the page changes is
    a "not yet".
    """
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script("window.__wfloOldPage = true")
    driver.find_element(By.ID, button_id).click()
    WebDriverWait(driver, 10, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script("return !window.__wfloOldPage && document.readyState === 'complete'")
    )


def test_sign_in_is_required_and_the_form_signs_in(browser, site):
    from selenium.webdriver.common.by import By

    server, _ = site
    browser.delete_all_cookies()
    browser.get(server.url + "/")
    assert "/signin" in browser.current_url
    browser.find_element(By.ID, "token").send_keys("wrong")
    _submit(browser, "signin-submit")
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
        ("/limits", "limits"),
        ("/approvals", "approvals-read-only"),
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
    _submit(signed_in, "apply")
    assert len(rows()) == 10 and all("triage" in r.text for r in rows())
    Select(signed_in.find_element(By.ID, "status")).select_by_value("BUDGET_EXCEEDED")
    _submit(signed_in, "apply")
    (expected,) = query(url, "SELECT COUNT(*) FROM workflow_executions WHERE workflow_id = 'triage' AND status = 'BUDGET_EXCEEDED'")[0]
    assert len(rows()) == expected and 0 < expected < 10
    signed_in.save_screenshot(str(SCREENSHOTS / "executions-filtered.png"))
    _visit(signed_in, server.url + "/executions?window=7d", "executions-all")
    signed_in.find_element(By.ID, "attr").send_keys("tenant.id=tenant-0")
    _submit(signed_in, "apply")
    (tenant0,) = query(url, "SELECT COUNT(DISTINCT execution_id) FROM step_executions WHERE parent_span_id IS NULL AND json_extract(attributes, '$.\"tenant.id\"') = 'tenant-0'")[0]
    assert len(rows()) == tenant0 == 15
    assert signed_in.find_element(By.ID, "attr").get_attribute("value") == "tenant.id=tenant-0"
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


def test_the_limits_page_shows_the_spent_amount_the_sql_has(signed_in, site):
    from selenium.webdriver.common.by import By

    server, url = site
    _visit(signed_in, server.url + "/limits", "limits-spent")
    expected = query(url, "SELECT spent_usd FROM spend_per_limit WHERE period_end > CURRENT_TIMESTAMP ORDER BY limit_name, limit_key")
    shown = [signed_in.find_element(By.ID, f"limit-spent-{i}").text for i in range(len(expected))]
    assert len(expected) == 3 and shown == [f"${spent:,.6f}" for (spent,) in expected]
    assert len(signed_in.find_elements(By.CSS_SELECTOR, "#limits .meter.over")) == 1  # tenant-0 spent past its limit


@pytest.fixture
def waiting_workflow(tmp_path, monkeypatch):
    """A workflow in another thread waiting in ``wf.require_approval`` on a PostgreSQL database
    (released by the store's NOTIFY), and the dashboard on it with approvals allowed."""
    import threading
    import time

    import wflo_otel
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from conftest import throwaway_database
    from wflo_otel.controls.store import close_stores

    with throwaway_database("postgresql", tmp_path) as url:
        write_spans(url, dashboard_spans(3, hostile_every=0))
        monkeypatch.setenv("WFLO_DATABASE_URL", url)
        handle = wflo_otel.configure(tracer_provider=TracerProvider(), exporter=InMemorySpanExporter(), batch=False)
        outcome: dict = {}

        def wait() -> None:
            try:
                with wflo_otel.workflow("refunds") as wf:
                    outcome["decision"] = wf.require_approval("send-refund", message="Refund $420 to ACME", timeout_s=60)
            except Exception as exc:  # the test reports it
                outcome["error"] = exc
            outcome["returned_at"] = time.monotonic()

        waiter = threading.Thread(target=wait, daemon=True)
        try:
            with UIServer(url, port=0, token=TOKEN, allow_approvals=True) as server:
                waiter.start()
                yield server, url, waiter, outcome
        finally:
            waiter.join(timeout=70)
            handle.shutdown()
            close_stores()


def test_an_approve_click_releases_a_waiting_workflow(browser, waiting_workflow):
    import time

    from selenium.webdriver.common.by import By

    server, url, waiter, outcome = waiting_workflow
    deadline = time.monotonic() + 15
    while not query(url, "SELECT id FROM approval_requests WHERE status = 'PENDING'"):
        assert time.monotonic() < deadline, "the workflow never asked for approval"
        time.sleep(0.05)
    ((approval_id,),) = query(url, "SELECT id FROM approval_requests WHERE status = 'PENDING'")
    _sign_in(browser, server.url)
    _visit(browser, server.url + "/approvals", "approvals-pending")
    assert "Refund $420 to ACME" in browser.find_element(By.ID, "pending").text
    # A second reviewer has the same page open in another tab, and will reject after alice approved.
    first_tab = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(server.url + "/approvals")
    browser.find_element(By.ID, f"by-{approval_id}").send_keys("bob")
    browser.find_element(By.ID, f"comment-{approval_id}").send_keys("too much")
    second_tab = browser.current_window_handle
    browser.switch_to.window(first_tab)
    browser.find_element(By.ID, f"by-{approval_id}").send_keys("alice")
    browser.find_element(By.ID, f"comment-{approval_id}").send_keys("known customer")
    assert waiter.is_alive()  # still waiting before the click
    clicked = time.monotonic()
    _submit(browser, f"approve-{approval_id}")
    waiter.join(timeout=5)
    assert not waiter.is_alive() and "error" not in outcome, outcome
    assert outcome["returned_at"] - clicked < 2.0
    decision = outcome["decision"]
    assert (decision.id, decision.status, decision.decided_by, decision.comment) == (approval_id, "APPROVED", "alice", "known customer")
    assert browser.current_url.endswith(f"/approvals?decided={approval_id}")
    assert "approved by alice" in browser.find_element(By.ID, "notice").text
    assert "alice" in browser.find_element(By.ID, "decided").text
    browser.save_screenshot(str(SCREENSHOTS / "approvals-decided.png"))
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]

    browser.switch_to.window(second_tab)
    _submit(browser, f"reject-{approval_id}")
    conflict = browser.find_element(By.ID, "conflict").text
    assert "Already decided: APPROVED by alice" in conflict and "known customer" in conflict
    browser.save_screenshot(str(SCREENSHOTS / "approvals-conflict.png"))
    browser.close()
    browser.switch_to.window(first_tab)
    assert query(url, "SELECT status, decided_by FROM approval_requests WHERE id = :i", i=approval_id) == [("APPROVED", "alice")]
