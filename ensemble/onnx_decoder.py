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

import numpy as np

from genrec.contracts import DECODER_CROSS_KV, DECODER_STEP

Runner = Callable[[str, dict[str, np.ndarray]], list[np.ndarray]]


class OnnxDecoderStep:
    def __init__(
        self,
        run: Runner,
        memory: np.ndarray,
        memory_logw: np.ndarray,
        codebook_sizes: tuple[int, ...],
        n_layers: int,
        n_heads: int,
        head_dim: int,
    ) -> None:
        self.run = run
        self.sizes = codebook_sizes
        self.cross_k, self.cross_v = run(DECODER_CROSS_KV, {"memory": np.ascontiguousarray(memory, dtype=np.float32)})
        self.cross_bias = np.ascontiguousarray(memory_logw, dtype=np.float32)
        r = memory.shape[0]
        self.past_k = np.zeros((n_layers, r, 1, n_heads, 0, head_dim), np.float32)
        self.past_v = np.zeros_like(self.past_k)

    def step(self, step: int, codes: np.ndarray | None, parents: np.ndarray | None) -> np.ndarray:
        r = self.cross_bias.shape[0]
        codes = np.zeros((r, 1), np.int64) if codes is None else codes.astype(np.int64)
        parents = np.zeros_like(codes) if parents is None else parents.astype(np.int64)
        logits, self.past_k, self.past_v = self.run(
            DECODER_STEP,
            {
                "step": np.array([step], np.int64),
                "codes": codes,
                "parents": parents,
                "past_k": self.past_k,
                "past_v": self.past_v,
                "cross_k": self.cross_k,
                "cross_v": self.cross_v,
                "cross_bias": self.cross_bias,
            },
        )
        return logits[:, :, : self.sizes[step]]


class OnnxUncachedStep:
    """The same graphs without the KV cache: the baseline the cache is measured against.

    Every step treats each beam as its own request: cross K/V is recomputed per beam and the
    beam's whole prefix is re-run from step 0 with an empty past. Outputs equal the cached
    search's; only the work differs.
    """

    def __init__(
        self,
        run: Runner,
        memory: np.ndarray,
        memory_logw: np.ndarray,
        codebook_sizes: tuple[int, ...],
        n_layers: int,
        n_heads: int,
        head_dim: int,
    ) -> None:
        self.run, self.sizes = run, codebook_sizes
        self.memory = np.ascontiguousarray(memory, dtype=np.float32)
        self.logw = np.ascontiguousarray(memory_logw, dtype=np.float32)
        self.shape = (n_layers, n_heads, head_dim)
        self.prefix = np.zeros((memory.shape[0], 1, 0), dtype=np.int64)  # (R, W, step)

    def step(self, step: int, codes: np.ndarray | None, parents: np.ndarray | None) -> np.ndarray:
        if parents is not None and codes is not None:
            r = np.arange(self.prefix.shape[0])[:, None]
            self.prefix = np.concatenate([self.prefix[r, parents], codes[:, :, None]], axis=2)
        n_req, w = self.prefix.shape[:2]
        rows = np.repeat(np.arange(n_req), w)  # one pseudo-request per beam
        flat = self.prefix.reshape(n_req * w, step)
        cross_k, cross_v = self.run(DECODER_CROSS_KV, {"memory": np.ascontiguousarray(self.memory[rows])})
        layers, heads, dh = self.shape
        past_k = np.zeros((layers, n_req * w, 1, heads, 0, dh), np.float32)
        past_v = np.zeros_like(past_k)
        one = np.zeros((n_req * w, 1), np.int64)
        for s in range(step + 1):
            codes_s = one if s == 0 else flat[:, s - 1 : s]
            logits, past_k, past_v = self.run(
                DECODER_STEP,
                {
                    "step": np.array([s], np.int64),
                    "codes": np.ascontiguousarray(codes_s),
                    "parents": one,
                    "past_k": past_k,
                    "past_v": past_v,
                    "cross_k": cross_k,
                    "cross_v": cross_v,
                    "cross_bias": np.ascontiguousarray(self.logw[rows]),
                },
            )
        return logits.reshape(n_req, w, -1)[:, :, : self.sizes[step]]
