"""ANN retrieval from Milvus: milvus-lite (a local file) by default, a Milvus server by URI.

The collection is built from the published item vectors. Its description carries a fingerprint
of those vectors, so a server collection is reused across restarts and instances while it holds
the same catalogue, and rebuilt when a new catalogue is published. The index is FLAT with inner
product: exact, so the served top-k equals the reference's brute-force search (an IVF/HNSW index
is a one-line change for catalogues where exact search is too slow).
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np

INSERT_BATCH = 5_000


def vectors_fingerprint(vectors: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(vectors, dtype=np.float32).tobytes(), digest_size=12).hexdigest()


class MilvusIndex:
    """An ``AnnIndex`` over a Milvus collection of (id, vector) rows."""

    def __init__(self, uri: str, collection: str, vectors: np.ndarray, token: str = "") -> None:
        with warnings.catch_warnings():  # milvus-lite imports pkg_resources, which warns on import
            warnings.simplefilter("ignore")
            from pymilvus import MilvusClient

        self.collection = collection
        self.uri = uri
        try:
            self.client = MilvusClient(uri=uri, token=token) if token else MilvusClient(uri=uri)
        except Exception:
            self._release_lite()  # a server started for a client that failed would stay registered
            raise
        try:
            self._ensure(np.ascontiguousarray(vectors, dtype=np.float32))
        except Exception:
            self.close()
            raise

    def _ensure(self, vectors: np.ndarray) -> None:
        from pymilvus import DataType, MilvusClient

        c, name = self.client, self.collection
        tag = f"genrec item vectors {vectors_fingerprint(vectors)} n={vectors.shape[0]}"
        if c.has_collection(name):
            if c.describe_collection(name).get("description") == tag:
                c.load_collection(name)
                return
            c.drop_collection(name)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=tag)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(vectors.shape[1]))
        index = c.prepare_index_params()
        index.add_index("vector", index_type="FLAT", metric_type="IP")
        c.create_collection(name, schema=schema, index_params=index)
        for start in range(0, vectors.shape[0], INSERT_BATCH):
            rows = vectors[start : start + INSERT_BATCH]
            c.insert(name, [{"id": start + i, "vector": v} for i, v in enumerate(rows)])
        c.flush(name)
        c.load_collection(name)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        hits = self.client.search(self.collection, data=list(q), limit=int(k), output_fields=[], search_params={"metric_type": "IP"})
        ids = np.full((q.shape[0], k), -1, dtype=np.int64)
        scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        for r, row in enumerate(hits):
            n = len(row)
            ids[r, :n] = [h["id"] for h in row]
            scores[r, :n] = [h["distance"] for h in row]
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
