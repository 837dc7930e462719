"""ANN retrieval from Milvus: milvus-lite (a local file) by default, a Milvus server by URI.

The collection is built from the published item vectors. Its description carries a fingerprint
of those vectors and of the index (type and parameters), so a server collection is reused across
restarts and instances while it holds the same catalogue under the same index, and rebuilt when
a new catalogue is published or the index setting changes.

The index is ``serving.ann_index``: FLAT (the default) is exact, so the served top-k equals the
reference's brute-force search; IVF_FLAT searches ``ann_nprobe`` of ``ann_nlist`` k-means cells;
HNSW needs a Milvus server (milvus-lite 2.5 accepts only FLAT, IVF_FLAT and AUTOINDEX), and
milvus-lite 2.5.1 ignores ``nprobe`` (the same recall@500 for nprobe 1 to 512, measured), so on
lite ``ann_nlist`` is IVF_FLAT's only knob.
bench/results/catalogue_scale.json measures their search time and recall@500 against FLAT at
20k, 200k and 1M items.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from genrec.settings import AnnIndexType, ServingConfig

# Rows per insert call. Most of an insert's time is pymilvus packing rows in Python and the
# server ingesting them; two calls in flight overlap the one with the other (INSERT_IN_FLIGHT).
INSERT_BATCH = 2_000
INSERT_IN_FLIGHT = 2


def vectors_fingerprint(vectors: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(vectors, dtype=np.float32).tobytes(), digest_size=12).hexdigest()


@dataclass(frozen=True)
class IndexSpec:
    """A Milvus vector index and how it is searched (``ServingConfig.ann_*``)."""

    kind: AnnIndexType = AnnIndexType.FLAT
    nlist: int = 0  # IVF cells; 0 = default_nlist(items)
    nprobe: int = 32
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    hnsw_ef: int = 0  # 0 = 2 x k

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", AnnIndexType(self.kind))

    @classmethod
    def of(cls, s: ServingConfig) -> IndexSpec:
        return cls(s.ann_index, s.ann_nlist, s.ann_nprobe, s.ann_hnsw_m, s.ann_hnsw_ef_construction, s.ann_hnsw_ef)

    @property
    def exact(self) -> bool:
        return self.kind is AnnIndexType.FLAT

    def cells(self, n_items: int) -> int:
        return self.nlist or default_nlist(n_items)

    def build_params(self, n_items: int) -> dict[str, int]:
        if self.kind is AnnIndexType.IVF_FLAT:
            return {"nlist": self.cells(n_items)}
        if self.kind is AnnIndexType.HNSW:
            return {"M": self.hnsw_m, "efConstruction": self.hnsw_ef_construction}
        return {}

    def search_params(self, k: int) -> dict[str, int]:
        if self.kind is AnnIndexType.IVF_FLAT:
            return {"nprobe": self.nprobe}
        if self.kind is AnnIndexType.HNSW:
            return {"ef": max(int(k), self.hnsw_ef or 2 * int(k))}  # Milvus refuses ef < k
        return {}

    def describe(self, n_items: int) -> str:
        """``FLAT``, ``IVF_FLAT(nlist=1024,nprobe=32)``: the index with everything that changes it."""
        p = {**self.build_params(n_items), **({"nprobe": self.nprobe} if self.kind is AnnIndexType.IVF_FLAT else {})}
        if self.kind is AnnIndexType.HNSW:
            p["ef"] = self.hnsw_ef  # 0: 2 x k at search time
        return self.kind.value + (f"({','.join(f'{k}={v}' for k, v in p.items())})" if p else "")


def default_nlist(n_items: int) -> int:
    """IVF cells for a catalogue: 4 x sqrt(n), the usual rule, at least 16 and never more than n."""
    return max(1, min(n_items, max(16, int(4 * math.sqrt(max(n_items, 1))))))


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of |found_k ∩ exact_k| / |exact_k| (ids; -1 padding in ``found`` ignored)."""
    found, exact = np.atleast_2d(found), np.atleast_2d(exact)
    if found.shape[0] != exact.shape[0]:
        raise ValueError(f"{found.shape[0]} result rows against {exact.shape[0]} exact rows")
    out = []
    for f, e in zip(found, exact):
        e = e[e >= 0]
        if e.size:
            out.append(np.intersect1d(f[f >= 0], e).size / e.size)
    return float(np.mean(out)) if out else 1.0


SERVER_GRACEFUL_S = 5.5  # Milvus's quotaAndLimits/common gracefulTime (5 s) for Bounded consistency, plus a margin


def _columns(row: Any) -> tuple[Any, Any]:
    """One query's (ids, distances). pymilvus >= 2.5 keeps them as decoded columns (``row.ids``,
    ``row.distances``); indexing the row instead materialises every hit's entity dict again."""
    if hasattr(row, "ids") and hasattr(row, "distances"):
        return row.ids, row.distances
    return [h["id"] for h in row], [h["distance"] for h in row]


class MilvusIndex:
    """An ``AnnIndex`` over a Milvus collection of (id, vector) rows."""

    def __init__(
        self,
        uri: str,
        collection: str,
        vectors: np.ndarray,
        token: str = "",
        index: IndexSpec | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        with warnings.catch_warnings():  # milvus-lite imports pkg_resources, which warns on import
            warnings.simplefilter("ignore")
            from pymilvus import MilvusClient

        self.collection = collection
        self.uri = uri
        self.index = index or IndexSpec()
        self.built = False  # True when this call inserted the rows (False: an existing collection was reused)
        try:
            self.client = MilvusClient(uri=uri, token=token) if token else MilvusClient(uri=uri)
        except Exception:
            self._release_lite()  # a server started for a client that failed would stay registered
            raise
        try:
            self._ensure(np.ascontiguousarray(vectors, dtype=np.float32), progress)
        except Exception:
            self.close()
            raise

    def _ensure(self, vectors: np.ndarray, progress: Callable[[str], None] | None) -> None:
        from pymilvus import DataType, MilvusClient

        c, name, n = self.client, self.collection, int(vectors.shape[0])
        tag = f"genrec item vectors {vectors_fingerprint(vectors)} n={n} index={self.index.describe(n)}"
        if c.has_collection(name):
            if c.describe_collection(name).get("description") == tag:
                c.load_collection(name)
                return
            c.drop_collection(name)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=tag)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(vectors.shape[1]))
        params = c.prepare_index_params()
        params.add_index("vector", index_type=self.index.kind.value, metric_type="IP", params=self.index.build_params(n))
        c.create_collection(name, schema=schema, index_params=params)
        insert_rows(lambda rows: c.insert(name, rows), vectors, progress)
        inserted_at = time.monotonic()
        c.flush(name)
        if not self.uri.endswith(".db"):  # a Milvus server builds the index in the background
            self._wait_indexed(name, progress)
            # searches are Bounded-consistent: rows younger than the server's graceful time are not
            # seen yet (a fresh 1M collection searched at once lost ~19% of its rows)
            time.sleep(max(0.0, SERVER_GRACEFUL_S - (time.monotonic() - inserted_at)))
        c.load_collection(name)
        self.built = True

    def _wait_indexed(self, name: str, progress: Callable[[str], None] | None, timeout_s: float = 3600.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.client.describe_index(name, "vector")
            if info.get("state") == "Finished" and not info.get("pending_index_rows"):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"Milvus index of {name} not built in {timeout_s:.0f} s: {info}")
            if progress:
                progress(f"[milvus] {name}: {info.get('indexed_rows', 0)}/{info.get('total_rows', '?')} rows indexed")
            time.sleep(2.0)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        hits = self.client.search(
            self.collection,
            data=list(q),
            limit=int(k),
            output_fields=[],
            search_params={"metric_type": "IP", "params": self.index.search_params(k)},
        )
        ids = np.full((q.shape[0], k), -1, dtype=np.int64)
        scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        for r, row in enumerate(hits):
            row_ids, row_scores = _columns(row)
            ids[r, : len(row_ids)] = row_ids
            scores[r, : len(row_scores)] = row_scores
        return ids, scores

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            self._release_lite()

    def _release_lite(self) -> None:
        if self.uri.endswith(".db"):
            # milvus-lite keeps one server per file for the process's lifetime: a server that died
            # (killed, crashed) stays registered and every reconnect goes to its dead socket, so it
            # is released here and the next MilvusIndex on this file starts a fresh one
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.uri)


def insert_rows(
    insert: Callable[[list[dict[str, Any]]], object],
    vectors: np.ndarray,
    progress: Callable[[str], None] | None = None,
    batch: int = INSERT_BATCH,
    in_flight: int = INSERT_IN_FLIGHT,
) -> None:
    """Insert ``vectors`` as rows ``{"id": i, "vector": [...]}`` in batches, ``in_flight`` calls at a
    time: pymilvus packs a batch in Python while the server ingests the one before (at 1M items,
    one call at a time left a core idle and made loading the model take minutes). The first
    failure is raised once the calls already sent have ended."""
    n = int(vectors.shape[0])
    pending: list[Future] = []
    lock = threading.Lock()
    done = [0]

    def one(start: int) -> None:
        rows = vectors[start : start + batch]
        insert([{"id": start + i, "vector": v} for i, v in enumerate(rows.tolist())])  # lists: pymilvus packs them faster than arrays
        with lock:
            done[0] += len(rows)
            if progress is not None and (done[0] // batch) % 100 == 0:
                progress(f"  milvus: {done[0]}/{n} rows inserted")

    with ThreadPoolExecutor(max_workers=max(1, in_flight), thread_name_prefix="milvus-insert") as pool:
        for start in range(0, n, batch):
            if len(pending) >= in_flight:
                pending.pop(0).result()
            pending.append(pool.submit(one, start))
        for f in pending:
            f.result()
