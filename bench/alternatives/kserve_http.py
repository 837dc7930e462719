"""A KServe v2 ``recommend`` endpoint over any pipeline with ``validate`` and ``recommend``
(``ServingPipeline``, ``ReferencePipeline``): a small Starlette app on uvicorn.

Starlette on uvicorn is the HTTP layer under BentoML's own services, without BentoML's process
supervisor, runners and metrics: the least a team would put around a model, so what it costs is
the pipeline's. One worker thread runs the pipeline, one request at a time (as one Triton model
instance does); the event loop keeps reading and parsing requests meanwhile, so they queue for
that thread instead of for the socket.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from genrec.ensemble.request_types import Recommendation, RecommendRequest
from genrec.ensemble.request_validation import kserve_request_args
from genrec.errors import GenrecError

MODEL = "recommend"
DTYPES = {"INT64": np.int64, "INT32": np.int32, "FP64": np.float64, "FP32": np.float32}


class Pipeline(Protocol):
    def validate(self, item: object, action: object, timestamp: object, device: object, **kw: Any) -> RecommendRequest: ...

    def recommend(self, req: RecommendRequest) -> Recommendation: ...


def kserve_inputs(body: dict[str, Any]) -> dict[str, np.ndarray]:
    """The request's tensors by name, from KServe v2 JSON (``BYTES`` as UTF-8 bytes)."""
    out: dict[str, np.ndarray] = {}
    for t in body.get("inputs", []):
        dt = t["datatype"]
        if dt == "BYTES":
            arr = np.array([str(v).encode() for v in t["data"]], dtype=object)
        elif dt in DTYPES:
            arr = np.asarray(t["data"], dtype=DTYPES[dt])
        else:
            raise GenrecError(f"input {t.get('name')!r}: datatype {dt!r} is not supported here")
        out[t["name"]] = arr.reshape(t["shape"])
    return out


def kserve_response(rec: Recommendation, request_id: str, version: str) -> dict[str, Any]:
    items, scores = rec.items.astype(np.int64), rec.scores.astype(np.float32)
    return {
        "model_name": MODEL,
        "model_version": version,
        "id": request_id,
        "outputs": [
            {"name": "items", "datatype": "INT64", "shape": list(items.shape), "data": items.tolist()},
            {"name": "scores", "datatype": "FP32", "shape": list(scores.shape), "data": scores.tolist()},
        ],
    }


def answer(pipeline: Pipeline, body: dict[str, Any], version: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of one infer request: 400 for the caller's mistake, as Triton."""
    try:
        args, kwargs = kserve_request_args(kserve_inputs(body), body.get("parameters") or {})
        req = pipeline.validate(*args, **kwargs)
    except GenrecError as e:
        return 400, {"error": str(e)}
    return 200, kserve_response(pipeline.recommend(req), str(body.get("id", "")), version)


def make_app(pipeline: Pipeline, version: str) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline")

    async def infer(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError as e:
            return JSONResponse({"error": f"not JSON: {e}"}, status_code=400)
        try:
            status, out = await asyncio.get_running_loop().run_in_executor(worker, answer, pipeline, body, version)
        except Exception as e:  # a bug or a failing stage: this request fails, the service keeps serving
            return JSONResponse({"error": f"recommend failed: {e}"}, status_code=500)
        return JSONResponse(out, status_code=status)

    async def ready(request: Request) -> Response:
        return Response(status_code=200)

    routes = [
        Route(f"/v2/models/{MODEL}/infer", infer, methods=["POST"]),
        Route(f"/v2/models/{MODEL}/ready", ready),
        Route("/v2/health/ready", ready),
    ]
    return Starlette(routes=routes)


def serve(pipeline: Pipeline, version: str, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(make_app(pipeline, version), host=host, port=port, log_level="warning", access_log=False)
