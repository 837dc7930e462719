"""Prefix trie over the catalogue's 3-level semantic IDs, as flat CSR arrays.

Built once from the published item codes (and rebuilt when a new catalogue is published). It
answers, for a batch of beams, which next codes lead to at least one *allowed* item, so beam
search never spends a beam on an ID that is not in the catalogue or on an excluded item.
Exclusions are per request: the per-node item counts, less one along each excluded item's path
(kept sparse, only the nodes on those paths: a copy of every node's count per request cost
megabytes at 1M items), and a child with count 0 is masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_LEVELS = 3


@dataclass(frozen=True)
class ExcludedCounts:
    """One depth's item counts less the excluded items under each node, stored for the nodes on
    excluded paths only (sorted), so a request's exclusions cost O(excluded), not O(nodes)."""

    base: np.ndarray  # every node's count at this depth (shared, never written)
    nodes: np.ndarray  # sorted unique nodes with excluded items under them
    removed: np.ndarray  # excluded items under each of ``nodes``

    def at(self, idx: np.ndarray) -> np.ndarray:
        out = self.base[idx]
        if self.nodes.size == 0:
            return out
        pos = np.minimum(np.searchsorted(self.nodes, idx), self.nodes.size - 1)
        return out - np.where(self.nodes[pos] == idx, self.removed[pos], 0)

    def dense(self) -> np.ndarray:
        out = self.base.copy()
        out[self.nodes] -= self.removed
        return out


DepthCounts = np.ndarray | ExcludedCounts


def _count_at(counts: DepthCounts, idx: np.ndarray) -> np.ndarray:
    return counts.at(idx) if isinstance(counts, ExcludedCounts) else counts[idx]


@dataclass(frozen=True)
class PrefixTrie:
    codebook_sizes: tuple[int, int, int]
    # Level l (0..2) holds the nodes at depth l (depth 0 = root, one node). Children of node n at
    # depth l are child_code[l][child_ptr[l][n]:child_ptr[l][n+1]] -> node ids at depth l+1.
    child_ptr: tuple[np.ndarray, ...]
    child_code: tuple[np.ndarray, ...]
    child_node: tuple[np.ndarray, ...]
    # Items under each depth-3 node (leaf): leaf_items[leaf_ptr[n]:leaf_ptr[n+1]].
    leaf_ptr: np.ndarray
    leaf_items: np.ndarray
    # Path of every item: node id at depths 1, 2, 3.
    item_path: np.ndarray  # (n_items, 3)
    item_count: tuple[np.ndarray, ...]  # per depth 1..3: items under each node

    @property
    def n_items(self) -> int:
        return int(self.item_path.shape[0])

    @staticmethod
    def build(codes: np.ndarray, codebook_sizes: tuple[int, int, int]) -> PrefixTrie:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] != N_LEVELS:
            raise ValueError(f"codes must be (n_items, {N_LEVELS}), got {codes.shape}")
        for level, k in enumerate(codebook_sizes):
            if codes.size and (codes[:, level].min() < 0 or codes[:, level].max() >= k):
                raise ValueError(f"level {level + 1} codes must lie in [0, {k})")
        n = codes.shape[0]
        ptrs, ccodes, cnodes, counts = [], [], [], []
        parent = np.zeros(n, dtype=np.int64)  # node id of each item at the current depth
        n_parents = 1
        path = np.zeros((n, N_LEVELS), dtype=np.int64)
        for level in range(N_LEVELS):
            key = parent * codebook_sizes[level] + codes[:, level]
            uniq, node = np.unique(key, return_inverse=True)  # sorted by (parent, code)
            node = node.reshape(-1)
            par_of_child = uniq // codebook_sizes[level]
            ptrs.append(np.concatenate([[0], np.cumsum(np.bincount(par_of_child, minlength=n_parents))]).astype(np.int64))
            ccodes.append((uniq % codebook_sizes[level]).astype(np.int64))
            cnodes.append(np.arange(uniq.size, dtype=np.int64))
            counts.append(np.bincount(node, minlength=uniq.size).astype(np.int64))
            path[:, level] = node
            parent, n_parents = node, uniq.size
        order = np.argsort(parent, kind="stable")
        leaf_ptr = np.concatenate([[0], np.cumsum(np.bincount(parent, minlength=n_parents))]).astype(np.int64)
        return PrefixTrie(
            (codebook_sizes[0], codebook_sizes[1], codebook_sizes[2]),
            tuple(ptrs),
            tuple(ccodes),
            tuple(cnodes),
            leaf_ptr,
            order.astype(np.int64),
            path,
            tuple(counts),
        )

    def counts_without(self, excluded: np.ndarray | None) -> tuple[DepthCounts, ...]:
        """Per-depth item counts with ``excluded`` items removed (sparse: the shared counts plus
        the decrements on the excluded items' paths)."""
        if excluded is None or len(excluded) == 0:
            return self.item_count
        ex = np.unique(np.asarray(excluded, dtype=np.int64))
        out: list[DepthCounts] = []
        for level in range(N_LEVELS):
            nodes, removed = np.unique(self.item_path[ex, level], return_counts=True)
            out.append(ExcludedCounts(self.item_count[level], nodes, removed.astype(np.int64)))
        return tuple(out)

    def expand(self, depth: int, nodes: np.ndarray, counts: tuple[DepthCounts, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Allowed children of ``nodes`` (flat, at ``depth``): (row in nodes, child code, child node)."""
        ptr = self.child_ptr[depth]
        starts = ptr[nodes]
        lens = ptr[nodes + 1] - starts
        rows = np.repeat(np.arange(nodes.size), lens)
        offsets = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        idx = starts[rows] + offsets
        child = self.child_node[depth][idx]
        ok = _count_at(counts[depth], child) > 0
        return rows[ok], self.child_code[depth][idx][ok], child[ok]

    def leaf_of(self, codes: np.ndarray) -> np.ndarray:
        """Leaf node id for full 3-level codes, or -1 where the ID is not in the catalogue."""
        codes = np.atleast_2d(np.asarray(codes, dtype=np.int64))
        node = np.zeros(codes.shape[0], dtype=np.int64)
        for depth in range(N_LEVELS):
            nxt = np.full(codes.shape[0], -1, dtype=np.int64)
            valid = node >= 0
            rows, code, child = self.expand(depth, node[valid], self.item_count)
            hit = code == codes[valid][rows, depth]
            nxt[np.flatnonzero(valid)[rows[hit]]] = child[hit]
            node = nxt
        return node

    def items_of(self, leaves: np.ndarray, excluded: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Items under each leaf: (row in leaves, item id), minus excluded items."""
        starts = self.leaf_ptr[leaves]
        lens = self.leaf_ptr[leaves + 1] - starts
        rows = np.repeat(np.arange(leaves.size), lens)
        offsets = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        items = self.leaf_items[starts[rows] + offsets]
        if excluded is not None and len(excluded):
            keep = ~np.isin(items, excluded)
            rows, items = rows[keep], items[keep]
        return rows, items
