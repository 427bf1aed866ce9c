"""The dashboard in headless Chromium against a real `solrouter dev`, as a person uses it:
sign up, credit the account (dev mode's operator credit), create a key, make requests with
it through the official `openai` SDK while the overview is open (its figures update by
themselves), see the charts and the activity (and its CSV) list them, revoke the key and
see the SDK refused, log out and in again. A screenshot of each page goes to
$SOLROUTER_SCREENSHOTS. Run by tests/browser.rs; prints "browser ok" at the end.
"""

import os
import shutil
import sys
import tempfile

import openai
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

BASE = os.environ["SOLROUTER_BASE_URL"]
SHOTS = os.environ["SOLROUTER_SCREENSHOTS"]
EMAIL = "browser@example.com"
PASSWORD = "correct horse battery staple"
N_REQUESTS = 3
# Requests made with the limited key before its limit must have refused one.
SPEND_LIMIT_REQUESTS_MAX = 50
# Longest any page change may take to show (the overview polls every two seconds).
WAIT_S = 30


def driver(profile):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def shot(browser, name):
    path = os.path.join(SHOTS, f"{name}.png")
    # The whole page, not just the window: set the window to the document's height.
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, max(600, min(height + 40, 4000)))
    assert browser.save_screenshot(path), path
    browser.set_window_size(1280, 1000)


def fill(browser, fields):
    for name, value in fields.items():
        element = browser.find_element(By.NAME, name)
        element.clear()
        element.send_keys(value)


def submit(browser, form_selector="main form"):
    browser.find_element(By.CSS_SELECTOR, form_selector + " button[type=submit]").click()


def text(browser, selector):
    return browser.find_element(By.CSS_SELECTOR, selector).text


def new_key(browser):
    # The form's answer is a new page: wait for it rather than read the old one.
    wait_for(browser, lambda b: text(b, "#new-key").startswith("sr_"), "the new key shown")
    return text(browser, "#new-key")


def wait_for(browser, condition, what):
    # A page may be replaced (a form's redirect, a reload) between finding an element and
    # reading it: that is "not yet", not a failure. Chromium reports the same race as
    # stale or, when the new document replaced the old one mid-command, as an inspector
    # error "Node with given id does not belong to the document".
    retry = (NoSuchElementException, StaleElementReferenceException)

    def settled(b):
        try:
            return condition(b)
        except WebDriverException as e:
            if "does not belong to the document" in (e.msg or ""):
                return False
            raise

    WebDriverWait(browser, WAIT_S, ignored_exceptions=retry).until(settled, message=what)


def main():
    os.makedirs(SHOTS, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="solrouter-chromium-")
    browser = driver(profile)
    try:
        run(browser)
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)
    print("browser ok")


def run(browser):
    # Sign up: the session cookie (HttpOnly, Secure, SameSite=Strict) is kept by the
    # browser over http://127.0.0.1 and opens the dashboard.
    browser.get(BASE + "/signup")
    assert "Sign up" in browser.title, browser.title
    shot(browser, "signup")
    fill(browser, {"email": EMAIL, "password": PASSWORD})
    submit(browser)
    wait_for(browser, lambda b: b.current_url.endswith("/dashboard"), "the overview after sign-up")
    cookies = {c["name"]: c for c in browser.get_cookies()}
    assert cookies["sr_session"]["httpOnly"] and cookies["sr_session"]["secure"], cookies
    assert cookies["sr_session"]["sameSite"] == "Strict", cookies
    assert browser.execute_script("return document.cookie") == "", "no cookie is readable by scripts"
    assert text(browser, "#available") == "$0.000000"

    # Credit the account (dev mode's operator credit).
    browser.get(BASE + "/dashboard/credits")
    fill(browser, {"amount": "5.00"})
    submit(browser, "main form.filters")
    wait_for(browser, lambda b: "$5.000000" in text(b, "main table"), "the top-up in the history")
    shot(browser, "credits")

    # Create a key: shown once.
    browser.get(BASE + "/dashboard/keys")
    fill(browser, {"name": "browser-app"})
    submit(browser, "main form.key-form")
    key = new_key(browser)
    shot(browser, "keys-created")
    browser.refresh()
    assert key not in browser.page_source, "the key is shown only once"
    assert len(browser.find_elements(By.CSS_SELECTOR, "button.danger")) == 1, "one key made"

    # Requests through the official SDK while the overview is open: it updates itself.
    browser.get(BASE + "/dashboard")
    assert text(browser, "#spent") == "$0.000000"
    client = openai.OpenAI(base_url=BASE + "/v1/api", api_key=key, max_retries=0)
    for n in range(N_REQUESTS):
        messages = [{"role": "user", "content": f"request {n} from the browser test"}]
        if n == N_REQUESTS - 1:
            stream = client.chat.completions.create(
                model="mock/echo", messages=messages, stream=True,
                stream_options={"include_usage": True},
            )
            for _ in stream:
                pass
        else:
            answer = client.chat.completions.create(model="mock/echo", messages=messages)
            assert answer.choices[0].message.content, answer
    wait_for(browser, lambda b: text(b, "#spent") != "$0.000000", "the overview's spend to update")
    wait_for(browser, lambda b: text(b, "#available") != "$5.000000", "the balance to update")
    assert browser.current_url.endswith("/dashboard"), "updated without navigating"
    shot(browser, "overview")

    # Charts: per day and per hour, by model and by key.
    for query, series in [("", "mock/echo"), ("?bucket=hour&by=key", "browser-app")]:
        browser.get(BASE + "/dashboard/usage" + query)
        charts = browser.find_elements(By.CSS_SELECTOR, "figure.chart")
        assert len(charts) == 2, browser.page_source
        bars = browser.find_elements(By.CSS_SELECTOR, "figure.chart svg rect[height]")
        assert len(bars) >= 2, "a bar in each chart"
        assert series in text(browser, "main"), (series, text(browser, "main"))
    shot(browser, "usage-hourly-by-key")
    browser.get(BASE + "/dashboard/usage")
    shot(browser, "usage")

    # Activity: every request, filterable, exportable.
    browser.get(BASE + "/dashboard/activity")
    rows = browser.find_elements(By.CSS_SELECTOR, "main table tbody tr")
    assert len(rows) == N_REQUESTS, [r.text for r in rows]
    assert all("browser-app" in r.text and "mock/echo" in r.text and "200" in r.text for r in rows)
    assert "TTFT" in text(browser, "main table thead")
    shot(browser, "activity")
    fill(browser, {"status": "500"})
    submit(browser, "main form.filters")
    wait_for(browser, lambda b: "Nothing yet." in text(b, "main table"), "the status filter")
    csv = browser.execute_async_script(
        "const done = arguments[0];"
        "fetch('/dashboard/activity.csv').then(r => r.text()).then(done);"
    )
    lines = csv.strip().split("\n")
    assert len(lines) == N_REQUESTS + 1 and lines[0].startswith("id,time,"), csv

    browser.get(BASE + "/dashboard/models")
    assert "mock/echo" in text(browser, "main table")
    shot(browser, "models")
    browser.get(BASE + "/dashboard/members")
    assert EMAIL in text(browser, "main table")
    shot(browser, "members")

    # A second key with a spend limit: its requests are refused with a 402 naming the
    # limit once it is reached, while the account still has credit.
    browser.get(BASE + "/dashboard/keys")
    fill(browser, {"name": "limited", "limit": "0.0001"})
    submit(browser, "main form.key-form")
    limited_key = new_key(browser)
    assert "$0.000100 lifetime" in text(browser, "main table"), text(browser, "main table")
    limited = openai.OpenAI(base_url=BASE + "/v1/api", api_key=limited_key, max_retries=0)
    refused = None
    for n in range(SPEND_LIMIT_REQUESTS_MAX):
        try:
            limited.chat.completions.create(
                model="mock/echo", messages=[{"role": "user", "content": f"limited {n}"}]
            )
        except openai.APIStatusError as error:
            refused = error
            break
    assert refused is not None and refused.status_code == 402, refused
    assert "spend limit" in str(refused), refused
    browser.get(BASE + "/dashboard/keys")
    shot(browser, "keys-limited")
    # Disable it, then enable it again: the switch is reversible.
    browser.find_element(By.CSS_SELECTOR, "button[aria-label='Disable limited']").click()
    wait_for(browser, lambda b: "disabled" in text(b, "main table"), "the key shown disabled")
    try:
        limited.chat.completions.create(model="mock/echo", messages=[{"role": "user", "content": "x"}])
        raise AssertionError("a disabled key was accepted")
    except openai.APIStatusError as error:
        assert error.status_code in (401, 403), error
    browser.find_element(By.CSS_SELECTOR, "button[aria-label='Enable limited']").click()
    wait_for(browser, lambda b: "disabled" not in text(b, "main table"), "the key enabled again")

    # Revoke the first key: the SDK is refused at once.
    browser.get(BASE + "/dashboard/keys")
    browser.find_element(By.CSS_SELECTOR, "button[aria-label='Revoke browser-app']").click()
    wait_for(browser, lambda b: "revoked" in text(b, "main table"), "the key shown revoked")
    shot(browser, "keys-revoked")
    try:
        client.chat.completions.create(
            model="mock/echo", messages=[{"role": "user", "content": "after revocation"}]
        )
        raise AssertionError("a revoked key was accepted")
    except openai.AuthenticationError as error:
        assert error.status_code == 401, error

    # Log out, then back in through the form.
    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait_for(browser, lambda b: b.current_url.endswith("/login"), "the login page after logout")
    browser.get(BASE + "/dashboard")
    assert browser.current_url.endswith("/login"), "logged out"
    shot(browser, "login")
    fill(browser, {"email": EMAIL, "password": PASSWORD})
    submit(browser)
    wait_for(browser, lambda b: b.current_url.endswith("/dashboard"), "the overview after login")
    assert text(browser, "#spent") != "$0.000000"


if __name__ == "__main__":
    try:
        main()
    except Exception:
        import traceback

        traceback.print_exc()
        sys.exit(1)
