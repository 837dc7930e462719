"""Triton Python model ``recommend``: tensors in, tensors out, around ``ServingPipeline``.

The logic lives in ``genrec.ensemble`` (serving_pipeline, serving_setup, serving_metrics); this
file only converts tensors and request parameters, maps typed errors to INVALID_ARG, and makes
the BLS runner (used when ``GENREC_SERVING__EXECUTION=bls``). ``genrec-publish`` copies it into
every ``recommend`` version with that version's catalogue and pinned graph versions.
"""

from __future__ import annotations

import os
import site
import sys
import traceback

# The pip runtime's stub embeds the system libpython in isolated mode: it ignores PYTHONPATH and
# .pth files. Put the virtualenv first, then run its .pth files (the editable install's import
# hook maps genrec.ensemble to ensemble/).
_PATHS = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
sys.path[:0] = _PATHS
for _p in _PATHS:
    site.addsitedir(_p)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from genrec.contracts import recommend_contract  # noqa: E402
from genrec.ensemble.request_validation import kserve_request_args, parse_parameters  # noqa: E402
from genrec.ensemble.serving_metrics import COUNTER, GAUGE, HISTOGRAM, MetricsFlusher, ServingMetrics  # noqa: E402
from genrec.ensemble.serving_setup import build_pipeline, load_setup  # noqa: E402
from genrec.errors import GenrecError  # noqa: E402


def _input(request, name: str):
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy()


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.setup = load_setup(version_dir)
        self.input_names = [t.name for t in recommend_contract(self.setup.cfg).inputs]
        outputs = self.setup.outputs()
        pinned = self.setup.pinned

        def bls(model: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            req = pb_utils.InferenceRequest(
                model_name=model,
                model_version=pinned[model],
                requested_output_names=outputs[model],
                inputs=[pb_utils.Tensor(n, np.ascontiguousarray(v)) for n, v in feeds.items()],
            )
            resp = req.exec()
            if resp.has_error():
                raise RuntimeError(f"{model} v{pinned[model]}: {resp.error().message()}")
            return [pb_utils.get_output_tensor_by_name(resp, n).as_numpy() for n in outputs[model]]

        instance = args.get("model_instance_name", "0").replace("/", "_")
        self.pipeline = build_pipeline(self.setup, bls, instance)
        # pb_utils.MetricFamily exists only once the model runs (not during config auto-complete)
        kinds = {COUNTER: pb_utils.MetricFamily.COUNTER, GAUGE: pb_utils.MetricFamily.GAUGE, HISTOGRAM: pb_utils.MetricFamily.HISTOGRAM}
        self.metrics = ServingMetrics(
            lambda s: pb_utils.MetricFamily(name=s.name, description=s.doc, kind=kinds[s.kind]),
            {"model_version": args["model_version"]},
        )
        flush_s = self.setup.cfg.serving.metrics_flush_s  # 0: inline, on the request path (the old way, for comparison)
        self.flusher = (
            MetricsFlusher(self.metrics, flush_s, lambda e: pb_utils.Logger.log_warn(f"recommend metrics flush failed: {e}")).start()
            if flush_s > 0
            else None
        )

    def execute(self, requests: list) -> list:
        if self.flusher is None:  # metrics_flush_s = 0: on the request path
            responses = [self._one(r) for r in requests]
            self.metrics.flush()
            return responses
        with self.flusher.request():  # the flusher sends nothing meanwhile
            return [self._one(r) for r in requests]

    def _one(self, request):
        if request.is_cancelled():  # its caller gave up (deadline, disconnect) while it waited: no work for nobody
            self.metrics.rejected("cancelled")
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError("cancelled by the caller while queued", pb_utils.TritonError.CANCELLED)
            )
        try:
            inputs = {n: _input(request, n) for n in self.input_names}
            args, kwargs = kserve_request_args(inputs, parse_parameters(request.parameters()))
            req = self.pipeline.validate(*args, **kwargs)
        except GenrecError as e:  # the caller's mistake (typed, names the field): 400 / INVALID_ARGUMENT
            self.metrics.rejected("invalid_argument")
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG))
        except Exception as e:  # a bug in reading the request: only this request fails
            return self._internal(request, e)
        try:
            rec = self.pipeline.recommend(req)
        except Exception as e:  # a failing sub-model or a bug: this request fails, the model keeps serving
            return self._internal(request, e)
        cache = self.pipeline.encoder_cache
        self.metrics.record(rec, None if cache is None else cache.stats)
        self.metrics.ann_failures(getattr(self.pipeline.ann, "failures", 0))  # Milvus down: generation alone
        outputs = [pb_utils.Tensor("items", rec.items.astype(np.int64)), pb_utils.Tensor("scores", rec.scores.astype(np.float32))]
        wanted = request.requested_output_names()  # empty: every output (KServe)
        if not wanted or "user_vector" in wanted:  # the feed_candidates ensemble passes it on to ad_ctr
            outputs.append(pb_utils.Tensor("user_vector", rec.user_vector.reshape(1, -1).astype(np.float32)))
        return pb_utils.InferenceResponse(outputs)

    def _internal(self, request, e: Exception):
        self.metrics.rejected("internal")
        pb_utils.Logger.log_error(f"recommend request_id={request.request_id() or '-'} failed: {traceback.format_exc()}")
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"recommend failed: {e}", pb_utils.TritonError.INTERNAL))

    def finalize(self) -> None:
        if self.flusher is not None:
            self.flusher.stop()
        self.pipeline.close()
