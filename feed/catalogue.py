"""The catalogue as the feed service sees it: per-item kind and display fields, the popular
order (the fallback feed), and the item vectors for "more like this". numpy only (no torch).

Read from a run folder (``item_table.npz``); the vectors come from the served ``recommend``
version's ``catalogue.npz`` (the vectors Triton's Milvus index holds) when a model repository
is given, else from the run's ``item_features.npy``. The catalogue stores no titles, so a
title is derived from the kind, category and author (``title``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genrec.data.schema import ItemKind

KIND_NAMES = tuple(k.name.lower() for k in sorted(ItemKind))  # content, ad, product


@dataclass
class FeedCatalogue:
    category: np.ndarray  # (n,) int
    author: np.ndarray  # (n,) int
    kind: np.ndarray  # (n,) int, ItemKind
    log_popularity: np.ndarray  # (n,) float
    vectors: np.ndarray  # (n, d) float32, unit rows
    source: str = ""

    def __post_init__(self) -> None:
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        self.vectors = (self.vectors / np.maximum(norms, 1e-12)).astype(np.float32)
        self.popular = np.argsort(-self.log_popularity, kind="stable")
        self.organic_popular = self.popular[self.kind[self.popular] != ItemKind.AD]

    @property
    def n_items(self) -> int:
        return int(self.kind.shape[0])

    def knows(self, item_id: int) -> bool:
        return 0 <= item_id < self.n_items

    def title(self, item_id: int) -> str:
        kind = KIND_NAMES[int(self.kind[item_id])]
        return f"{kind.capitalize()} #{item_id}: category {int(self.category[item_id])}, by author {int(self.author[item_id])}"

    def display(self, item_id: int) -> dict[str, Any]:
        return {
            "title": self.title(item_id),
            "category": int(self.category[item_id]),
            "author": int(self.author[item_id]),
            "kind": KIND_NAMES[int(self.kind[item_id])],
            "popularity": round(float(self.log_popularity[item_id]), 4),
        }

    def similar(self, item_id: int, k: int, excluded: set[int]) -> list[tuple[int, float]]:
        """The k nearest organic items by cosine similarity (exact search), without the item itself."""
        sims = self.vectors @ self.vectors[item_id]
        order = np.argsort(-sims, kind="stable")
        out: list[tuple[int, float]] = []
        for i in order:
            j = int(i)
            if j == item_id or j in excluded or self.kind[j] == ItemKind.AD:
                continue
            out.append((j, float(sims[j])))
            if len(out) == k:
                break
        return out

    @classmethod
    def load(cls, run_dir: Path, model_repository: Path | None = None) -> FeedCatalogue:
        t = np.load(Path(run_dir) / "item_table.npz")
        vectors, source = None, ""
        published = latest_published_catalogue(model_repository) if model_repository else None
        if published is not None:
            z = np.load(published)
            if z["item_vectors"].shape[0] == t["kind"].shape[0]:
                vectors, source = z["item_vectors"], str(published)
        if vectors is None:
            vectors, source = np.load(Path(run_dir) / "item_features.npy"), str(Path(run_dir) / "item_features.npy")
        return cls(t["category"], t["author"], t["kind"], t["log_popularity"], np.asarray(vectors, dtype=np.float32), source)


def latest_published_catalogue(model_repository: Path) -> Path | None:
    versions = sorted(
        (p for p in (Path(model_repository) / "recommend").glob("*") if p.name.isdigit() and (p / "catalogue.npz").exists()),
        key=lambda p: int(p.name),
    )
    return versions[-1] / "catalogue.npz" if versions else None


def latest_run(runs: Path) -> Path:
    found = sorted(p for p in Path(runs).glob("*-[0-9][0-9][0-9]") if (p / "item_table.npz").exists())
    if not found:
        raise FileNotFoundError(f"no trained run under {runs}: train one with genrec-train, or set GENREC_FEED__RUN_DIR")
    return max(found, key=lambda p: p.stat().st_mtime)
