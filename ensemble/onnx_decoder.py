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
        self.cross_k, self.cross_v = run("decoder_cross_kv", {"memory": np.ascontiguousarray(memory, dtype=np.float32)})
        self.cross_bias = np.ascontiguousarray(memory_logw, dtype=np.float32)
        r = memory.shape[0]
        self.past_k = np.zeros((n_layers, r, 1, n_heads, 0, head_dim), np.float32)
        self.past_v = np.zeros_like(self.past_k)

    def step(self, step: int, codes: np.ndarray | None, parents: np.ndarray | None) -> np.ndarray:
        r = self.cross_bias.shape[0]
        codes = np.zeros((r, 1), np.int64) if codes is None else codes.astype(np.int64)
        parents = np.zeros_like(codes) if parents is None else parents.astype(np.int64)
        logits, self.past_k, self.past_v = self.run(
            "decoder_step",
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
