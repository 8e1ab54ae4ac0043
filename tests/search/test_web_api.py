"""The read-only endpoints the web page browses with: GET /images, /folders and /failed.

A small index of its own: sample images in class folders, a nested folder, a folder named with
LIKE wildcards, and two files the indexer cannot read (a truncated JPEG, a text file named .jpg).
The browser tests (test_web_views.py) build the same folder with `make_web_folder`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import fill_folder, write_jpeg
from fastapi.testclient import TestClient
from PIL import Image

from search.api import Settings, create_app
from search.engine import Engine

from .conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: A deep path with long names, for the page's path wrapping.
LONG = "trips/a-rather-long-folder-name-from-a-camera-import/2024-01-01 new year/IMG_20240101_235959_0001_final.jpg"
BROKEN = ("broken/notes.jpg", "broken/truncated.jpg")
NEAR = ("orig/p0.jpg", "orig/p0_small.jpg")  # a picture and a smaller copy: a near-identical group
EXACT = ("orig/p2.jpg", "copies/p2 copy.jpg")  # byte-identical


def make_web_folder(folder: Path) -> Path:
    """The folder both web test modules index; files get distinct modification times, oldest first."""
    fill_folder(folder, 2)
    for i in range(3):
        write_jpeg(folder / "orig" / f"p{i}.jpg", (128, 96), seed=20 + i)
    Image.open(folder / NEAR[0]).resize((96, 72)).save(folder / NEAR[1], quality=85)
    (folder / EXACT[1]).parent.mkdir(parents=True, exist_ok=True)
    (folder / EXACT[1]).write_bytes((folder / EXACT[0]).read_bytes())
    write_jpeg(folder / LONG, (120, 80), seed=30)
    write_jpeg(folder / "odd%dir" / "w.jpg", (64, 48), seed=31)
    (folder / BROKEN[0]).parent.mkdir(parents=True, exist_ok=True)
    (folder / BROKEN[0]).write_text("not an image at all\n" * 20)
    good = write_jpeg(folder / "broken" / "whole.jpg", (200, 150), seed=32).read_bytes()
    (folder / BROKEN[1]).write_bytes(good[: len(good) // 3])
    (folder / "broken" / "whole.jpg").unlink()
    for n, path in enumerate(sorted(p for p in folder.rglob("*") if p.is_file())):
        t = 1_700_000_000 + 60 * n
        os.utime(path, (t, t))
    return folder


@pytest.fixture(scope="module")
def web_index(tmp_path_factory: pytest.TempPathFactory, make_index: Callable[[Path], Path]) -> Path:
    return make_index(make_web_folder(tmp_path_factory.mktemp("web") / "images"))


@pytest.fixture(scope="module")
def web(web_index: Path) -> Iterator[TestClient]:
    engine = Engine(web_index, device="cpu", reload_check_s=0)
    with TestClient(create_app(Settings(index=web_index, api_token=TOKEN), engine)) as c:
        yield c
    engine.close()


def get(c: TestClient, path: str) -> dict:
    res = c.get(path, headers=AUTH)
    assert res.status_code == 200, res.text
    return res.json()


def test_images_pages_newest_first_and_by_path(web: TestClient) -> None:
    everything = get(web, "/images?limit=200")
    total = everything["total"]
    assert total == len(everything["images"]) == 13
    mtimes = [r["mtime"] for r in everything["images"]]
    assert mtimes == sorted(mtimes, reverse=True)
    assert all(set(r) == {"id", "path", "size", "width", "height", "mtime"} for r in everything["images"])

    pages = [get(web, f"/images?limit=5&offset={o}")["images"] for o in (0, 5, 10)]
    assert [len(p) for p in pages] == [5, 5, 3]
    assert [r["id"] for p in pages for r in p] == [r["id"] for r in everything["images"]]
    assert get(web, "/images?offset=13")["images"] == []

    by_path = [r["path"] for r in get(web, "/images?sort=path&limit=200")["images"]]
    assert by_path == sorted(by_path) and LONG in by_path
    assert not set(BROKEN) & set(by_path)  # unreadable files are not browsable images


def test_folder_filter_and_folders(web: TestClient) -> None:
    birds = get(web, "/images?folder=birds&sort=path")
    assert birds["total"] == 2 and all(r["path"].startswith("birds/") for r in birds["images"])
    assert get(web, "/images?folder=/birds/")["total"] == 2  # slashes around the name mean the same folder
    assert get(web, "/images?folder=bird")["total"] == 0  # a folder, not a string prefix
    assert [r["path"] for r in get(web, "/images?folder=odd%25dir")["images"]] == ["odd%dir/w.jpg"]
    assert get(web, "/images?folder=odd_dir")["total"] == 0  # no LIKE wildcards

    listed = {f["folder"]: f["count"] for f in get(web, "/folders")["folders"]}
    assert listed["birds"] == 2 and listed["orig"] == 4 and listed["copies"] == 1
    assert listed["trips"] == 1 and listed["trips/a-rather-long-folder-name-from-a-camera-import"] == 1
    assert "broken" not in listed
    assert len(get(web, "/folders?limit=2")["folders"]) == 2


def test_failed_lists_unreadable_files_with_reasons(web: TestClient) -> None:
    body = get(web, "/failed")
    assert body["total"] == 2 == get(web, "/stats")["failed"]
    assert [f["path"] for f in body["files"]] == sorted(BROKEN)
    assert all(f["reason"] for f in body["files"])
    assert get(web, "/failed?limit=1&offset=1")["files"][0]["path"] == BROKEN[1]


@pytest.mark.parametrize(
    "query",
    [
        "/images?limit=201",
        "/images?limit=0",
        "/images?offset=-1",
        "/images?sort=oldest",
        "/images?folder=" + "x" * 1025,
        "/failed?limit=201",
        "/folders?limit=0",
    ],
)
def test_bounds_are_422(web: TestClient, query: str) -> None:
    res = web.get(query, headers=AUTH)
    assert res.status_code == 422, res.text
    assert res.json()["detail"]


@pytest.mark.parametrize("path", ["/images", "/folders", "/failed"])
def test_token_is_required(web: TestClient, path: str) -> None:
    assert web.get(path).status_code == 401
    assert web.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert web.get(path, headers=AUTH).status_code == 200


def test_documented_in_openapi(web: TestClient) -> None:
    paths = web.get("/openapi.json").json()["paths"]
    for path in ("/images", "/folders", "/failed"):
        responses = paths[path]["get"]["responses"]
        assert {"200", "401", "422"} <= set(responses), (path, responses)
    assert paths["/images"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ImagesOut"
    )
