"""In-process onnxruntime sessions as a request-path ``Runner``: ``(model, feeds) -> outputs``.

The alternative to a Triton BLS call per model: no process hop, but the session runs inside
the ``recommend`` model's process. Outputs come back in the contract's order.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort


class OnnxSessionRunner:
    def __init__(self, paths: Mapping[str, Path], outputs: Mapping[str, list[str]], threads: int = 1) -> None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sessions = {m: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for m, p in paths.items()}
        self.outputs = {m: list(outputs[m]) for m in paths}

    def __call__(self, model: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sessions[model].run(self.outputs[model], feeds)
