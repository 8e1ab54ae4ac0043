"""The web page in a real headless Chromium (Debian's), driven by Playwright, against the real server.

Skipped, with the reason, where no Chromium is installed (`bash .ci/browser` installs it). Set
LOOKALIKE_SCREENSHOT_DIR to keep the screenshots somewhere a person can look at them.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import TOKEN, Corpus, Server, index_ids

pytestmark = pytest.mark.browser

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
]

# Every thumbnail has loaded or failed (the symlink out of the folder has none), and none is still pending.
THUMBS_SETTLED = """() => {
  const imgs = [...document.querySelectorAll('#results .result img')];
  return imgs.length > 0 && imgs.every((i) => i.dataset.state === 'failed' || (i.complete && i.naturalWidth > 0));
}"""

TIMEOUT_MS = 30_000


def chromium_path() -> str | None:
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    exe = chromium_path()
    if exe is None:
        pytest.skip("Chromium is not installed (no `chromium` on PATH, no /usr/bin/chromium); run `bash .ci/browser`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        # A launched (not persistent) browser gets a fresh, empty profile directory of its own.
        b = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    console_errors: list[str] = []
    pg.on("pageerror", lambda exc: console_errors.append(str(exc)))
    yield pg
    context.close()
    assert not console_errors, f"JavaScript errors on the page: {console_errors}"


def screenshot(page, tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    page.screenshot(path=str(out), full_page=True)
    keep = os.environ.get("LOOKALIKE_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, Path(keep) / name)
    return out


def result_ids(page) -> list[int]:
    return [int(x) for x in page.eval_on_selector_all("#results .result", "els => els.map(e => e.dataset.id)")]


def api_ids(server: Server, path: str, headers: dict[str, str] | None = None) -> list[int]:
    status, body = server.get(path, headers)
    assert status == 200, body
    return [h["id"] for h in json.loads(body)["results"]]


def wait_for_query(page, query: str, no_thumbnail: tuple[int, ...] = ()) -> None:
    """Wait for the results of `query` and their thumbnails: real images (naturalWidth > 0) for every result
    but those in `no_thumbnail`."""
    page.wait_for_selector(f'#results[data-query="{query}"] .result')
    page.wait_for_function(THUMBS_SETTLED)
    states = page.eval_on_selector_all(
        "#results .result", "els => els.map(e => [+e.dataset.id, e.querySelector('img').naturalWidth])"
    )
    for image_id, width in states:
        assert (width > 0) == (image_id not in no_thumbnail), (image_id, width)


def test_search_by_upload_click_and_id(page, server: Server, live: Corpus, tmp_path: Path) -> None:
    no_thumb = (index_ids(live.index)["link.jpg"],)  # the symlink out of the folder: no thumbnail, by design
    page.goto(server.url + "/")
    page.wait_for_function("() => /\\d+ images/.test(document.querySelector('#stats').textContent)")
    assert page.is_hidden("#error") and page.is_hidden("#token-form")

    # upload a sample image through the file input
    query = sorted((live.folder / "birds").glob("*.png"))[0]
    page.set_input_files("#file-input", str(query))
    wait_for_query(page, f"upload:{query.name}", no_thumb)
    first = result_ids(page)
    assert len(first) >= 5
    assert page.eval_on_selector("#query img", "i => i.complete && i.naturalWidth > 0")  # the query preview
    sims = page.eval_on_selector_all("#results .result", "els => els.map(e => +e.dataset.similarity)")
    assert sims == sorted(sims, reverse=True)
    # each card says where its similarity stands among the collection's random pairs, as the CLI does
    shares = page.eval_on_selector_all("#results .result .sim .share", "els => els.map(e => e.textContent)")
    assert len(shares) == len(sims) and all(re.fullmatch(r"top <?[0-9.]+%", t) for t in shares), shares
    assert page.get_attribute("#results .result .sim .share", "title").startswith(
        "The share of pairs of indexed images"
    )
    shot = screenshot(page, tmp_path, "results-upload.png")
    assert shot.stat().st_size > 10_000

    # click a result: the grid becomes that image's neighbours, as the API orders them
    clicked = first[1]
    page.click(f'#results .result[data-id="{clicked}"]')
    wait_for_query(page, f"id:{clicked}", no_thumb)
    after_click = result_ids(page)
    assert clicked not in after_click
    assert after_click == api_ids(server, f"/images/{clicked}/similar?k=24")
    assert page.url.endswith(f"#id={clicked}")
    assert page.input_value("#id-input") == str(clicked)
    screenshot(page, tmp_path, "results-click.png")

    # paste an id and search
    other = first[-1]
    page.fill("#id-input", str(other))
    page.click("#id-button")
    wait_for_query(page, f"id:{other}", no_thumb)
    assert result_ids(page) == api_ids(server, f"/images/{other}/similar?k=24")

    # back goes to the clicked image's neighbours again
    page.go_back()
    wait_for_query(page, f"id:{clicked}", no_thumb)
    assert result_ids(page) == after_click


def test_drag_and_drop(page, server: Server, live: Corpus) -> None:
    page.goto(server.url + "/")
    query = sorted((live.folder / "letters").glob("*.png"))[0]
    page.evaluate(
        """([b64, name]) => {
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          const dt = new DataTransfer();
          dt.items.add(new File([bytes], name, { type: "image/png" }));
          const zone = document.querySelector("#drop-zone");
          zone.dispatchEvent(new DragEvent("dragover", { bubbles: true, cancelable: true, dataTransfer: dt }));
          zone.dispatchEvent(new DragEvent("drop", { bubbles: true, cancelable: true, dataTransfer: dt }));
        }""",
        [base64.b64encode(query.read_bytes()).decode(), query.name],
    )
    wait_for_query(page, f"upload:{query.name}", (index_ids(live.index)["link.jpg"],))
    assert len(result_ids(page)) >= 5


def test_errors_are_shown(page, server: Server, tmp_path: Path) -> None:
    page.goto(server.url + "/")
    page.set_input_files(
        "#file-input", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"just some text\n" * 50}]
    )
    page.wait_for_selector("#error:not([hidden])")
    text = page.text_content("#error")
    assert "not an image" in text and "415" in text
    screenshot(page, tmp_path, "error.png")

    page.fill("#id-input", "987654")
    page.press("#id-input", "Enter")
    page.wait_for_function("() => document.querySelector('#error').textContent.includes('404')")
    assert "no indexed image with id 987654" in page.text_content("#error")

    page.fill("#id-input", "abc")
    page.click("#id-button")
    page.wait_for_function("() => document.querySelector('#error').textContent.includes('not an image id')")

    # a good search clears the error box
    page.fill("#id-input", str(api_ids(server, "/images/1/similar?k=1")[0]))
    page.click("#id-button")
    page.wait_for_selector("#error", state="hidden")


def test_token_prompt(page, token_server: Server, ids: dict[str, int], tmp_path: Path) -> None:
    """With LOOKALIKE_API_TOKEN set the page asks for the token, keeps it, and sends it on every request,
    thumbnails included (fetched as blobs: an <img> cannot send a header)."""
    page.goto(token_server.url + "/")
    page.wait_for_selector("#token-form:not([hidden])")
    page.fill("#token-input", "wrong token")
    page.click("#token-save")
    page.wait_for_selector("#token-form:not([hidden])")  # 401 again: asked again

    page.fill("#token-input", TOKEN)
    page.click("#token-save")
    page.wait_for_function("() => /\\d+ images/.test(document.querySelector('#stats').textContent)")
    assert page.evaluate("() => sessionStorage.getItem('lookalike.token')") == TOKEN
    some_id = api_ids(token_server, "/images/1/similar?k=1", {"Authorization": f"Bearer {TOKEN}"})[0]
    page.fill("#id-input", str(some_id))
    page.click("#id-button")
    wait_for_query(page, f"id:{some_id}", (ids["link.jpg"],))
    screenshot(page, tmp_path, "results-token.png")

    # the token survives a reload
    page.reload()
    page.wait_for_function("() => /\\d+ images/.test(document.querySelector('#stats').textContent)")
    assert page.is_hidden("#token-form")
