"""The web page's views in a real headless Chromium against a real `lookalike serve` with writes on:
browse (paging, folder filter, keyboard), the image page, the search's query panel and filters,
outliers, unreadable files, the duplicates view (resolve, undo, dismiss; 401, 403 and 409 said
plainly), dark mode and a phone-sized viewport.

Screenshots go to tmp_path; with LOOKALIKE_SCREENSHOT_DIR=docs/screenshots they replace the
README's pictures (1000x700, the visible part of the page).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from search.api import Settings, create_app
from search.engine import Engine

from .conftest import TOKEN, Server, free_port, index_ids, run_server
from .test_browser import CHROMIUM_FLAGS, TIMEOUT_MS, browser  # noqa: F401  (the fixture)
from .test_web_api import BROKEN, EXACT, LONG, NEAR, make_web_folder

pytestmark = pytest.mark.browser

AUTH = {"Authorization": f"Bearer {TOKEN}"}
DOCS_VIEWPORT = {"width": 1000, "height": 700}
PHONE_VIEWPORT = {"width": 390, "height": 844}

# Every thumbnail under `root` has loaded or failed, and none is still pending.
SETTLED = """(root) => {
  const imgs = [...document.querySelectorAll(root + ' img.thumb')];
  return imgs.length > 0 && imgs.every((i) => i.dataset.state === 'failed' || (i.complete && i.naturalWidth > 0));
}"""

# Every path segment on screen is one box on one line: a path wraps at '/' only, never inside a name.
PATHS_UNBROKEN = """() => [...document.querySelectorAll('.path .seg')]
  .filter((s) => s.offsetParent !== null)
  .every((s) => s.getClientRects().length === 1)"""

# What sticks out past the right edge of the window (nothing, when the page needs no sideways scrolling).
STICKING_OUT = """() => document.documentElement.scrollWidth <= window.innerWidth ? [] :
  [...document.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
    .map((e) => e.tagName + (e.id ? '#' + e.id : '') + '.' + e.className).slice(0, 8)"""


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory, make_index: Callable[[Path], Path]) -> tuple[Path, Path]:
    folder = make_web_folder(tmp_path_factory.mktemp("webui") / "images")
    return folder, make_index(folder)


@pytest.fixture(scope="module")
def writer(web: tuple[Path, Path]) -> Iterator[Server]:
    """The real `lookalike serve` with writes on (LOOKALIKE_ALLOW_WRITES=1) and a token."""
    with run_server(web[1], {"LOOKALIKE_ALLOW_WRITES": "1", "LOOKALIKE_API_TOKEN": TOKEN}) as s:
        yield s


@pytest.fixture
def open_page(browser) -> Iterator[Callable[..., object]]:  # noqa: F811
    """A page in a fresh context: `open_page(viewport=..., dark=..., token=...)`; the token, if given, is
    put in the tab's session storage before the page's script runs."""
    contexts: list[object] = []
    errors: list[str] = []

    def make(viewport: dict = DOCS_VIEWPORT, dark: bool = False, token: str | None = TOKEN) -> object:
        ctx = browser.new_context(viewport=viewport, color_scheme="dark" if dark else "light")
        ctx.set_default_timeout(TIMEOUT_MS)
        if token:
            ctx.add_init_script(f"sessionStorage.setItem('lookalike.token', {json.dumps(token)})")
        contexts.append(ctx)
        pg = ctx.new_page()
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        return pg

    yield make
    for ctx in contexts:
        ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def shot(page, tmp_path: Path, name: str) -> Path:
    """The visible part of the page as a PNG, kept in LOOKALIKE_SCREENSHOT_DIR if set: there in 128
    colours, which keeps the README's pictures a quarter of the size and looks the same."""
    out = tmp_path / name
    page.screenshot(path=str(out))
    keep = os.environ.get("LOOKALIKE_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        with Image.open(out) as im:
            small = im.convert("RGB").quantize(128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            small.save(Path(keep) / name, optimize=True)
    return out


def api(server: Server, path: str) -> dict:
    status, body = server.get(path, AUTH)
    assert status == 200, body
    return json.loads(body)


def tile_ids(page, root: str) -> list[int]:
    return [int(x) for x in page.eval_on_selector_all(f"{root} > .tile", "els => els.map(e => e.dataset.id)")]


def test_browse_paging_folder_filter_and_keyboard(open_page, writer: Server, tmp_path: Path) -> None:
    page = open_page()
    page.goto(writer.url + "/#browse&limit=5")
    page.wait_for_selector('#browse-grid[data-page="|newest|0"]')
    assert tile_ids(page, "#browse-grid") == [r["id"] for r in api(writer, "/images?limit=5")["images"]]
    assert "13 images" in page.text_content("#browse-status")
    assert page.text_content("#browse-page") == "1–5 of 13"
    assert page.is_disabled("#browse-prev")

    page.click("#browse-next")
    page.wait_for_selector('#browse-grid[data-page="|newest|5"]')
    assert tile_ids(page, "#browse-grid") == [r["id"] for r in api(writer, "/images?limit=5&offset=5")["images"]]
    page.click("#browse-next")
    page.wait_for_selector('#browse-grid[data-page="|newest|10"]')
    assert len(tile_ids(page, "#browse-grid")) == 3 and page.is_disabled("#browse-next")
    page.go_back()
    page.wait_for_selector('#browse-grid[data-page="|newest|5"]')

    page.select_option("#browse-folder", "orig")
    page.wait_for_selector('#browse-grid[data-page="orig|newest|0"]')
    paths = page.eval_on_selector_all("#browse-grid .tile .path", "els => els.map(e => e.title)")
    assert len(paths) == 4 and all(p.startswith("orig/") for p in paths)
    page.select_option("#browse-sort", "path")
    page.wait_for_selector('#browse-grid[data-page="orig|path|0"]')
    assert page.eval_on_selector_all("#browse-grid .tile .path", "els => els.map(e => e.title)") == sorted(paths)

    # the long path wraps between its folders, never inside a name
    page.select_option("#browse-folder", "trips")
    page.wait_for_selector('#browse-grid[data-page="trips|path|0"]')
    assert page.get_attribute("#browse-grid .tile .path", "title") == LONG
    assert page.evaluate(PATHS_UNBROKEN)
    page.goto(writer.url + "/#browse&sort=path")  # a full page (60) for the picture
    page.wait_for_function("() => document.querySelectorAll('#browse-grid > .tile').length === 13")
    page.wait_for_function(SETTLED, arg="#browse-grid")
    shot(page, tmp_path, "browse.png")

    # keyboard: arrows move between tiles, Enter opens the image page
    first, second = tile_ids(page, "#browse-grid")[:2]
    page.focus(f'#browse-grid .tile[data-id="{first}"]')
    page.keyboard.press("ArrowRight")
    assert page.evaluate("() => +document.activeElement.dataset.id") == second
    page.keyboard.press("Enter")
    page.wait_for_selector(f'#image-neighbours[data-id="{second}"]')
    assert page.url.endswith(f"#image={second}")


def test_image_page(open_page, writer: Server, web: tuple[Path, Path], tmp_path: Path) -> None:
    ids = index_ids(web[1])
    image_id = ids[NEAR[0]]
    page = open_page()
    page.goto(f"{writer.url}/#image={image_id}")
    page.wait_for_selector(f'#image-neighbours[data-id="{image_id}"]')
    meta = page.text_content("#image-meta")
    assert NEAR[0] in meta and "128×96" in meta
    neighbours = [h["id"] for h in api(writer, f"/images/{image_id}/similar?k=12")["results"]]
    assert tile_ids(page, "#image-neighbours") == neighbours
    page.wait_for_function("() => document.querySelector('#image-frame img').naturalWidth > 0")
    page.wait_for_function(SETTLED, arg="#image-neighbours")
    shot(page, tmp_path, "image.png")

    # the original file, fetched with the token, opens in a new tab
    with page.context.expect_page() as opened:
        page.click("#image-original")
    assert opened.value.url.startswith("blob:")
    opened.value.close()

    # "find duplicates of this": the groups that hold it, its near-identical copy among them
    page.click("#image-dups")
    page.wait_for_selector(f'#dup-groups[data-loaded="contains:{image_id}"]')
    groups = page.eval_on_selector_all(
        "#dup-groups .group", "els => els.map(e => e.dataset.ids.split(',').map(Number))"
    )
    assert groups and all(image_id in g for g in groups)
    assert any(ids[NEAR[1]] in g for g in groups)

    # a neighbour tile opens that image's page
    page.go_back()
    page.wait_for_selector(f'#image-neighbours[data-id="{image_id}"]')
    page.click(f'#image-neighbours .tile[data-id="{neighbours[0]}"]')
    page.wait_for_selector(f'#image-neighbours[data-id="{neighbours[0]}"]')


def test_search_shows_the_query_and_filters(open_page, writer: Server, web: tuple[Path, Path], tmp_path: Path) -> None:
    ids = index_ids(web[1])
    page = open_page()
    page.goto(writer.url + "/")
    page.wait_for_function("() => document.querySelectorAll('#search-folder option').length > 3")
    page.set_input_files("#file-input", str(web[0] / NEAR[0]))
    page.wait_for_selector('#results[data-query="upload:p0.jpg"] .result')
    assert page.get_attribute("#query .indexed", "data-ids") == str(ids[NEAR[0]])
    text = page.text_content("#query .indexed")
    assert f"indexed image #{ids[NEAR[0]]}" in text and NEAR[0] in text and "left out of the results" in text
    assert ids[NEAR[0]] not in tile_ids(page, "#results")
    assert page.eval_on_selector("#query img", "i => i.getBoundingClientRect().width") >= 150  # a useful size
    meaning = page.get_attribute("#results .result .sim", "title")  # what the number means, on hover
    assert meaning and "unrelated" in meaning and "same picture" in meaning
    page.wait_for_function(SETTLED, arg="#results")
    shot(page, tmp_path, "search.png")

    # min similarity and folder filters apply to the next search
    page.fill("#min-sim-input", "0.5")
    page.select_option("#search-folder", "orig")
    page.fill("#id-input", str(ids[NEAR[0]]))
    page.click("#id-button")
    page.wait_for_selector(f'#results[data-query="id:{ids[NEAR[0]]}"]')
    sims = page.eval_on_selector_all("#results .result", "els => els.map(e => +e.dataset.similarity)")
    paths = page.eval_on_selector_all("#results .result .path", "els => els.map(e => e.title)")
    assert all(s >= 0.5 for s in sims) and all(p.startswith("orig/") for p in paths)
    expected = api(writer, f"/images/{ids[NEAR[0]]}/similar?k=24&min_similarity=0.5&path_prefix=orig/")["results"]
    assert tile_ids(page, "#results") == [h["id"] for h in expected]


def test_outliers(open_page, writer: Server, tmp_path: Path) -> None:
    page = open_page()
    page.goto(writer.url + "/")
    page.click('nav a[data-view="outliers"]')
    page.wait_for_selector("#outlier-grid[data-loaded]")
    report = api(writer, "/reports/outliers?limit=24")
    assert tile_ids(page, "#outlier-grid") == [o["id"] for o in report["results"]]
    assert page.eval_on_selector_all("#outlier-histogram rect.bin", "els => els.length") == len(
        report["histogram"]["counts"]
    )
    assert f"{report['count']} images scored" in page.text_content("#outlier-rule")
    page.wait_for_function(SETTLED, arg="#outlier-grid")
    shot(page, tmp_path, "outliers.png")


def test_unreadable_files(open_page, writer: Server, tmp_path: Path) -> None:
    page = open_page()
    page.goto(writer.url + "/")
    page.wait_for_selector("#failed-link")
    assert page.text_content("#failed-link") == "2 unreadable"
    page.click("#failed-link")
    page.wait_for_selector('#failed-table tbody[data-loaded="2"]')
    rows = page.eval_on_selector_all(
        "#failed-table tbody tr",
        "rs => rs.map(r => [r.querySelector('.path').title, r.querySelector('.reason').textContent])",
    )
    assert [p for p, _ in rows] == sorted(BROKEN) and all(why and why != "unknown" for _, why in rows)
    assert page.url.endswith("#failed")
    shot(page, tmp_path, "unreadable.png")


def test_dark_mode(open_page, writer: Server, tmp_path: Path) -> None:
    page = open_page(dark=True)
    page.goto(writer.url + "/#duplicates&tier=near-identical")
    page.wait_for_selector('#dup-groups[data-loaded="near-identical:0"]')
    page.wait_for_function(SETTLED, arg="#dup-groups")
    rgb = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    r, g, b = (int(x) for x in rgb[rgb.index("(") + 1 : rgb.index(")")].split(",")[:3])
    assert max(r, g, b) < 60, rgb  # a dark page, not the light one
    text = page.evaluate("() => getComputedStyle(document.body).color")
    assert min(int(x) for x in text[text.index("(") + 1 : text.index(")")].split(",")[:3]) > 180, text
    shot(page, tmp_path, "duplicates-dark.png")


def test_phone_viewport(open_page, writer: Server, tmp_path: Path) -> None:
    page = open_page(viewport=PHONE_VIEWPORT)
    for view, ready in [
        ("#browse", '#browse-grid[data-page="|newest|0"]'),
        ("#failed", '#failed-table tbody[data-loaded="2"]'),
        ("#duplicates&tier=near-identical", '#dup-groups[data-loaded="near-identical:0"]'),
    ]:
        page.goto(f"{writer.url}/{view}")
        page.wait_for_selector(ready)
        assert page.evaluate(STICKING_OUT) == [], view
        assert page.evaluate(PATHS_UNBROKEN), view
    page.wait_for_function(SETTLED, arg="#dup-groups")
    shot(page, tmp_path, "phone.png")


# ---------------------------------------------------------------- writes (these change the index: last)


@pytest.fixture
def read_only_server(web: tuple[Path, Path]) -> Iterator[Server]:
    """A server with a token but without --allow-writes, in this process, over the same index."""
    import uvicorn

    engine = Engine(web[1], device="cpu", reload_check_s=0)
    app = create_app(Settings(index=web[1], api_token=TOKEN), engine)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "in-process uvicorn did not start"
        time.sleep(0.05)
    yield Server(f"http://127.0.0.1:{port}", port, None)
    srv.should_exit = True
    thread.join(10)
    engine.close()


def test_writes_off_is_said_plainly(open_page, read_only_server: Server, web: tuple[Path, Path]) -> None:
    page = open_page()
    page.goto(read_only_server.url + "/#duplicates&tier=exact")
    page.wait_for_selector('#dup-groups[data-loaded="exact:0"] .group')
    page.click("#dup-groups .group button.resolve")
    page.wait_for_selector('#dup-notice[data-kind="warn"]')
    assert "Writes are off" in page.text_content("#dup-notice") and "--allow-writes" in page.text_content("#dup-notice")
    assert all((web[0] / p).is_file() for p in EXACT)


def test_resolve_undo_and_dismiss(open_page, writer: Server, web: tuple[Path, Path], tmp_path: Path) -> None:
    folder, index = web
    ids = index_ids(index)
    page = open_page(token=None)
    page.goto(writer.url + "/#duplicates&tier=exact")
    page.wait_for_selector("#token-form:not([hidden])")  # 401: the page asks for the token
    page.fill("#token-input", TOKEN)
    page.click("#token-save")
    page.wait_for_selector('#dup-groups[data-loaded="exact:0"] .group')
    assert page.evaluate("() => sessionStorage.getItem('lookalike.token')") == TOKEN
    group = f'#dup-groups .group[data-ids*="{ids[EXACT[0]]}"]'
    suggested = int(page.get_attribute(group, "data-keeper"))
    other = next(i for i in (ids[EXACT[0]], ids[EXACT[1]]) if i != suggested)
    keep_path, move_path = EXACT if other == ids[EXACT[0]] else EXACT[::-1]

    # the suggested keeper is marked; clicking the other makes it the keeper
    assert page.get_attribute(f'{group} .member[data-id="{suggested}"]', "aria-pressed") == "true"
    assert "same bytes" in page.text_content(f'{group} .member[data-id="{other}"]')
    page.click(f'{group} .member[data-id="{other}"]')
    assert page.get_attribute(f'{group} .member[data-id="{other}"]', "aria-pressed") == "true"
    assert page.get_attribute(f'{group} .member[data-id="{suggested}"]', "aria-pressed") == "false"
    assert f"keep #{other}" in page.text_content(f"{group} button.resolve")
    page.wait_for_function(SETTLED, arg="#dup-groups")
    shot(page, tmp_path, "duplicates.png")

    # resolve: the other copy moves into the quarantine, the group leaves the list, Undo is offered
    page.click(f"{group} button.resolve")
    page.wait_for_selector('#dup-notice[data-kind="good"] #dup-undo')
    assert "moved 1 file" in page.text_content("#dup-notice")
    assert (folder / keep_path).is_file() and not (folder / move_path).exists()
    page.wait_for_selector('#dup-groups[data-loaded="exact:0"]')
    assert page.query_selector(group) is None
    page.click("#batches-panel summary")
    page.wait_for_selector("#batches .batch")
    assert move_path in page.text_content("#batches .batch")
    shot(page, tmp_path, "duplicates-resolved.png")

    # undo puts it back and the group returns
    page.click("#dup-undo")
    page.wait_for_selector('#dup-notice:has-text("Restored batch")')
    assert (folder / move_path).is_file()
    page.wait_for_selector(group)
    page.wait_for_selector("#batches :text('Nothing in the quarantine')")

    # a file changed since it was indexed: 409, said plainly, nothing moves
    (folder / move_path).write_bytes((folder / move_path).read_bytes() + b"\0")
    page.click(f"{group} button.resolve")
    page.wait_for_selector('#dup-notice[data-kind="bad"]')
    assert "changed since it was indexed" in page.text_content("#dup-notice")
    assert (folder / move_path).is_file()

    # "not duplicates" on the near-identical group: it leaves the list, and the dismissal is recorded
    page.click('#dup-tiers button[data-tier="near-identical"]')
    near = f'#dup-groups .group[data-ids*="{ids[NEAR[1]]}"]'
    page.wait_for_selector(near)
    page.click(f"{near} button.dismiss")
    page.wait_for_selector('#dup-notice:has-text("not duplicates")')
    page.wait_for_selector('#dup-groups[data-loaded="near-identical:0"]')
    assert page.query_selector(near) is None
    assert api(writer, "/duplicates/dismissed")["pairs"]
    assert (folder / NEAR[0]).is_file() and (folder / NEAR[1]).is_file()
