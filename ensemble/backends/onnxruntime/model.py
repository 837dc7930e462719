"""A Python-based Triton backend named ``onnxruntime``, for the pip runtime.

The NVIDIA container ships the C++ onnxruntime backend; the ``nvidia-pytriton`` wheel does not.
Triton picks up ``<backend-dir>/onnxruntime/model.py`` as the backend named ``onnxruntime``
when no ``libtriton_onnxruntime.so`` is there, so a model whose config says
``platform: "onnxruntime_onnx"`` runs unchanged in both. It loads ``<version>/model.onnx`` with
the onnxruntime Python API and maps tensors by the names in config.pbtxt.
"""

from __future__ import annotations

import json
import os
import site
import sys

# The pip runtime's stub embeds the system libpython in isolated mode: it ignores PYTHONPATH and
# .pth files. Put the virtualenv first, then run its .pth files (the editable install's import
# hook maps genrec.ensemble to ensemble/).
_PATHS = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
sys.path[:0] = _PATHS
for _p in _PATHS:
    site.addsitedir(_p)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(os.environ.get("GENREC_ORT_THREADS", "2"))
        so.inter_op_num_threads = 1
        # idle pool threads must not spin: on a 2-core box they would take the CPU from the other
        # models (measured: a BLS request path ran 4-5x slower with spinning on)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        graph_inputs = {i.name for i in self.session.get_inputs()}
        graph_outputs = {o.name for o in self.session.get_outputs()}
        missing = (set(self.inputs) - graph_inputs) | (set(self.outputs) - graph_outputs)
        if missing:  # a config that does not match the graph must not load
            raise pb_utils.TritonModelException(f"config.pbtxt names {sorted(missing)} that {path} does not have")
        self.batched = int(config.get("max_batch_size", 0)) > 0
        # the contract's caps on dynamic dims (genrec.contracts), written into the generated config
        raw = config.get("parameters", {}).get("genrec_input_caps", {}).get("string_value", "{}")
        offset = 1 if self.batched else 0  # caps are per item; a batched input has the batch axis first
        self.caps = {name: {int(a) + offset: c for a, c in axes.items()} for name, axes in json.loads(raw).items()}

    def _over_cap(self, feeds: dict) -> str | None:
        for name, axes in self.caps.items():
            shape = feeds[name].shape
            for axis, cap in axes.items():
                if axis < len(shape) and shape[axis] > cap:
                    return f"input '{name}': dim {axis} is {shape[axis]}, over the cap of {cap}"
        return None

    def execute(self, requests: list) -> list:
        if self.batched and len(requests) > 1:
            return self._execute_batched(requests)
        return [self._run_one(r) for r in requests]

    def _run_one(self, request):
        try:
            feeds = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs}
            if problem := self._over_cap(feeds):
                return pb_utils.InferenceResponse(error=pb_utils.TritonError(problem, pb_utils.TritonError.INVALID_ARG))
            outs = self.session.run(self.outputs, feeds)
            return pb_utils.InferenceResponse([pb_utils.Tensor(n, np.ascontiguousarray(o)) for n, o in zip(self.outputs, outs)])
        except Exception as e:  # one bad request must not take the others down
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e)))

    def _execute_batched(self, requests: list) -> list:
        """Requests merged by the dynamic batcher run as one session call, then split; if the
        merged call fails, each request runs alone so only the bad one gets the error."""
        try:
            parts = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
            sizes = [p[self.inputs[0]].shape[0] for p in parts]
            outs = self.session.run(self.outputs, {n: np.concatenate([p[n] for p in parts]) for n in self.inputs})
        except Exception:
            return [self._run_one(r) for r in requests]
        responses, start = [], 0
        for size in sizes:
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor(n, np.ascontiguousarray(o[start : start + size])) for n, o in zip(self.outputs, outs)]
                )
            )
            start += size
        return responses
