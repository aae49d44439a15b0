"""The web page and the API manual in a real headless browser (Debian's chromium, driven
by Playwright), against `python -m service` on the committed repository.

Every request the browser makes is recorded: none may leave the server. Each panel is
used as a person would (sample image, buttons, keyboard) and photographed; with
GLIMPSE_UPDATE_SCREENSHOTS=1 the photographs replace those in docs/images/.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from e2e_server import running_server
from playwright.sync_api import Browser, Page, expect, sync_playwright

REPOSITORY = Path(__file__).parents[2] / "model_repository"
# the served caption-sat, by id (its highest version)
SAT_VERSION = max(int(p.name) for p in (REPOSITORY / "caption-sat").iterdir()
                  if p.name.isdigit())
SAT = f"caption-sat/{SAT_VERSION}"
DOCS_IMAGES = Path(__file__).parents[2] / "docs" / "images"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Chromium's own background traffic is off: the machine may have no network at all.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions"]
PANELS = ["image", "caption", "vqa", "alignment", "retrieval", "generation"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("web") / "server.log"
    env = {"GLIMPSE_INTRA_OP_THREADS": "1", "GLIMPSE_LOG_LEVEL": "warning"}
    with running_server(REPOSITORY, log_path, env, ready_timeout=60) as (_, url):
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "chromium is missing: `make test` installs it"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Visit:
    """A page of the browser whose every request is recorded; outside ones are refused."""

    def __init__(self, browser: Browser, server: str, **context: object) -> None:
        self.server = urlsplit(server).netloc
        self.context = browser.new_context(**context)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.context.route("**/*", self.route)
        self.page: Page = self.context.new_page()
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def route(self, route, request) -> None:
        self.requests.append(request.url)
        if urlsplit(request.url).scheme in ("data", "blob") or \
                urlsplit(request.url).netloc == self.server:
            route.continue_()
        else:
            route.abort()

    def outside(self) -> list[str]:
        return [u for u in self.requests
                if urlsplit(u).scheme not in ("data", "blob")
                and urlsplit(u).netloc != self.server]

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visit(browser: Browser, server: str) -> Iterator[Visit]:
    v = Visit(browser, server, viewport={"width": 1200, "height": 1000})
    yield v
    assert v.outside() == [], "requests left the server"
    assert v.errors == []
    v.close()


def operations(server: str) -> list[tuple[str, str, str]]:
    spec = httpx.get(f"{server}/openapi.json").json()
    return [(method.upper(), path, op.get("summary", "")) for path, ops in spec["paths"].items()
            for method, op in ops.items()]


def test_swagger_ui_renders_every_operation_from_this_server(visit: Visit, server: str) -> None:
    page = visit.page
    page.goto(f"{server}/docs")
    page.wait_for_selector(".opblock", timeout=20000)
    shown = {(b.locator(".opblock-summary-method").inner_text().strip(),
              b.locator(".opblock-summary-path").get_attribute("data-path"))
             for b in page.locator(".opblock").all()}
    assert shown == {(method, path) for method, path, _ in operations(server)}
    assert len(visit.requests) >= 3  # the page, its script and style, the document


def test_redoc_renders_every_operation_from_this_server(visit: Visit, server: str) -> None:
    page = visit.page
    page.goto(f"{server}/redoc")
    page.wait_for_selector("[data-section-id^='operation/']", timeout=30000)
    text = page.locator("body").inner_text()
    for _, _, summary in operations(server):
        assert summary in text


def open_page(visit: Visit, server: str) -> Page:
    page = visit.page
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready=true]", timeout=20000)
    expect(page.locator("#status")).to_contain_text("sample")
    # (Waits are on locators: the pages' policy forbids the eval of wait_for_function.)
    return page


def shoot(page: Page, panel: str, tmp_path: Path) -> None:
    path = tmp_path / f"web_{panel}.png"
    page.locator(f"#{panel}-panel").screenshot(path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("GLIMPSE_UPDATE_SCREENSHOTS") == "1":
        shutil.copy(path, DOCS_IMAGES / path.name)


def marks(page: Page, panel: str) -> int:
    """What the panel's figure draws over the image: attention cells or boxes."""
    return int(page.locator(f"#{panel}-result canvas.figure").get_attribute("data-marks"))


def test_every_panel_answers_from_a_sample_image(visit: Visit, server: str,
                                                 tmp_path: Path) -> None:
    page = open_page(visit, server)

    page.select_option("#caption-form select[name=model]", SAT)
    page.click("#caption-form button[type=submit]")
    page.wait_for_selector("#caption-result .words button[aria-pressed=true]")
    assert page.locator("#caption-result li").count() == 1
    words = page.locator("#caption-result .words button")
    assert words.count() >= 2
    words.nth(1).click()
    assert words.nth(1).get_attribute("aria-pressed") == "true"
    assert marks(page, "caption") == 64  # the 8 x 8 attention grid of caption-sat
    shoot(page, "caption", tmp_path)

    page.click("#vqa-form button[type=submit]")
    page.wait_for_selector("#vqa-result li")
    assert page.locator("#vqa-result li").count() == 3 and marks(page, "vqa") == 7
    shoot(page, "vqa", tmp_path)

    page.click("#alignment-form button[type=submit]")
    page.wait_for_selector("#alignment-result li")
    assert "yellow" in page.locator("#alignment-result").inner_text()
    assert marks(page, "alignment") == page.locator("#alignment-result li").count() >= 1
    shoot(page, "alignment", tmp_path)

    page.click("#retrieval-form button[type=submit]")
    page.wait_for_selector("#retrieval-result li")
    assert page.locator("#retrieval-result li").count() == 5
    shoot(page, "retrieval", tmp_path)

    page.fill("#generation-form input[name=seed]", "7")
    page.click("#generation-form button[type=submit]")
    page.wait_for_selector("#generation-result .grid img")
    assert page.locator("#generation-result .grid img").count() == 4
    assert "seed 7" in page.locator("#generation-result").inner_text()
    shoot(page, "generation", tmp_path)
    # A generated image becomes the image the other panels look at.
    page.locator("#generation-result .grid button").first.click()
    expect(page.locator("#status")).to_contain_text("generated")


def test_sampling_knobs_and_the_keyboard(visit: Visit, server: str) -> None:
    page = open_page(visit, server)
    page.select_option("#caption-form select[name=decoding]", "sample")
    assert page.locator("#caption-form input[name=beam_size]").is_hidden()
    page.fill("#caption-form input[name=seed]", "3")
    page.fill("#caption-form input[name=num_captions]", "2")
    page.locator("#caption-form input[name=seed]").press("Enter")  # a form submits on Enter
    page.wait_for_selector("#caption-result li >> nth=1")
    first = page.locator("#caption-result ol").inner_text()
    page.locator("#caption-form input[name=seed]").press("Enter")
    page.wait_for_selector("#caption-result li >> nth=1")
    assert page.locator("#caption-result ol").inner_text() == first  # same seed, same captions
    # The sample images are buttons: Tab reaches them and Enter picks one.
    page.locator("#samples button").nth(2).focus()
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_contain_text("yellow")


def test_errors_are_the_api_messages(visit: Visit, server: str) -> None:
    page = open_page(visit, server)
    page.fill("#vqa-form input[name=question]", "what colour is the zeppelin?")
    page.click("#vqa-form button[type=submit]")
    alert = page.locator("#vqa-result [role=alert]")
    alert.wait_for()
    assert "422 invalid_parameter" in alert.inner_text() and "zeppelin" in alert.inner_text()
    page.fill("#generation-form input[name=prompt]", "a purple zeppelin")
    page.click("#generation-form button[type=submit]")
    page.locator("#generation-result [role=alert]").wait_for()
    assert "zeppelin" in page.locator("#generation-result [role=alert]").inner_text()


def test_readable_on_a_phone(browser: Browser, server: str) -> None:
    v = Visit(browser, server, viewport={"width": 390, "height": 844}, is_mobile=True,
              device_scale_factor=2, has_touch=True)
    try:
        page = open_page(v, server)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        boxes = [page.locator(f"#{p}-panel").bounding_box() for p in PANELS]
        assert all(b["x"] >= 0 and b["x"] + b["width"] <= 390 for b in boxes)
        assert len({round(b["x"]) for b in boxes}) == 1  # one column
        assert v.outside() == [] and v.errors == []
    finally:
        v.close()


def test_a_photograph_gets_the_out_of_domain_warning(visit: Visit, server: str,
                                                     tmp_path: Path) -> None:
    import io

    import skimage.data
    from PIL import Image

    page = open_page(visit, server)
    page.click("#caption-form button[type=submit]")
    page.wait_for_selector("#caption-result li")
    expect(page.locator("#domain")).to_contain_text("In domain")
    photo = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).resize((128, 128)).save(photo, format="PNG")
    page.set_input_files("#file-input", files=[{"name": "astronaut.png",
                                                "mimeType": "image/png",
                                                "buffer": photo.getvalue()}])
    expect(page.locator("#status")).to_contain_text("astronaut.png")
    page.click("#caption-form button[type=submit]")
    expect(page.locator("#domain")).to_contain_text("Warning: this image is unlike")
    shoot(page, "image", tmp_path)  # the image panel with its warning
