"""The HTTP API through the real app (TestClient) and the real `lookalike serve` (a subprocess on loopback)."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from conftest import sample_images
from fastapi.testclient import TestClient
from PIL import Image

from search.api import Settings
from search.engine import Engine

from .conftest import BOUNDARY, MISSING, TOKEN, Corpus, Server, multipart

BIRD = "birds/" + sorted(p.name for p in sample_images(4, ("birds",)))[0]


def png(size: tuple[int, int] = (40, 30), seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels and holds none: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def upload(client: TestClient, data: bytes, name: str = "query.png", **params) -> object:
    return client.post("/search", files={"file": (name, data, "application/octet-stream")}, params=params)


# ---------------------------------------------------------------- every endpoint


def test_page(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for needle in ('id="file-input"', 'id="id-input"', 'id="results"', 'id="error"', 'id="stats"'):
        assert needle in r.text


def test_search_upload(client: TestClient, corpus: Corpus, engine: Engine, ids: dict[str, int]) -> None:
    data = (corpus.folder / BIRD).read_bytes()
    r = upload(client, data, "bird.png", k=5)
    assert r.status_code == 200, r.text
    body = r.json()
    # the answer says which indexed image the upload is: it is left out of its own results
    assert body["query"] == {"upload": "bird.png", "bytes": len(data), "indexed": [{"id": ids[BIRD], "path": BIRD}]}
    assert body["k"] == 5 and body["offset"] == 0
    hits = body["results"]
    assert len(hits) == 5
    assert ids[BIRD] not in [h["id"] for h in hits]  # an upload of an indexed file is that image: excluded
    assert set(hits[0]) == {"id", "path", "similarity", "percentile", "width", "height"}
    sims = [h["similarity"] for h in hits]
    assert sims == sorted(sims, reverse=True) and all(-1 <= s <= 1 for s in sims)
    # each similarity's place among the random pairs of the index's images: ordered with it, and
    # the index's scale's reading of that similarity
    ranks = [h["percentile"] for h in hits]
    assert ranks == sorted(ranks, reverse=True) and all(0 <= p <= 100 for p in ranks)
    scale = engine.snapshot().pair_scale
    # (the similarities are rounded to 6 places in JSON: one sampled pair either way at most)
    assert ranks == pytest.approx(scale.percentile(sims), abs=100 / scale.pairs + 1e-3)
    # the paging and filter parameters work on uploads too
    r = upload(client, data, k=2, offset=1, path_prefix="letters/", min_similarity=-1)
    assert r.status_code == 200
    assert len(r.json()["results"]) == 2 and all(h["path"].startswith("letters/") for h in r.json()["results"])


def test_similar(client: TestClient, ids: dict[str, int]) -> None:
    r = client.get(f"/images/{ids[BIRD]}/similar", params={"k": 4})
    assert r.status_code == 200
    body = r.json()
    assert body["query"] == {"id": ids[BIRD]} and len(body["results"]) == 4
    assert ids[BIRD] not in {h["id"] for h in body["results"]}
    page2 = client.get(f"/images/{ids[BIRD]}/similar", params={"k": 2, "offset": 2}).json()["results"]
    assert [h["id"] for h in page2] == [h["id"] for h in body["results"][2:]]


def test_image_metadata(client: TestClient, corpus: Corpus, ids: dict[str, int]) -> None:
    r = client.get(f"/images/{ids[BIRD]}")
    assert r.status_code == 200
    meta = r.json()
    assert meta["id"] == ids[BIRD] and meta["path"] == BIRD
    assert meta["size"] == (corpus.folder / BIRD).stat().st_size
    assert meta["format"] == "PNG" and meta["width"] > 0 and meta["height"] > 0 and meta["content_hash"]


def test_thumbnail_is_a_cached_jpeg(client: TestClient, corpus: Corpus, ids: dict[str, int]) -> None:
    r = client.get(f"/images/{ids[BIRD]}/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "JPEG" and max(img.size) <= 256
    cached = list((corpus.index / "thumbnails").glob("*-256.jpg"))
    assert cached and r.content in {p.read_bytes() for p in cached}
    again = client.get(f"/images/{ids[BIRD]}/thumbnail")
    assert again.content == r.content
    small = client.get(f"/images/{ids[BIRD]}/thumbnail", params={"size": 32})
    assert small.status_code == 200 and max(Image.open(io.BytesIO(small.content)).size) <= 32
    for size in range(16, 1025, 37):  # every size answered, but the cache keeps only its few
        assert client.get(f"/images/{ids[BIRD]}/thumbnail", params={"size": size}).status_code == 200
    names = {p.name.rsplit("-", 1)[1] for p in (corpus.index / "thumbnails").glob("*.jpg")}
    assert names <= {"64.jpg", "128.jpg", "256.jpg", "512.jpg", "1024.jpg"}


def test_file_is_the_original(client: TestClient, corpus: Corpus, ids: dict[str, int]) -> None:
    for rel in (BIRD, "odd%dir/w1.jpg"):
        r = client.get(f"/images/{ids[rel]}/file")
        assert r.status_code == 200
        assert r.content == (corpus.folder / rel).read_bytes()
        assert r.headers["content-type"] == ("image/png" if rel.endswith(".png") else "image/jpeg")


def test_stats_and_health(client: TestClient, ids: dict[str, int]) -> None:
    stats = client.get("/stats").json()
    assert stats["count"] == stats["vectors"] == len(ids)
    assert stats["model"]["dim"] == 8 + 16 and stats["failed"] == 0  # pooled (8, 16)-channel stages
    assert stats["precomputed_neighbours"] == 32
    assert client.get("/healthz").json() == {"status": "ok"}


def test_openapi_and_docs(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {
        "/search",
        "/images/{image_id}/similar",
        "/images/{image_id}",
        "/images/{image_id}/thumbnail",
        "/images/{image_id}/file",
        "/stats",
        "/healthz",
    } <= set(spec["paths"])
    assert all(op.get("summary") for ops in spec["paths"].values() for op in ops.values())
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_default_host_is_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOKALIKE_HOST", raising=False)
    assert Settings().host == "127.0.0.1"


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kind", "status", "words"),
    [
        ("not_image", 415, "not an image"),
        ("empty", 400, "empty"),
        ("truncated_jpeg", 400, "could not be decoded"),
        ("truncated_png", 400, "could not be decoded"),
    ],
)
def test_bad_uploads(client: TestClient, bad_files: dict[str, Path], kind: str, status: int, words: str) -> None:
    r = upload(client, bad_files[kind].read_bytes(), bad_files[kind].name)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_upload_over_the_size_cap(app_client: Callable[..., TestClient]) -> None:
    with app_client(max_upload_bytes=4000) as c:
        r = upload(c, png((100, 100)))  # ~30 kB, sent with a Content-Length
        assert r.status_code == 413 and "limit of 4,000 bytes" in r.json()["detail"]

        def chunks() -> Iterable[bytes]:  # no Content-Length: counted as it streams in
            body = multipart(png((100, 100)))
            for i in range(0, len(body), 1000):
                yield body[i : i + 1000]

        r = c.post("/search", content=chunks(), headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"})
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        assert upload(c, png((8, 8))).status_code == 200  # under the cap


def test_upload_over_the_pixel_cap(corpus: Corpus, client: TestClient, app_client: Callable[..., TestClient]) -> None:
    # a header claiming 100k x 100k pixels: refused before any pixel is decoded
    r = upload(client, png_header_only(100_000, 100_000))
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    small = Engine(corpus.index, device="cpu", max_pixels=1000)
    try:
        with app_client(small) as c:
            r = upload(c, png((40, 30)))  # 1200 pixels
            assert r.status_code == 413 and "over the limit" in r.json()["detail"]
            assert upload(c, png((30, 30))).status_code == 200
    finally:
        small.close()


def test_unknown_id_is_404(client: TestClient) -> None:
    for image_id in (MISSING, -1, 0, 2**63 - 1, 10**30):
        for suffix in ("", "/similar", "/thumbnail", "/file"):
            r = client.get(f"/images/{image_id}{suffix}")
            assert r.status_code == 404, (image_id, suffix, r.text)
            assert "no indexed image" in r.json()["detail"]


@pytest.mark.parametrize(
    "query",
    [
        "k=0",
        "k=abc",
        "k=-3",
        "k=1001",
        "k=1.5",
        "offset=-1",
        "offset=x",
        "min_similarity=2",
        "min_similarity=-1.5",
        "min_similarity=nan",
        "min_similarity=abc",
        "path_prefix=" + "a" * 2000,
    ],
)
def test_bad_parameters_are_422(client: TestClient, ids: dict[str, int], query: str) -> None:
    r = client.get(f"/images/{ids[BIRD]}/similar?{query}")
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][0] == "query"
    r = client.post(f"/search?{query}", files={"file": ("q.png", png(), "image/png")})
    assert r.status_code == 422


@pytest.mark.parametrize("image_id", ["abc", "1.5", "1e3", "0x10", "%20", "true", "1_0", "+1", "%201"])
def test_non_integer_id_is_422(client: TestClient, image_id: str) -> None:
    for suffix in ("", "/similar", "/thumbnail", "/file"):
        r = client.get(f"/images/{image_id}{suffix}")
        assert r.status_code == 422, (image_id, suffix)
        assert r.json()["detail"][0]["loc"] == ["path", "image_id"]


def test_malformed_requests_are_4xx_never_500(app_client: Callable[..., TestClient], ids: dict[str, int]) -> None:
    ct = {"content-type": "multipart/form-data; boundary=xyz"}
    cases = [
        ("POST", "/search", {}, 422),  # no body at all
        ("POST", "/search", {"files": {"other": ("q.png", png(), "image/png")}}, 422),  # missing file field
        ("POST", "/search", {"data": {"file": "not a file"}}, 422),  # a text field called file
        ("POST", "/search", {"files": {"file": ("", b"abc", "image/png")}}, 422),  # no file name: a text field
        ("POST", "/search", {"content": b"{}", "headers": {"content-type": "application/json"}}, 422),
        ("POST", "/search", {"content": b"garbage", "headers": ct}, 400),  # not multipart at all
        (
            "POST",
            "/search",
            {"content": b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n', "headers": ct},
            422,
        ),  # truncated: no complete file field
        ("GET", "/search", {}, 405),
        ("DELETE", f"/images/{ids[BIRD]}", {}, 405),
        ("GET", f"/images/{ids[BIRD]}/similar?path_prefix=%00", {}, 200),
        ("GET", f"/images/{ids[BIRD]}/similar?path_prefix=%25%25%5F%5C", {}, 200),
        ("GET", f"/images/{ids[BIRD]}/thumbnail?size=0", {}, 422),
        ("GET", f"/images/{ids[BIRD]}/thumbnail?size=99999", {}, 422),
        ("GET", "/nothing/here", {}, 404),
    ]
    with app_client() as c:
        for method, url, kwargs, status in cases:
            r = c.request(method, url, **kwargs)
            assert r.status_code == status, (method, url, kwargs.keys(), r.status_code, r.text[:200])
            if r.status_code >= 400 and r.status_code != 405:
                assert "detail" in r.json()


def test_symlink_out_of_the_folder_is_not_served(client: TestClient, corpus: Corpus, ids: dict[str, int]) -> None:
    link = ids["link.jpg"]
    secret = corpus.outside.read_bytes()
    for suffix in ("/file", "/thumbnail"):
        r = client.get(f"/images/{link}{suffix}")
        assert r.status_code == 404 and "outside the indexed folder" in r.json()["detail"]
        assert secret not in r.content


# ---------------------------------------------------------------- the API token


def data_requests(ids: dict[str, int]) -> list[tuple[str, str, dict]]:
    i = ids[BIRD]
    return [
        ("POST", "/search", {"files": {"file": ("q.png", png(), "image/png")}}),
        ("GET", f"/images/{i}/similar", {}),
        ("GET", f"/images/{i}", {}),
        ("GET", f"/images/{i}/thumbnail", {}),
        ("GET", f"/images/{i}/file", {}),
        ("GET", "/stats", {}),
    ]


def test_token_required_when_set(app_client: Callable[..., TestClient], ids: dict[str, int]) -> None:
    wrong = [None, "Bearer nope", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer ", f"Bearer {TOKEN[:-1]}"]
    with app_client(api_token=TOKEN) as c:
        for method, url, kwargs in data_requests(ids):
            for header in wrong:
                headers = {"Authorization": header} if header is not None else {}
                r = c.request(method, url, headers=headers, **kwargs)
                assert r.status_code == 401, (url, header)
                assert r.headers["www-authenticate"] == "Bearer" and "token" in r.json()["detail"]
            for header in (f"Bearer {TOKEN}", f"bearer {TOKEN}"):
                r = c.request(method, url, headers={"Authorization": header}, **kwargs)
                assert r.status_code == 200, (url, r.text)
        assert c.get("/healthz").status_code == 200  # liveness needs no token
        assert c.get("/").status_code == 200  # the page is a shell: it asks for the token itself
        assert c.get(f"/images/{MISSING}").status_code == 401  # no probing for ids without the token


def test_token_off_by_default(client: TestClient, ids: dict[str, int]) -> None:
    for method, url, kwargs in data_requests(ids):
        assert client.request(method, url, **kwargs).status_code == 200


def test_token_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, corpus: Corpus, engine: Engine, ids: dict[str, int]
) -> None:
    from search.api import create_app

    monkeypatch.setenv("LOOKALIKE_API_TOKEN", "from-env")
    with TestClient(create_app(Settings(index=corpus.index), engine)) as c:
        assert c.get("/stats").status_code == 401
        assert c.get("/stats", headers={"Authorization": "Bearer from-env"}).status_code == 200


def test_token_on_a_real_server(token_server: Server, ids: dict[str, int]) -> None:
    assert token_server.get("/stats")[0] == 401
    assert token_server.get("/stats", {"Authorization": "Bearer wrong"})[0] == 401
    status, body = token_server.get(f"/images/{ids[BIRD]}/thumbnail", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and body[:2] == b"\xff\xd8"
    assert token_server.get("/healthz")[0] == 200


def test_page_is_plain_and_self_contained() -> None:
    """The page needs no build step and loads nothing from elsewhere."""
    static = Path(__file__).resolve().parents[2] / "search" / "static"
    assert all(p.suffix in {".html", ".css", ".js", ".svg", ".ico"} for p in static.rglob("*") if p.is_file())
    for p in static.rglob("*"):
        if p.is_file():
            text = p.read_text().replace("http://www.w3.org/2000/svg", "")
            for marker in ("http://", "https://", "//cdn", "@import", 'src="//'):
                assert marker not in text, (p.name, marker)


def test_similar_from_the_table_and_from_a_live_search_agree(client: TestClient, engine, ids: dict[str, int]) -> None:
    image_id = ids[BIRD]
    from_table = client.get(f"/images/{image_id}/similar?k=5").json()["results"]
    live = engine.search_vector(engine.vector(image_id), k=5, exclude_id=image_id)
    assert [r["similarity"] for r in from_table] == pytest.approx([h.similarity for h in live], abs=1e-5)
    # A path filter is answered by a search (in the threadpool): same shape, only that folder.
    filtered = client.get(f"/images/{image_id}/similar?k=3&path_prefix=letters/").json()["results"]
    assert len(filtered) == 3 and all(r["path"].startswith("letters/") for r in filtered)
    assert client.get("/images/999999/similar?path_prefix=letters/").status_code == 404
