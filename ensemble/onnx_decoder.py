"""The decoder as a beam-search ``StepModel`` over the exported ONNX graphs (no torch).

``decoder_cross_kv`` runs once per search (cross K/V shared by every beam of a request);
``decoder_step`` runs once per level with the beams' parents, and the graph reorders the
self-attention K/V by index. Logits are cut to the level's codebook size (the graph pads to
the largest). ``run`` is any callable ``(model_name, feeds) -> outputs``: an in-process
onnxruntime session here, a Triton BLS call on the serving path, so both are measured with the
same search code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from genrec.contracts import DECODER_CROSS_KV, DECODER_STEP

Runner = Callable[[str, dict[str, np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class DecoderGraphs:
    """The two decoder graphs behind a runner, with the shapes their inputs need."""

    run: Runner
    codebook_sizes: tuple[int, ...]
    n_layers: int
    n_heads: int
    head_dim: int

    def cross_kv(self, memory: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k, v = self.run(DECODER_CROSS_KV, {"memory": np.ascontiguousarray(memory, dtype=np.float32)})
        return k, v

    def empty_past(self, rows: int) -> np.ndarray:
        return np.zeros((self.n_layers, rows, 1, self.n_heads, 0, self.head_dim), np.float32)

    def step(self, step, codes, parents, past_k, past_v, cross_k, cross_v, cross_bias) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logits cut to the level's codebook, present_k, present_v)."""
        logits, k, v = self.run(
            DECODER_STEP,
            {
                "step": np.array([step], np.int64),
                "codes": np.ascontiguousarray(codes, dtype=np.int64),
                "parents": np.ascontiguousarray(parents, dtype=np.int64),
                "past_k": past_k,
                "past_v": past_v,
                "cross_k": cross_k,
                "cross_v": cross_v,
                "cross_bias": cross_bias,
            },
        )
        return logits[:, :, : self.codebook_sizes[step]], k, v


class OnnxDecoderStep:
    def __init__(self, graphs: DecoderGraphs, memory: np.ndarray, memory_logw: np.ndarray) -> None:
        self.g = graphs
        self.cross_k, self.cross_v = graphs.cross_kv(memory)
        self.cross_bias = np.ascontiguousarray(memory_logw, dtype=np.float32)
        self.past_k = self.past_v = graphs.empty_past(memory.shape[0])

    def step(self, step: int, codes: np.ndarray | None, parents: np.ndarray | None) -> np.ndarray:
        r = self.cross_bias.shape[0]
        codes = np.zeros((r, 1), np.int64) if codes is None else codes
        parents = np.zeros_like(codes) if parents is None else parents
        logits, self.past_k, self.past_v = self.g.step(
            step, codes, parents, self.past_k, self.past_v, self.cross_k, self.cross_v, self.cross_bias
        )
        return logits


class OnnxUncachedStep:
    """The same graphs without the KV cache: the baseline the cache is measured against.

    Every step treats each beam as its own request: cross K/V is recomputed per beam and the
    beam's whole prefix is re-run from step 0 with an empty past. Outputs equal the cached
    search's; only the work differs.
    """

    def __init__(self, graphs: DecoderGraphs, memory: np.ndarray, memory_logw: np.ndarray) -> None:
        self.g = graphs
        self.memory = np.ascontiguousarray(memory, dtype=np.float32)
        self.logw = np.ascontiguousarray(memory_logw, dtype=np.float32)
        self.prefix = np.zeros((memory.shape[0], 1, 0), dtype=np.int64)  # (R, W, step)

    def step(self, step: int, codes: np.ndarray | None, parents: np.ndarray | None) -> np.ndarray:
        if parents is not None and codes is not None:
            r = np.arange(self.prefix.shape[0])[:, None]
            self.prefix = np.concatenate([self.prefix[r, parents], codes[:, :, None]], axis=2)
        n_req, w = self.prefix.shape[:2]
        rows = np.repeat(np.arange(n_req), w)  # one pseudo-request per beam
        flat = self.prefix.reshape(n_req * w, step)
        cross_k, cross_v = self.g.cross_kv(self.memory[rows])
        past_k = past_v = self.g.empty_past(n_req * w)
        bias = np.ascontiguousarray(self.logw[rows])
        one = np.zeros((n_req * w, 1), np.int64)
        for s in range(step + 1):
            codes_s = one if s == 0 else flat[:, s - 1 : s]
            logits, past_k, past_v = self.g.step(s, codes_s, one, past_k, past_v, cross_k, cross_v, bias)
        return logits.reshape(n_req, w, -1)
