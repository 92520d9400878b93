"""End-to-end: the playground page `GET /` serves, loaded from the real worker under `wrangler dev`
into Debian's headless Chromium (driven by Playwright), used as a person would: a key typed and
Enter pressed, a question asked, the answer watched as it streams in, sources and the
Server-Timing bar read, a wrong key and a spent rate limit explained. The first test saves the
screenshot the README shows (docs/playground.png)."""
import json
import os
import tempfile
import time

import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import CHAT_MODEL, KEYS, ROOT, SLOW_MODEL, quoted_opening

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT = os.path.join(ROOT, "docs", "playground.png")
QUESTION = "How do I read a file line by line?"


@pytest.fixture(scope="module")
def browser():
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: scripts/install-toolchain installs Debian's chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Page:
    """A fresh browser context (its own sessionStorage) on the playground, recording every
    request the page makes and every console error."""

    def __init__(self, browser, worker, **context):
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.requests, self.errors = [], []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(worker.base + "/")

    def connect(self, key):
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_label("API key").press("Enter")

    def close(self):
        self.context.close()


@pytest.fixture
def page(browser, rag):
    opened = []

    def open_page(**context):
        opened.append(Page(browser, rag["worker"], **context))
        return opened[-1]

    yield open_page
    for p in opened:
        p.close()


def test_the_page_is_served_without_a_key_under_a_strict_policy(rag):
    worker = rag["worker"]
    for path, media_type in [("/", "text/html"), ("/playground.js", "text/javascript"),
                             ("/playground.css", "text/css"), ("/playground.svg", "image/svg+xml")]:
        status, headers, body = worker.call("GET", path, headers={"authorization": None})
        headers = {k.lower(): v for k, v in headers.items()}
        assert status == 200 and headers["content-type"].startswith(media_type), (path, status, headers)
        policy = headers["content-security-policy"]
        for directive in ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "style-src 'self'",
                          "frame-ancestors 'none'", "base-uri 'none'"]:
            assert directive in policy, (path, policy)
        assert headers["x-content-type-options"] == "nosniff"
    status, _, problem = worker.call("POST", "/", headers={"authorization": None})
    assert status == 405 and problem["status"] == 405


def test_an_answer_streams_in_with_its_sources_in_a_real_browser(rag, page):
    worker = rag["worker"]
    tab = page(viewport={"width": 1180, "height": 900}, device_scale_factor=1)
    p = tab.page
    tab.connect(KEYS["a"])
    expect(p.get_by_label("Index")).to_have_value("docs")
    expect(p.locator("#index-info")).to_contain_text("passages in 4 shards")

    p.get_by_label("Question").fill(QUESTION)
    p.get_by_label("Model").fill(SLOW_MODEL)  # 10 tokens a second: slow enough to watch
    p.get_by_label("Passages").fill("3")
    p.get_by_label("Question").press("Control+Enter")

    # Watch the answer while it streams: its text must be seen growing before it completes.
    seen, deadline = [], time.time() + 60
    while time.time() < deadline:
        state, length = p.evaluate(
            "() => [document.getElementById('ask-result').dataset.state,"
            " document.getElementById('answer').textContent.length]")
        if state == "streaming":
            seen.append(length)
        if state in ("done", "error"):
            break
        time.sleep(0.15)
    assert state == "done", (state, p.locator("#ask-msg").inner_text())
    growing = sorted({n for n in seen if n > 0})
    assert len(growing) >= 2 and seen == sorted(seen), seen
    final = p.locator("#answer").inner_text()
    assert len(final) > growing[0]

    # The sources are what /v1/search finds for the question, with score, shard and source.
    status, _, found = worker.call("POST", "/v1/search", dict(index="docs", text=QUESTION, k=3))
    assert status == 200, found
    items = p.locator("#sources li")
    expect(items).to_have_count(3)
    for n, (item, match) in enumerate(zip(items.all(), found["matches"]), 1):
        text = " ".join(item.inner_text().split())
        assert f"[{n}]" in text and f"id {match['id']}" in text, (text, match["id"])
        assert match["shard"] in text and match["metadata"]["source"] in text, text
        assert f"score {match['score']:.3f}" in text, text
        # devorigin quotes the first sentence of each source with its marker.
        assert f"[{n}]" in final and quoted_opening(match["text"]) in final, (n, final)
    expect(p.locator("#answer a.cite").first).to_have_attribute("href", "#src-1")

    # The Server-Timing bar: the origin's share and the embedding are shown.
    legend = p.locator("#ask-timing .legend").inner_text()
    assert "origin" in legend and "embed" in legend and "search" in legend, legend
    assert p.locator("#ask-timing .bar span").count() >= 2

    # The key went only to this origin, and the page broke no rule of its CSP.
    assert tab.requests and all(url.startswith(worker.base + "/") for url in tab.requests), tab.requests
    assert not tab.errors, tab.errors
    assert p.evaluate("() => sessionStorage.getItem('edgerag.key')") == KEYS["a"]

    os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
    p.evaluate("() => document.activeElement.blur()")
    p.screenshot(path=SCREENSHOT, full_page=True)


def test_a_wrong_key_is_explained(rag, page):
    tab = page()
    tab.connect("not-" + KEYS["a"])
    message = tab.page.locator("#connect-msg")
    expect(message).to_be_visible()
    expect(message).to_contain_text("The API key was not accepted.")
    expect(message).to_contain_text("request id")
    expect(tab.page.get_by_label("Index")).to_be_disabled()
    assert tab.page.evaluate("() => sessionStorage.getItem('edgerag.key')") is None


def test_a_spent_rate_limit_is_explained_with_its_wait(rag, page):
    """The limited key allows 3 requests an hour (other tests may have spent some already)."""
    tab = page()
    tab.connect(KEYS["limited"])
    p = tab.page
    p.wait_for_function("() => document.getElementById('index-info').textContent"
                        " || !document.getElementById('connect-msg').hidden")
    p.get_by_role("tab", name="Search").click()
    message = p.locator("#search-msg")
    for _ in range(4):
        if p.locator("#connect-msg").is_visible():
            break  # connecting alone spent the rest of the bucket
        p.get_by_label("Query text").fill(QUESTION)
        p.get_by_label("Query text").press("Enter")
        p.wait_for_function("() => !document.getElementById('search-go').disabled")
        if message.is_visible():
            break
    box = message if message.is_visible() else p.locator("#connect-msg")
    expect(box).to_contain_text("This key's rate limit is used up.")
    expect(box).to_contain_text("Try again in")


def test_search_works_by_keyboard_on_a_phone_sized_screen(rag, page):
    worker = rag["worker"]
    tab = page(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
    p = tab.page
    tab.connect(KEYS["a"])
    expect(p.get_by_label("Index")).to_have_value("docs")
    # Tabs follow the ARIA pattern: arrow keys move between them.
    p.get_by_role("tab", name="Ask").focus()
    p.keyboard.press("ArrowRight")
    expect(p.get_by_role("tab", name="Search")).to_have_attribute("aria-selected", "true")
    expect(p.locator("#panel-search")).to_be_visible()
    expect(p.locator("#panel-ask")).to_be_hidden()

    p.get_by_label("Query text").fill("virtual environments")
    p.get_by_label("k", exact=True).fill("4")
    p.get_by_label("Filter (JSON)").fill("{not json")
    p.get_by_label("Query text").press("Enter")
    expect(p.locator("#search-msg")).to_contain_text("The filter is not a JSON object")

    status, _, found = worker.call("POST", "/v1/search", dict(index="docs", text="virtual environments", k=4))
    assert status == 200, found
    source = found["matches"][0]["metadata"]["source"]
    p.get_by_label("Filter (JSON)").fill(json.dumps({"source": source}))
    p.get_by_label("Query text").press("Enter")
    expect(p.locator("#matches li")).to_have_count(4)
    status, _, filtered = worker.call("POST", "/v1/search", dict(index="docs", text="virtual environments", k=4,
                                                                 filter={"source": source}))
    for item, match in zip(p.locator("#matches li").all(), filtered["matches"]):
        assert f"id {match['id']}" in item.inner_text() and source in item.inner_text()
    expect(p.locator("#search-timing .legend")).to_contain_text("search")
    # The mode picks the ranking; each match shows its rank in it.
    p.get_by_label("Filter (JSON)").fill("")
    p.get_by_label("Mode", exact=True).select_option("lexical")
    p.get_by_label("Query text").press("Enter")
    status, _, lexical = worker.call("POST", "/v1/search", dict(index="docs", text="virtual environments", k=4,
                                                                mode="lexical"))
    assert status == 200, lexical
    expect(p.locator("#matches li .stage").first).to_have_text("lexical #1")
    items = p.locator("#matches li").all()
    assert len(items) == len(lexical["matches"]) == 4
    for rank, (item, match) in enumerate(zip(items, lexical["matches"]), 1):
        text = item.inner_text()
        assert f"id {match['id']}" in text and f"lexical #{rank}" in text and "vector #" not in text, text
    # Nothing is wider than the screen.
    assert p.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    assert not tab.errors, tab.errors
    # For a look at the phone layout (not in the README): the system temp directory.
    p.screenshot(path=os.path.join(tempfile.gettempdir(), "edgerag-playground-phone.png"), full_page=True)


def test_the_ask_form_reports_an_unknown_model(rag, page):
    tab = page()
    tab.connect(KEYS["a"])
    p = tab.page
    expect(p.get_by_label("Index")).to_have_value("docs")
    p.get_by_label("Question").fill(QUESTION)
    p.get_by_label("Model").fill("no-such-model")
    p.get_by_role("button", name="Ask", exact=True).click()
    expect(p.locator("#ask-msg")).to_contain_text("no inference origin serves the model")
    p.get_by_label("Model").fill(CHAT_MODEL)
    p.get_by_role("button", name="Ask", exact=True).click()
    expect(p.locator("#ask-result")).to_have_attribute("data-state", "done", timeout=30_000)
    expect(p.locator("#ask-msg")).to_be_hidden()
