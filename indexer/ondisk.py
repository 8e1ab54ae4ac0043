"""The search index for collections past one machine's comfortable RAM: IVF-PQ with its
inverted lists in a file of their own, memory-mapped, and candidates re-ranked exactly.

Three files in a generation (all written by a publish, never edited in place):
- ``search.faiss``: the coarse quantiser (``nlist`` centroids), the PQ codebooks and where
  each inverted list lies in the data file: a few MB whatever the collection's size.
- ``search.ivfdata``: the inverted lists, ``m`` bytes of PQ code + 8 bytes of id a vector
  (68 at 240 dims), read by the server through ``mmap``: only the lists a query probes are
  paged in (page cache, shared by every worker), so anonymous RSS does not grow with the
  collection. FAISS records this file's name inside ``search.faiss``; readers open it with
  ``IO_FLAG_ONDISK_SAME_DIR`` (the file beside the index file, whatever directory it was
  written in), so a generation can be linked or moved.
- ``search.ids.npy``: (id, fingerprint) of every indexed vector, sorted by id. Only the
  writer reads it: it tells the next publish which vectors are new, changed or gone without
  re-encoding the others.

A query probes ``nprobe`` lists, takes ``rerank`` x k candidates by their PQ scores (which
are approximate: 60 bytes cannot rank near-ties; L2 on the unit vectors, see :func:`train`;
both numbers are tuned together at each publish, indexer/ondisk_tune.py)
and re-ranks them by exact inner product with the stored vectors (a callable
``get_vectors(ids)``, so any store that can fetch by id serves). Adding images does not
rebuild: the new vectors are encoded with the trained quantiser and the old lists are copied
as they are into a new data file (FAISS cannot append to a merged on-disk list: its slot
bookkeeping breaks, so each publish writes a fresh file, ~68 bytes a vector, against the
exact store's 968).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .neighbours import fingerprints

ONDISK = "ivfpq-disk"
SEARCH_DATA = "search.ivfdata"
SEARCH_IDS = "search.ids.npy"
#: Files of an on-disk index besides ``search.faiss`` (a publish links them into the generation).
ONDISK_FILES = (SEARCH_DATA, SEARCH_IDS)

#: Above this many vectors, ``plan_index(..., "auto")`` picks the on-disk index over HNSW.
#: HNSW costs ~1,240 bytes a vector that must stay in RAM to search fast (2.5 GB at 2M,
#: past the 3 GB server target at 2.4M), took 26 min to build at 1M on this machine and needs
#: efSearch 384 for recall 0.95 on autoencoder-like vectors; IVF-PQ on disk built 1M in 2.2 min,
#: holds ~65 MB of RAM (its precomputed L2 table) and answered in 2.9 ms p50 at recall 0.96 after
#: the re-rank (docs/pending-ondisk.md). Below it HNSW fits in RAM and keeps the neighbour table.
ONDISK_ABOVE = 2_000_000
#: Above this many vectors the precomputed neighbour table is published empty: filling it costs
#: one search per image (10M images x ~3-8 ms measured = 8-22 h of CPU per full table) and 400 bytes an image
#: (4 GB at 10M), to save each by-id query one search of a few ms.
NEIGHBOURS_MAX = ONDISK_ABOVE
#: The quantiser is retrained (the index rebuilt) once the collection has grown past this factor
#: of the size it was trained at: ``nlist`` was sized ~sqrt(n) for that size, so at 4x each list is
#: 4x longer than planned and a query scans ~2x what a fresh index would, and a sample of the
#: early quarter may not cover what was added since. Below it, new vectors are only encoded.
RETRAIN_GROWTH = 4.0
#: Candidates re-ranked per result asked for, and at least CANDIDATES_MIN: PQ scores cannot
#: order near-ties, so a top-1 query re-ranking only 8 missed itself 1 time in 5 (tests).
RERANK = 8
CANDIDATES_MIN = 64
#: The codes in the lists: "pq" (``m`` bytes, 60 at 240 dims) or "sq8" (1 byte a dimension, 240).
#: See docs/pending-16-ondisk.md for the measurement that chose it.
CODES = "pq"
#: Training points per list (k-means needs ~39; more gives better centroids, costs train time).
TRAIN_PER_LIST = 64
TRAIN_MAX = 300_000
#: The PQ codebooks (256 centroids per sub-quantiser) want ~39-256 points per centroid.
PQ_TRAIN = 256 * 64
#: Vectors encoded at once (one block of lists in RAM: ~40 MB at 1M).
CHUNK = 1_000_000

Chunks = Iterable[tuple[np.ndarray, np.ndarray]]
GetVectors = Callable[[np.ndarray], np.ndarray]


def ondisk_params(n: int, dim: int) -> dict[str, Any]:
    """nlist, PQ layout and starting search effort for `n` vectors of `dim`."""
    # nlist ~ sqrt(n), a power of two, with enough points per list to train (~39 each).
    nlist = 2 ** round(math.log2(max(16.0, math.sqrt(max(n, 1)))))
    while nlist > 16 and n < 39 * nlist:
        nlist //= 2
    # 4 dimensions per sub-quantiser of 8 bits (60 bytes at 240 dims). Measured on 200k
    # autoencoder-like vectors (cosines of random pairs 0.97-0.99: neighbours differ in little),
    # recall@10 after re-rank of 80 candidates at nprobe 32: 30 bytes 0.90, 60 bytes 0.94, as
    # IVF-SQ8's 240 bytes; 30 bytes needed 400 candidates to reach 0.93.
    m = next(mm for mm in (dim // 4, dim // 2, dim) if mm >= 1 and dim % mm == 0)
    return {"nlist": nlist, "codes": CODES, "m": m, "nbits": 8, "nprobe": 16, "rerank": RERANK, "trained_on": n}


def train(sample: np.ndarray, params: dict[str, Any]) -> faiss.Index:
    """An empty IVF index trained on `sample` (at most TRAIN_MAX rows are used), with PQ codes of
    ``params["m"]`` bytes or, for ``params["codes"] == "sq8"``, 8-bit scalar codes (see CODES).

    L2, not inner product, though similarity is the inner product: the vectors are unit length,
    so both rank alike, and k-means centroids are not: with inner product a vector goes to the
    centroid of largest norm as much as to the nearest one. Measured on 200k autoencoder-like
    vectors (bench/ondisk_10m.py's), recall@10 after re-rank at nprobe 16 of 256: 0.51 with inner
    product, 0.86 with L2 (PQ 30 bytes); the re-rank puts the exact inner products back."""
    d = sample.shape[1]
    quantizer = faiss.IndexFlatL2(d)
    if params.get("codes", "pq") == "sq8":  # 1 byte a dimension, no codebooks to train
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, params["nlist"], faiss.ScalarQuantizer.QT_8bit)
    else:
        index = faiss.IndexIVFPQ(quantizer, d, params["nlist"], params["m"], params["nbits"])
    index.own_fields = True
    quantizer.this.disown()
    index.cp.max_points_per_centroid = TRAIN_PER_LIST  # FAISS subsamples to this many per list
    index.train(np.ascontiguousarray(sample[:TRAIN_MAX], dtype=np.float32))
    return index


def training_sample(chunks: Chunks, n: int, nlist: int, seed: int = 0) -> np.ndarray:
    """A uniform sample of TRAIN_PER_LIST x `nlist` vectors (capped) from the `n` vectors in `chunks`."""
    want = min(n, max(TRAIN_PER_LIST * nlist, PQ_TRAIN), TRAIN_MAX)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(n, size=want, replace=False))
    parts, start = [], 0
    for _, vecs in chunks:
        lo, hi = np.searchsorted(picked, [start, start + len(vecs)])
        parts.append(np.asarray(vecs[picked[lo:hi] - start], dtype=np.float32))
        start += len(vecs)
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def build(trained: faiss.Index, chunks: Chunks, out_dir: Path) -> tuple[faiss.Index, np.ndarray]:
    """Encode `chunks` with the `trained` (empty) index, into ``out_dir/search.ivfdata``.
    Returns the index (its lists on disk) and the (id, fingerprint) table."""
    return _merge(_empty_copy(trained), None, chunks, out_dir)


def update(previous_dir: Path, chunks: Chunks, out_dir: Path) -> tuple[faiss.Index, np.ndarray, dict[str, int]]:
    """A new on-disk index in `out_dir` holding the vectors of `chunks` (the whole collection),
    made from the one in `previous_dir` without retraining: vectors it holds unchanged (same id,
    same fingerprint) keep their codes, the others are encoded, the ones `chunks` lacks are dropped.
    Returns the index, the (id, fingerprint) table and counts of what was added, changed, removed."""
    old_table = np.load(previous_dir / SEARCH_IDS)
    old = read(previous_dir / "search.faiss")
    trained = faiss.read_index(os.fspath(previous_dir / "search.faiss"), faiss.IO_FLAG_SKIP_IVF_DATA)
    counts = {"added": 0, "changed": 0, "removed": 0, "kept": 0}
    seen: list[np.ndarray] = []
    changed: list[np.ndarray] = []

    def fresh() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for ids, vecs in chunks:
            ids = np.asarray(ids, dtype=np.int64)
            fp = fingerprints(vecs)
            pos = np.searchsorted(old_table["id"], ids).clip(0, max(0, len(old_table) - 1))
            present = (old_table["id"][pos] == ids) if len(old_table) else np.zeros(len(ids), bool)
            same = present & (old_table["fp"][pos] == fp) if len(old_table) else present
            seen.append(ids)
            counts["kept"] += int(same.sum())
            counts["added"] += int((~present).sum())
            moved = present & ~same
            changed.append(ids[moved])
            # A changed vector keeps its old entry until the merge is done, so its new one goes in
            # under a temporary (negative) id: removing the old one by id must not remove both.
            out_ids = np.where(moved, ~ids, ids)
            if (~same).any():
                yield out_ids[~same], np.asarray(vecs, dtype=np.float32)[~same]

    index, table = _merge(_empty_copy(trained), faiss.extract_index_ivf(old).invlists, fresh(), out_dir, old)
    # The table _merge made lists only the fresh vectors: the kept ones come from the old table.
    all_ids = np.concatenate(seen) if seen else np.zeros(0, np.int64)
    was_changed = np.concatenate(changed) if changed else np.zeros(0, np.int64)
    gone = np.setdiff1d(old_table["id"], all_ids, assume_unique=True)
    counts["changed"], counts["removed"] = len(was_changed), len(gone)
    stale = np.concatenate([was_changed, gone])
    if len(stale):
        index.remove_ids(faiss.IDSelectorBatch(stale))
    if len(was_changed):
        _restore_ids(index)
    keep = ~np.isin(old_table["id"], stale)
    fresh_rows = table.copy()
    fresh_rows["id"] = np.where(fresh_rows["id"] < 0, ~fresh_rows["id"], fresh_rows["id"])
    table = np.concatenate([old_table[keep], fresh_rows])
    table.sort(order="id")
    return index, table, counts


def _empty_copy(trained: faiss.Index) -> faiss.Index:
    """A trained index with empty in-RAM lists (a fresh copy: `trained` is left as it is)."""
    lists = faiss.extract_index_ivf(trained).invlists
    # An index read with IO_FLAG_SKIP_IVF_DATA has no lists to clone: its own are replaced.
    owned = lists is not None and isinstance(faiss.downcast_InvertedLists(lists), faiss.ArrayInvertedLists)
    empty = faiss.clone_index(trained) if owned else trained
    e_ivf = faiss.extract_index_ivf(empty)
    lists = faiss.ArrayInvertedLists(e_ivf.nlist, e_ivf.code_size)
    e_ivf.replace_invlists(lists, True)
    lists.this.disown()  # the index owns it now
    e_ivf.ntotal = empty.ntotal = 0
    return empty


def _merge(
    target: faiss.Index,
    base_lists: faiss.InvertedLists | None,
    chunks: Chunks,
    out_dir: Path,
    keep_alive: Any = None,
) -> tuple[faiss.Index, np.ndarray]:
    """Encode each chunk into a block file of its own (bounded RAM), then write `base_lists`
    (copied as they are) and every block into one new ``out_dir/search.ivfdata``, and make it
    `target`'s lists. Returns `target` and the (id, fingerprint) table of the encoded vectors."""
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks_dir = out_dir / "blocks"
    blocks_dir.mkdir(exist_ok=True)
    tables, block_files = [], []
    for ids, vecs in chunks:
        block_files.append(blocks_dir / f"{len(block_files)}.faiss")
        tables.append(encode_block(target, ids, vecs, block_files[-1]))
    merge_blocks(target, block_files, out_dir / SEARCH_DATA, base_lists)
    del keep_alive
    shutil.rmtree(blocks_dir)
    table = np.concatenate(tables) if tables else np.zeros(0, dtype=IDS_DTYPE)
    table.sort(order="id")
    return target, table


def encode_block(empty: faiss.Index, ids: np.ndarray, vecs: np.ndarray, path: Path) -> np.ndarray:
    """Encode one chunk with the trained `empty` index into an IVF index file of its own at `path`
    (a block: its lists in RAM only while it is encoded). Returns its (id, fingerprint) table."""
    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    block = faiss.clone_index(empty)
    block.add_with_ids(vecs, ids)
    faiss.write_index(block, os.fspath(path))
    table = np.zeros(len(ids), dtype=IDS_DTYPE)
    table["id"], table["fp"] = ids, fingerprints(vecs)
    return table


def merge_blocks(
    target: faiss.Index, block_files: list[Path], data: Path, base_lists: faiss.InvertedLists | None = None
) -> faiss.Index:
    """Copy `base_lists` and the lists of every block (memory-mapped, not loaded) into one new on-disk
    list file `data`, list by list, and make it the lists of `target` (trained, empty)."""
    # Only the blocks' lists are read here: without SKIP_PRECOMPUTE_TABLE every block loaded would
    # compute its own IVF-PQ distance table (nlist x m x 256 floats: 250 MB at 4,096 lists), and a
    # store of 30 segments published at 3M vectors held 4.2 GB of them at once (bench/writer_memory.py).
    flags = faiss.IO_FLAG_MMAP | getattr(faiss, "IO_FLAG_SKIP_PRECOMPUTE_TABLE", 0)
    blocks = [faiss.read_index(os.fspath(p), flags) for p in block_files]
    sources = ([base_lists] if base_lists is not None else []) + [faiss.extract_index_ivf(b).invlists for b in blocks]
    ivf = faiss.extract_index_ivf(target)
    data.unlink(missing_ok=True)
    invlists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, os.fspath(data))
    vector = faiss.InvertedListsPtrVector()
    for lists in sources:
        vector.push_back(lists)
    ntotal = invlists.merge_from_multiple(vector.data(), vector.size(), False)
    ivf.replace_invlists(invlists, True)
    invlists.this.disown()  # the index owns it now
    ivf.ntotal = target.ntotal = ntotal
    return target


def _restore_ids(index: faiss.Index) -> None:
    """Give the entries added under temporary ids (~id) their real ids, in place in the lists."""
    lists = faiss.extract_index_ivf(index).invlists
    for no in range(lists.nlist):
        size = lists.list_size(no)
        if size:
            ids = faiss.rev_swig_ptr(lists.get_ids(no), size)  # the mapped file itself, writable here
            neg = ids < 0
            if neg.any():
                ids[neg] = ~ids[neg]


IDS_DTYPE = np.dtype([("id", "<i8"), ("fp", "<u8")])


def write(index: faiss.Index, table: np.ndarray, out_dir: Path) -> None:
    """Write ``search.faiss`` and ``search.ids.npy`` beside the data file in `out_dir`."""
    faiss.write_index(index, os.fspath(out_dir / "search.faiss"))
    np.save(out_dir / SEARCH_IDS, table, allow_pickle=False)


def read(path: str | os.PathLike, params: dict[str, Any] | None = None) -> faiss.Index:
    """Open an on-disk index read-only: its lists are memory-mapped from the ``.ivfdata`` file beside
    `path` (wherever the index was written), shared by every process that opens it."""
    index = faiss.read_index(os.fspath(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
    if params and "nprobe" in params:
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
    return index


def has_lists(path: str | os.PathLike) -> bool:
    """True if the index file at `path` keeps its inverted lists in the ``.ivfdata`` file beside it
    (``search.faiss`` -> ``search.ivfdata``): such a file must be opened with :func:`read`, since
    FAISS's memory-mapping flags leave its lists unmapped. A store beside it is not such a file."""
    return Path(path).with_suffix(".ivfdata").exists()


def is_on_disk(index: faiss.Index) -> bool:
    """True if `index`'s inverted lists are read from a file (not held in RAM)."""
    try:
        lists = faiss.extract_index_ivf(index).invlists
    except RuntimeError:
        return False
    return isinstance(faiss.downcast_InvertedLists(lists), faiss.OnDiskInvertedLists)


def candidates(k: int, rerank: int, ntotal: int) -> int:
    """How many candidates a query for `k` results re-ranks: `rerank` x `k`, at least CANDIDATES_MIN,
    at most the index's size (but never fewer than `k`)."""
    return max(k, min(ntotal, max(CANDIDATES_MIN, k * max(1, rerank))))


def search(
    index: faiss.Index, q: np.ndarray, k: int, get_vectors: GetVectors, rerank: int = RERANK
) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, ids) of the `k` best of `rerank` x `k` candidates per query row, by exact
    inner product with the vectors `get_vectors` returns; -inf / -1 where fewer were found.
    `rerank` is a search parameter tuned with nprobe (indexer/ondisk_tune.py, manifest params)."""
    q = np.ascontiguousarray(q, dtype=np.float32).reshape(-1, index.d)
    _, cand = index.search(q, candidates(k, rerank, int(index.ntotal)))
    sims = np.full((len(q), k), -np.inf, dtype=np.float32)
    out = np.full((len(q), k), -1, dtype=np.int64)
    found = cand[cand >= 0]
    if not len(found):
        return sims, out
    unique, inverse = np.unique(found, return_inverse=True)
    vecs = np.asarray(get_vectors(unique), dtype=np.float32)
    pos = np.full(cand.shape, -1, dtype=np.int64)
    pos[cand >= 0] = inverse.ravel()
    for row in range(len(q)):
        p = pos[row][pos[row] >= 0]
        s = vecs[p] @ q[row]
        top = np.argsort(-s, kind="stable")[:k]
        sims[row, : len(top)] = s[top]
        out[row, : len(top)] = unique[p[top]]
    return sims, out


def chunked(ids: np.ndarray, vectors: np.ndarray, size: int = CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) in slices of `size` rows (views, no copies)."""
    for s in range(0, len(ids), size):
        yield ids[s : s + size], vectors[s : s + size]


def refresh(
    index_dir: Path,
    chunks: Callable[[], Chunks],
    n: int,
    params: dict[str, Any],
    previous_dir: Path | None,
    previous_params: dict[str, Any] | None,
) -> tuple[faiss.Index, dict[str, Any], str]:
    """Make the writer's working on-disk index (the three files at the top of `index_dir`) for the
    `n` vectors that `chunks()` yields (it is called once or twice): an update of the published one
    in `previous_dir` when there is one from the same model (the caller's check) that was trained on
    at least 1/RETRAIN_GROWTH of `n` vectors, else a new one trained on a sample.
    Returns the index (lists on disk), its parameters and what was done, in words."""
    work = index_dir / "search.ondisk.tmp"
    shutil.rmtree(work, ignore_errors=True)
    usable = (
        previous_dir is not None
        and previous_params is not None
        and all((previous_dir / name).exists() for name in ("search.faiss", *ONDISK_FILES))
        and n <= RETRAIN_GROWTH * int(previous_params.get("trained_on", 0))
        and previous_params.get("codes", "pq") == params.get("codes", "pq")  # other codes: a new index
    )
    if usable:
        assert previous_dir is not None and previous_params is not None
        index, table, counts = update(previous_dir, chunks(), work)
        keep = ("nlist", "codes", "m", "nbits", "trained_on")
        params = {**params, **{key: previous_params[key] for key in keep if key in previous_params}}
        note = (
            f"on-disk lists updated with the quantiser trained on {params['trained_on']:,} vectors"
            f" ({counts['added']:,} added, {counts['changed']:,} changed, {counts['removed']:,} removed)"
        )
    else:
        sample = training_sample(chunks(), n, params["nlist"])
        index, table = build(train(sample, params), chunks(), work)
        params = {**params, "trained_on": n}
        note = f"trained on {len(sample):,} sampled vectors, {n:,} encoded into on-disk lists"
    write(index, table, work)
    for name in ("search.faiss", *ONDISK_FILES):
        os.replace(work / name, index_dir / name)  # new inodes: a published generation's links stay as they were
    work.rmdir()
    return index, params, note
