"""The catalogue side of a published model set: what the request path needs besides the graphs.

Published as ``catalogue.npz`` inside each ``recommend`` version, so the semantic IDs (trie),
the item vectors (ANN index), the ranker's item table and the pre-rank weight always belong
to the same trained run as the encoder and decoder versions that ``recommend`` pins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from genrec.ensemble.cascade import popular_order
from genrec.ensemble.prefix_trie import PrefixTrie
from genrec.ensemble.ranking_features import ItemTable

if TYPE_CHECKING:  # the bundle holds torch models; the served path never imports it
    from genrec.bundle import ModelBundle

FILE_NAME = "catalogue.npz"


@dataclass
class Catalogue:
    codes: np.ndarray  # (n, 3) semantic IDs
    codebook_sizes: tuple[int, int, int]
    item_vectors: np.ndarray  # (n, d) float32, the ANN index's vectors
    items: ItemTable
    prerank_weight: float
    n_segments: int
    n_devices: int
    trie: PrefixTrie = field(init=False)
    popular: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.trie = PrefixTrie.build(self.codes, self.codebook_sizes)
        self.popular = popular_order(self.items)

    @property
    def n_items(self) -> int:
        return int(self.codes.shape[0])

    @classmethod
    def from_bundle(cls, b: ModelBundle) -> Catalogue:
        return cls(
            b.semantic_ids.codes,
            b.semantic_ids.codebook_sizes,
            b.item_vectors.astype(np.float32),
            b.items,
            b.prerank_weight,
            b.n_segments,
            b.n_devices,
        )

    def save(self, directory: Path) -> Path:
        path = Path(directory) / FILE_NAME
        t = self.items
        np.savez(
            path,
            codes=self.codes,
            codebook_sizes=np.asarray(self.codebook_sizes),
            item_vectors=self.item_vectors,
            **t.arrays(),
            prerank_weight=self.prerank_weight,
            n_segments=self.n_segments,
            n_devices=self.n_devices,
        )
        return path

    @classmethod
    def load(cls, directory: Path) -> Catalogue:
        z = np.load(Path(directory) / FILE_NAME)
        items = ItemTable.from_arrays(z)
        sizes = tuple(int(k) for k in z["codebook_sizes"])
        return cls(
            z["codes"],
            (sizes[0], sizes[1], sizes[2]),
            z["item_vectors"],
            items,
            float(z["prerank_weight"]),
            int(z["n_segments"]),
            int(z["n_devices"]),
        )
