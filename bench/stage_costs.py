"""Where a ``recommend`` request's time goes, stage by stage, and how close each model stage comes
to this machine's matmul floor.

    python -m bench.stage_costs                         # artifacts/runs/tiny-002 (or the latest tiny), ~2 min
    python -m bench.stage_costs --run DIR               # another trained run
    python -m bench.stage_costs --no-triton --repeats 50   # in-process stages only, quicker

The run is published (exported with its parity gates) into a temporary repository, or
``--repository`` is used, and its ``recommend`` version is built in process the way the served
model builds it: onnxruntime sessions on the pinned graphs (``serving.ort_threads``, 1), the
catalogue, the encoder-state cache and a real milvus-lite index (``make_ann``). Every graph call
goes through a timing wrapper around the session runner, so a stage's time splits into the time
inside graph calls and the Python around them. Measured, each with many repeats (p50, p90, mean):

- matmul floor: float32 GEMM through onnxruntime (1 thread, as ``recommend`` runs it) and numpy
  (1 BLAS thread) at the model's shapes ([beams x d] x [d x d], [tokens x d] x [d x 4d]) and a
  large square one; also 2 threads, and an empty (Identity) graph call: onnxruntime's per-call cost;
- encoder: a cold user (the whole history) at a few history lengths, and a returning user (a cached
  state, 4 new events), on synthetic histories;
- a returning user's whole request, on the run's users with their real histories (each first visits
  with all but its last 4 events): every stage, and every graph call in it: the cross-K/V graph and
  each decoder step (level 1, 2, 3 of the semantic ID at the beams the config's widths give), the
  beam search's own Python, the ranker;
- Milvus (milvus-lite) search per k, with numpy's exact search beside it;
- pre-rank (cascade merge, scores + top-k, ranker features) and the ranker per batch size;
- the same returning visits through a real Triton server (``RecommendClient``, gRPC): the client's
  latency minus the in-process request (validate + recommend) is the Python and gRPC glue;
  Triton's own request/queue/compute timers and the model's stage histograms from its metrics port
  split it further.

FLOPs per call are counted from the call's shapes the way ``genrec-model-card`` counts them
(multiply-adds as 2; the encoder's and decoder's matmuls; the ranker's tree comparisons as 1), and
checked against ``genrec.model_card`` at its shapes. ``gflops_s`` = FLOPs / p50;
``fraction_of_floor`` = that over the large single-thread GEMM's rate through onnxruntime. A stage
whose compute at the floor is under half its time is marked overhead-bound.

Writes bench/results/stage_costs.json and stage_costs.png: the per-request breakdown (means of the
in-process stages, each split into compute at the floor, graph-call overhead and the Python around
it; the glue bar is the median over users of their Triton visit minus their in-process one). Run timed
figures under the shared lock: ``flock /tmp/genrec-bench.lock python -m bench.stage_costs``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.open_loop import scrape, triton_means
from bench.recommend_latency import stage_means
from genrec.artifacts import DEFAULT_ROOT, latest_run, machine, now_iso, versions, write_json

DEFAULT_RUN = DEFAULT_ROOT / "tiny-002"
NEW_EVENTS = 4  # events a returning user brings
RANKER_DEPTH = 8  # as genrec.model_card: levels a tree walks at most, one comparison each
OVERHEAD_BOUND = 0.5  # compute at the floor under this share of a stage's time: overhead-bound
PREFIX = "[stage_costs]"
# the graphs each stage calls (target_prerank: the target-aware pre-ranker, where a version has it)
GRAPHS_OF_STAGE = {
    "encode": ("ugt_encoder",),
    "generate": ("decoder_cross_kv", "decoder_step"),
    "prerank": ("target_prerank",),
    "rank": ("ranker",),
}


def say(msg: str) -> None:
    print(f"{PREFIX} {msg}", flush=True)


# ---- FLOPs from shapes, counted as genrec.model_card counts them -------------------------------
def encoder_token_flops(cfg, first_token: int, n_tokens: int) -> float:
    """Encoder FLOPs of ``n_tokens`` tokens at positions ``first_token ..`` (the USER token is 0,
    each event 2, the request's CTX token 1): ``encoder_flops(cfg, L)`` is ``(0, 2L + 2)``."""
    e = cfg.encoder
    d = e.d_model
    count = np.arange(first_token + 1, first_token + n_tokens + 1)  # keys a token sees, itself included
    keys = np.minimum(count, e.recent_tokens + e.block_tokens + e.slots + 1).sum() if e.compression else count.sum()
    return float(e.n_layers * (n_tokens * (2 * d * 4 * d + 2 * d * d) + 2 * 2 * keys * d) + n_tokens * 2 * d * d)


def cross_kv_flops(cfg, memory: int) -> float:
    d = cfg.decoder.d_model
    return float(cfg.decoder.n_layers * memory * 2 * d * 2 * d)


def decoder_step_flops(cfg, step: int, beams: int, memory: int, codebook: int) -> float:
    dc = cfg.decoder
    d = dc.d_model
    per_token = (
        dc.n_layers
        * (
            2 * d * 3 * d
            + 2 * d * d
            + 2 * 2 * (step + 1) * d
            + 2 * d * d * 2
            + 2 * 2 * memory * d
            + 2 * d * dc.n_experts
            + dc.top_k * 2 * 2 * d * dc.expert_hidden
        )
        + 2 * d * codebook
    )
    return float(beams * per_token)


def ranker_trees(run: Path, cfg) -> int:
    f = run / "ranker.txt"
    if f.exists():
        n = sum(1 for line in f.read_text().splitlines() if line.startswith("Tree="))
        if n:
            return n
    return int(cfg.train.ranker_rounds)


# ---- timing ------------------------------------------------------------------------------------
def summary(ms: list[float] | np.ndarray) -> dict[str, float]:
    a = np.asarray(ms, dtype=float)
    if a.size == 0:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "mean_ms": float("nan"), "n": 0}
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)), "mean_ms": float(a.mean()), "n": int(a.size)}


def repeat(fn: Callable[[], Any], n: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


@dataclass
class Call:
    model: str
    variant: str
    flops: float
    ms: float


@dataclass
class TimedRunner:
    """Wraps the session runner (``(model, feeds) -> outputs``): each graph call's time, and its
    FLOPs from the feeds' shapes, while ``recording``."""

    run: Callable[[str, dict[str, np.ndarray]], list[np.ndarray]]
    cfg: Any
    codebooks: tuple[int, ...]
    trees: int
    recording: bool = False
    calls: list[Call] = field(default_factory=list)

    def __call__(self, model: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        t = time.perf_counter()
        out = self.run(model, feeds)
        ms = (time.perf_counter() - t) * 1e3
        if self.recording:
            self.calls.append(Call(model, *self.shape(model, feeds), ms))
        return out

    def shape(self, model: str, feeds: dict[str, np.ndarray]) -> tuple[str, float]:
        if model == "ugt_encoder":
            pos = feeds["pos"]
            return f"{pos.size} tokens", encoder_token_flops(self.cfg, int(pos[0]), int(pos.size))
        if model == "decoder_cross_kv":  # once per request, over its memory (the row records the median size)
            return "once per request", cross_kv_flops(self.cfg, int(feeds["memory"].shape[1]))
        if model == "decoder_step":
            step, beams, m = int(feeds["step"][0]), int(feeds["codes"].shape[1]), int(feeds["cross_bias"].shape[1])
            return f"level {step + 1}, {beams} beams in", decoder_step_flops(self.cfg, step, beams, m, self.codebooks[step])
        if model == "ranker":
            rows = int(feeds["features"].shape[0])
            return f"batch {rows}", float(rows * self.trees * RANKER_DEPTH)
        first = next(iter(feeds.values()), np.zeros(0))
        return f"input {tuple(first.shape)}", 0.0  # a graph without a FLOP count here

    def take(self) -> list[Call]:
        calls, self.calls = self.calls, []
        return calls


# ---- the matmul floor ----------------------------------------------------------------------------
def _onnx_model(op: str, m: int, k: int, n: int):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])
    if op == "Identity":
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, k])
        graph = helper.make_graph([helper.make_node("Identity", ["a"], ["y"])], "identity", [a], [y])
    else:
        b = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n)).astype(np.float32), "b")
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
        graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "matmul", [a], [y], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _ort_session(blob: bytes, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])


def matmul_floor(cfg, big: int, repeats: int) -> tuple[list[dict], float, float]:
    """GEMM rates at the model's shapes and a large square one; (entries, floor GFLOP/s of the
    large single-thread GEMM through onnxruntime, onnxruntime's empty-call ms)."""
    from threadpoolctl import threadpool_limits

    d_enc, d_dec = cfg.encoder.d_model, cfg.decoder.d_model
    tokens = cfg.encoder.block_tokens * (cfg.encoder.recent_tokens // cfg.encoder.block_tokens + 1)  # a cold call's span
    beams = (1, *cfg.pipeline.beam_widths)
    shapes = [(w, d_dec, d_dec, f"decoder [{w} beams x d] x [d x d]") for w in beams]
    shapes += [(tokens, d_enc, 4 * d_enc, f"encoder [{tokens} tokens x d] x [d x 4d]"), (big, big, big, f"large square {big}")]
    rng = np.random.default_rng(0)
    entries = []
    for m, k, n, what in shapes:
        flops = 2.0 * m * k * n
        runs = max(5, repeats // 10) if m == big else repeats
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        blob = _onnx_model("MatMul", m, k, n)
        for backend, threads in (("onnxruntime", 1), ("numpy", 1)) + ((("onnxruntime", 2), ("numpy", 2)) if m == big else ()):
            if backend == "onnxruntime":
                sess = _ort_session(blob, threads)
                ms = repeat(lambda s=sess, a=a: s.run(None, {"a": a}), runs)
            else:
                with threadpool_limits(limits=threads, user_api="blas"):
                    ms = repeat(lambda a=a, b=b: a @ b, runs)
            s = summary(ms)
            entries.append(
                {
                    "what": what,
                    "backend": backend,
                    "threads": threads,
                    "m": m,
                    "k": k,
                    "n": n,
                    "flops": flops,
                    **s,
                    "gflops_s": flops / s["p50_ms"] / 1e6,
                }
            )
    ident = _ort_session(_onnx_model("Identity", 1, d_dec, d_dec), 1)
    x = np.zeros((1, d_dec), np.float32)
    call = summary(repeat(lambda: ident.run(None, {"a": x}), repeats))
    entries.append({"what": "empty graph call (Identity)", "backend": "onnxruntime", "threads": 1, "flops": 0.0, **call, "gflops_s": 0.0})
    floor = next(e["gflops_s"] for e in entries if e["m"] == big and e["backend"] == "onnxruntime" and e["threads"] == 1)
    return entries, floor, call["p50_ms"]


# ---- building the in-process pipeline ---------------------------------------------------------
@dataclass
class InProcess:
    cfg: Any
    pipe: Any
    runner: TimedRunner
    ann: Any
    state: Path

    def close(self) -> None:
        close = getattr(self.ann, "close", None)
        if close is not None:
            close()


def in_process(version: Path, run: Path, state: Path) -> InProcess:
    """The ``recommend`` version built by ``build_pipeline`` (what the served model calls), with
    the timing runner around the onnxruntime sessions it makes."""
    import genrec.ensemble.onnx_sessions as sessions
    from genrec.ensemble.serving_setup import build_pipeline, load_setup

    setup = load_setup(version, environ={"GENREC_SERVING__STATE_DIR": str(state)})
    cfg = setup.cfg
    made: list[TimedRunner] = []
    real = sessions.OnnxSessionRunner

    def timed(*args: Any, **kw: Any) -> TimedRunner:
        made.append(TimedRunner(real(*args, **kw), cfg, tuple(cfg.semantic_id.codebook_sizes), ranker_trees(run, cfg)))
        return made[-1]

    sessions.OnnxSessionRunner = timed  # type: ignore[assignment,misc]
    try:
        pipe = build_pipeline(setup, instance="stage-costs")
    finally:
        sessions.OnnxSessionRunner = real  # type: ignore[misc]
    if len(made) != 1:
        raise RuntimeError(f"expected build_pipeline to make one session runner, it made {len(made)} (execution {cfg.serving.execution})")
    return InProcess(cfg, pipe, made[0], pipe.ann, state)


def published(run: Path, repository: Path | None, tmp: Path) -> tuple[Path, Path]:
    """(repository, newest recommend version) with the run published; publishes to ``tmp`` unless given."""
    from genrec.exporters.publish import publish_run, version_numbers

    if repository is None:
        repository = tmp / "model_repository"
        say(f"publishing {run} to {repository}")
        publish_run(run, repository, progress=lambda m: None)
    rec = repository / "recommend"
    return repository, rec / str(version_numbers(rec)[-1])


# ---- the workload ------------------------------------------------------------------------------
@dataclass(frozen=True)
class User:
    user_id: str
    segment: int
    items: np.ndarray
    actions: np.ndarray
    timestamps: np.ndarray
    devices: np.ndarray

    def head(self, n: int) -> dict[str, Any]:
        """The visit with the first ``n`` events, a minute after the last one (validate's kwargs)."""
        return {
            "item": self.items[:n],
            "action": self.actions[:n],
            "timestamp": self.timestamps[:n],
            "device": self.devices[:n],
            "segment": self.segment,
            "ctx_device": int(self.devices[n - 1]),
            "ctx_time": int(self.timestamps[n - 1]) + 60,
        }


def run_users(run: Path, n: int, tmp: Path) -> list[User]:
    """The run's users with their real histories (loadtest's workload), those with more than 4 events."""
    from loadtest.workload import build

    data = json.loads(build(run, tmp / "workload.json", max_users=max(4 * n, 50)).read_text())
    users = []
    for u in data["users"]:
        if len(u["items"]) > NEW_EVENTS + 1:
            users.append(
                User(
                    u["user_id"],
                    int(u["segment"]),
                    np.asarray(u["items"], np.int64),
                    np.asarray(u["actions"], np.int64),
                    np.asarray(u["timestamps"], np.int64),
                    np.asarray(u["devices"], np.int64),
                )
            )
    return users[:n]


# ---- measurements --------------------------------------------------------------------------------
def row(name: str, variant: str, ms: list[float] | np.ndarray, flops: float | None, floor: float, **extra: Any) -> dict[str, Any]:
    s = summary(ms)
    g = flops / s["p50_ms"] / 1e6 if flops and s["p50_ms"] > 0 else None
    r: dict[str, Any] = {"name": name, "variant": variant, **s, "flops": flops, "gflops_s": g}
    r["fraction_of_floor"] = g / floor if g is not None and extra.pop("matmul", True) else None
    if flops:
        r["compute_ms_at_floor"] = flops / floor / 1e6
        r["bound"] = "overhead" if r["compute_ms_at_floor"] < OVERHEAD_BOUND * s["p50_ms"] else "compute"
    r.update(extra)
    return r


def measure_encoder(ip: InProcess, lengths: list[int], cold_repeats: int, repeats: int, floor: float) -> list[dict]:
    from bench.cold_start import bench_history, visit
    from genrec.ensemble.request_validation import validate_options

    cfg, pipe, runner = ip.cfg, ip.pipe, ip.runner
    options = validate_options(cfg.pipeline)
    rng = np.random.default_rng(0)
    rows = []
    for length in lengths:
        h = bench_history(rng, pipe.cat.n_items, cfg.data.n_devices, length)
        for kind in ("cold", "returning"):
            if kind == "returning" and length <= NEW_EVENTS:
                continue
            n = cold_repeats if kind == "cold" else repeats
            total, graph, calls = [], [], []
            for i in range(n + 1):  # the first is a warm-up
                uid = f"enc-{kind}-{length}-{i}"
                if kind == "returning":
                    pipe.encode(visit(h, length - NEW_EVENTS, options, uid))
                runner.take()
                runner.recording = True
                t = time.perf_counter()
                _, outcome = pipe.encode(visit(h, length, options, uid))
                dt = (time.perf_counter() - t) * 1e3
                runner.recording = False
                assert outcome == ("miss" if kind == "cold" else "hit"), outcome
                c = runner.take()
                if i:
                    total.append(dt)
                    graph.append(sum(x.ms for x in c))
                    calls.append(len(c))
            first = 0 if kind == "cold" else 2 * (length - NEW_EVENTS) + 1
            tokens = 2 * length + 2 - first
            flops = encoder_token_flops(cfg, first, tokens)
            variant = f"cold, {length} events" if kind == "cold" else f"returning, {length} events ({NEW_EVENTS} new)"
            r = row(
                "encoder",
                variant,
                total,
                flops,
                floor,
                graph_ms_p50=float(np.median(graph)),
                python_ms_p50=float(np.median(np.subtract(total, graph))),
                graph_calls=int(np.median(calls)),
                tokens=tokens,
                graph_gflops_s=flops / float(np.median(graph)) / 1e6,
            )
            rows.append(r)
            say(f"encoder {variant}: p50 {r['p50_ms']:.2f} ms ({r['graph_calls']} graph calls, {r['graph_ms_p50']:.2f} ms in them)")
    return rows


@dataclass
class RequestTrace:
    total_ms: float
    validate_ms: float
    stage_ms: dict[str, float]
    calls: list[Call]
    memory: int


@dataclass
class StageInputs:
    """One request's stage calls as the pipeline made them (captured, whatever their signatures)."""

    req: Any
    gen: Any
    user: np.ndarray
    ann: np.ndarray
    prerank_args: tuple
    features: np.ndarray


def capture_inputs(pipe: Any, req: Any) -> StageInputs:
    """``pipe.recommend(req)`` with its stage methods wrapped to keep their arguments and results."""
    seen: dict[str, tuple] = {}
    names = ("generate", "retrieve", "prerank", "rank")
    originals = {n: getattr(pipe, n) for n in names}

    def wrap(name: str) -> Callable:
        def call(*args: Any) -> Any:
            out = originals[name](*args)
            seen[name] = (args, out)
            return out

        return call

    for n in names:
        setattr(pipe, n, wrap(n))
    try:
        pipe.recommend(req)
    finally:
        for n in names:
            setattr(pipe, n, originals[n])
    (user, _), ann = seen["retrieve"]
    (trace, _), _ = seen["rank"]
    return StageInputs(req, seen["generate"][1][0], np.asarray(user, np.float32), ann, seen["prerank"][0], trace.features)


Visit = Callable[["User", int, str], Any]  # (user, events, user id) -> a recommend answer


def measure_requests(
    ip: InProcess, users: list[User], triton: Visit | None = None, metrics_url: str | None = None
) -> tuple[list[RequestTrace], list[StageInputs], dict[str, Any] | None]:
    """Each user visits with all but its last 4 events (cached), then with all of them (measured:
    validate + recommend in process, and the same visit through Triton, interleaved so both see the
    same machine; who goes first alternates). Returns the in-process traces, the stage inputs of
    some requests (for the search, pre-rank and ranker micro-benchmarks) and the Triton figures."""
    pipe, runner = ip.pipe, ip.runner

    def local(u: User) -> RequestTrace:
        runner.take()
        runner.recording = True
        t0 = time.perf_counter()
        req = pipe.validate(**u.head(len(u.items)), user_id=f"ip-{u.user_id}")
        t1 = time.perf_counter()
        rec = pipe.recommend(req)
        t2 = time.perf_counter()
        runner.recording = False
        assert rec.cache == "hit", rec.cache
        return RequestTrace(
            (t2 - t0) * 1e3, (t1 - t0) * 1e3, dict(rec.stage_ms), runner.take(), int(rec.stage_counts.get("memory_entries", 0))
        )

    def remote(u: User) -> float:
        assert triton is not None
        t = time.perf_counter()
        triton(u, len(u.items), f"tr-{u.user_id}")
        return (time.perf_counter() - t) * 1e3

    for i, u in enumerate(users[:20]):  # warm-up: first calls of every graph and code path
        pipe.recommend(pipe.validate(**u.head(len(u.items)), user_id=f"warm-{i}"))
        if triton is not None:
            triton(u, len(u.items), f"warm-{i}")
    for u in users:
        pipe.recommend(pipe.validate(**u.head(len(u.items) - NEW_EVENTS), user_id=f"ip-{u.user_id}"))
        if triton is not None:
            triton(u, len(u.items) - NEW_EVENTS, f"tr-{u.user_id}")
    before = scrape(metrics_url) if triton is not None and metrics_url else ""
    traces, client_ms = [], []
    for i, u in enumerate(users):
        if triton is not None and i % 2:
            client_ms.append(remote(u))
        traces.append(local(u))
        if triton is not None and not i % 2:
            client_ms.append(remote(u))
    after = scrape(metrics_url) if before and metrics_url else ""
    # the stages' inputs, from other user ids (the measured states are not touched)
    inputs = [capture_inputs(pipe, pipe.validate(**u.head(len(u.items)), user_id=f"cap-{u.user_id}")) for u in users[:50]]
    tri = None if triton is None else {"client_ms": client_ms, "timers": triton_timers(before, after) if before and after else {}}
    return traces, inputs, tri


def request_rows(ip: InProcess, traces: list[RequestTrace], floor: float) -> list[dict]:
    rows = []
    graph_of = GRAPHS_OF_STAGE
    for stage in ("encode", "generate", "retrieve", "prerank", "rank"):
        models = graph_of.get(stage, ())
        total = [t.stage_ms.get(stage, 0.0) for t in traces]
        graph = [sum(c.ms for c in t.calls if c.model in models) for t in traces]
        flops = float(np.mean([sum(c.flops for c in t.calls if c.model in models) for t in traces])) if models else None
        extra: dict[str, Any] = {}
        if models:
            extra = {
                "graph_ms_p50": float(np.median(graph)),
                "python_ms_p50": float(np.median(np.subtract(total, graph))),
                "graph_calls": int(np.median([sum(c.model in models for c in t.calls) for t in traces])),
            }
        rows.append(row(f"stage {stage}", "returning user, run's histories", total, flops, floor, matmul=stage != "rank", **extra))
    gen_py = [t.stage_ms.get("generate", 0.0) - sum(c.ms for c in t.calls if c.model.startswith("decoder")) for t in traces]
    rows.append(row("beam search Python", "generate minus its graph calls (trie, softmax, top-k, contract checks)", gen_py, None, floor))
    # every graph call of those requests, by model and shape
    groups: dict[tuple[str, str], list[Call]] = {}
    for t in traces:
        for c in t.calls:
            groups.setdefault((c.model, c.variant), []).append(c)
    order = {"decoder_cross_kv": 0, "decoder_step": 1, "ugt_encoder": 2, "ranker": 3}
    for (model, variant), calls in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])):
        if model == "ugt_encoder":
            continue  # by history length in the encoder rows
        if len(calls) < max(3, len(traces) // 10):
            continue  # a rare shape (a pruned search)
        flops = float(np.mean([c.flops for c in calls]))
        memory = int(np.median([t.memory for t in traces]))
        rows.append(
            row(model, variant, [c.ms for c in calls], flops, floor, matmul=model != "ranker", calls=len(calls), memory_entries_p50=memory)
        )
    rows.append(row("validate", "request inputs against the catalogue and caps", [t.validate_ms for t in traces], None, floor))
    rows.append(row("request in process", "validate + recommend, returning user", [t.total_ms for t in traces], None, floor))
    return rows


def measure_search(ip: InProcess, users_vecs: np.ndarray, ks: list[int], repeats: int) -> list[dict]:
    from genrec.ensemble.retrieval import ExactIndex

    exact = ExactIndex(ip.pipe.cat.item_vectors)
    rows = []
    before = getattr(ip.ann, "failures", 0)
    n_items = int(ip.pipe.cat.item_vectors.shape[0])
    for k in ks:
        for name, index in (("milvus-lite search", ip.ann), ("exact search (numpy)", exact)):
            i = [0]

            def one(index=index, k=k, i=i, name=name) -> None:
                ids, _ = index.search(users_vecs[i[0] % len(users_vecs)][None], k)
                i[0] += 1
                if ids.shape[1] == 0:
                    raise RuntimeError(f"{name}: no neighbours (index unavailable)")

            r = row(name, f"k={k}", repeat(one, repeats), None, 1.0, items=n_items)
            rows.append(r)
            say(f"{name} k={k}: p50 {r['p50_ms']:.2f} ms")
    if getattr(ip.ann, "failures", 0) != before:
        raise RuntimeError("milvus-lite failed during the search benchmark")
    return rows


def cycle(xs: list) -> Callable[[], Any]:
    i = [0]

    def nxt() -> Any:
        x = xs[i[0] % len(xs)]
        i[0] += 1
        return x

    return nxt


def measure_prerank(ip: InProcess, inputs: list[StageInputs], repeats: int, floor: float) -> list[dict]:
    """The pipeline's pre-rank stage on the captured requests, and its parts (the dot pre-rank)."""
    from genrec.ensemble.cascade import gather, prerank_keep, prerank_scores
    from genrec.ensemble.ranking_features import ranking_features

    pipe, cat = ip.pipe, ip.pipe.cat
    opts = inputs[0].req.options
    prepared = []
    for x in inputs:
        c = gather(x.gen, x.ann, x.user, cat.item_vectors, cat.items, x.req, opts)
        pre = prerank_scores(c, cat.prerank_weight)
        prepared.append((x.req, c, pre, prerank_keep(c, pre, opts.prerank_keep, opts.follow_keep)))
    nxt, prep = cycle(inputs), cycle(prepared)

    def whole() -> None:
        pipe.prerank(*nxt().prerank_args)

    def merged() -> None:
        x = nxt()
        gather(x.gen, x.ann, x.user, cat.item_vectors, cat.items, x.req, opts)

    def scores() -> None:
        _, c, _, _ = prep()
        prerank_keep(c, prerank_scores(c, cat.prerank_weight), opts.prerank_keep, opts.follow_keep)

    def feats() -> None:
        req, c, pre, kept = prep()
        ranking_features(c.take(kept), pre[kept], cat.items, req.history.item, req.history.timestamp, float(req.request_time()))

    n_cands = int(np.median([len(p[1]) for p in prepared]))
    kind = getattr(getattr(ip.cfg.pipeline, "prerank", "dot"), "value", getattr(ip.cfg.pipeline, "prerank", "dot"))
    rows = [
        row(
            "pre-rank",
            f"stage as served ({kind}; {n_cands} candidates -> {opts.prerank_keep} + features)",
            repeat(whole, repeats),
            None,
            floor,
        ),
        row("pre-rank", "merge (generated + ANN + transitions, dedup, user . item)", repeat(merged, repeats), None, floor),
        row("pre-rank", "dot scores + top-k", repeat(scores, repeats), None, floor),
        row("pre-rank", "ranker features", repeat(feats, repeats), None, floor),
    ]
    for r in rows:
        say(f"{r['name']} {r['variant']}: p50 {r['p50_ms']:.3f} ms")
    return rows


def measure_ranker(ip: InProcess, inputs: list[StageInputs], batches: list[int], repeats: int, floor: float) -> list[dict]:
    """The ranker graph per batch size on real feature rows (requests' rows repeated to fill it)."""
    runner = ip.runner
    base = np.concatenate([x.features for x in inputs[:10]]).astype(np.float32)
    rows = []
    for b in batches:
        x = np.ascontiguousarray(np.resize(base, (b, base.shape[1])))
        flops = float(b * runner.trees * RANKER_DEPTH)
        r = row("ranker", f"batch {b}", repeat(lambda x=x: runner.run("ranker", {"features": x}), repeats), flops, floor, matmul=False)
        rows.append(r)
        say(f"ranker batch {b}: p50 {r['p50_ms']:.3f} ms")
    return rows


# ---- Triton ------------------------------------------------------------------------------------
def triton_timers(before: str, after: str) -> dict[str, Any]:
    """Triton's per-request means (ms) for recommend between two scrapes, and the model's own stage means."""
    out: dict[str, Any] = triton_means(before, after)
    stages = stage_means(before, after) if out else {}
    if stages:
        out["stages_ms"] = stages
        out["stages_sum_ms"] = sum(stages.values())
    return out


def triton_visit(grpc_url: str) -> Visit:
    """A recommend visit through Triton with the project's client (gRPC)."""
    from genrec.client.recommend_client import RecommendClient

    client = RecommendClient(grpc_url)

    def visit(u: User, n: int, uid: str) -> Any:
        v = u.head(n)
        return client.recommend(
            v["item"],
            v["action"],
            v["timestamp"],
            v["device"],
            user_id=uid,
            segment=v["segment"],
            ctx_device=v["ctx_device"],
            request_time=float(v["ctx_time"]),
        )

    return visit


def glue_figures(client_ms: list[float], inproc_ms: list[float], timers: dict[str, Any]) -> dict[str, Any]:
    """The glue: Triton's answer at the client minus the in-process request (same users,
    interleaved); and, from Triton's timers over the same requests, where it goes."""
    client, ip_s = summary(client_ms), summary(inproc_ms)
    g: dict[str, Any] = {
        "p50_ms": client["p50_ms"] - ip_s["p50_ms"],
        "p90_ms": client["p90_ms"] - ip_s["p90_ms"],
        "mean_ms": client["mean_ms"] - ip_s["mean_ms"],
        # per user, its Triton visit minus its in-process one (interleaved): robust to a busy moment
        "paired_p50_ms": float(np.median(np.subtract(client_ms, inproc_ms))) if len(client_ms) == len(inproc_ms) else None,
        "client": client,
        "in_process": ip_s,
        "triton_timers": timers,
    }
    if timers.get("request_ms") is not None:
        g["client_and_grpc_mean_ms"] = client["mean_ms"] - timers["request_ms"]  # outside the server: client, gRPC, loopback
        g["server_outside_execute_mean_ms"] = timers["request_ms"] - timers["compute_ms"]  # queue, inputs, outputs
        if timers.get("stages_sum_ms") is not None:
            g["backend_outside_stages_mean_ms"] = timers["compute_ms"] - timers["stages_sum_ms"]  # model.py around the stages
            g["client_minus_triton_stages_mean_ms"] = client["mean_ms"] - timers["stages_sum_ms"]  # the glue within the same requests
    return g


# ---- the per-request breakdown and the report ------------------------------------------------------
def breakdown(traces: list[RequestTrace], floor: float, glue_ms: float | None) -> list[dict]:
    """Mean ms per returning request, per stage: compute at the floor, graph-call overhead, Python."""
    graph_of = GRAPHS_OF_STAGE
    out = [
        {
            "stage": "validate",
            "compute_ms": 0.0,
            "graph_overhead_ms": 0.0,
            "other_ms": float(np.mean([t.validate_ms for t in traces])),
            "other": "Python",
        }
    ]
    for stage in ("encode", "generate", "retrieve", "prerank", "rank"):
        models = graph_of.get(stage, ())
        total = float(np.mean([t.stage_ms.get(stage, 0.0) for t in traces]))
        graph = float(np.mean([sum(c.ms for c in t.calls if c.model in models) for t in traces]))
        compute = 0.0
        if models and stage != "rank":  # tree comparisons are not matmul work
            compute = float(np.mean([sum(c.flops for c in t.calls if c.model in models) for t in traces])) / floor / 1e6
        compute = min(compute, graph)
        other = "milvus-lite round trip" if stage == "retrieve" else "Python / numpy"
        out.append({"stage": stage, "compute_ms": compute, "graph_overhead_ms": graph - compute, "other_ms": total - graph, "other": other})
    if glue_ms is not None:
        out.append(
            {"stage": "Triton + gRPC glue", "compute_ms": 0.0, "graph_overhead_ms": 0.0, "other_ms": max(0.0, glue_ms), "other": "glue"}
        )
    return out


def plot(path: Path, parts: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.55 * len(parts) + 1.6))
    names = [p["stage"] for p in parts][::-1]
    y = np.arange(len(names))
    comp = np.array([p["compute_ms"] for p in parts][::-1])
    graph = np.array([p["graph_overhead_ms"] for p in parts][::-1])
    other = np.array([p["other_ms"] for p in parts][::-1])
    ax.barh(y, comp, color="#2ca02c", label="model compute at the matmul floor")
    ax.barh(y, graph, left=comp, color="#ff7f0e", label="graph-call overhead (onnxruntime, tiny GEMMs)")
    kinds = [p["other"] for p in parts][::-1]
    colours = {"Python": "#7f7f7f", "Python / numpy": "#7f7f7f", "milvus-lite round trip": "#1f77b4", "glue": "#9467bd"}
    labels = {
        "#7f7f7f": "Python / numpy",
        "#1f77b4": "milvus-lite round trip (IPC)",
        "#9467bd": "Triton + gRPC glue (median of client minus in process, per user)",
    }
    seen: set[str] = set()
    for yi, kind, left, width in zip(y, kinds, comp + graph, other):
        c = colours.get(kind, "#7f7f7f")
        ax.barh([yi], [width], left=[left], color=c, label=None if c in seen else labels[c])
        seen.add(c)
    for yi, total in zip(y, comp + graph + other):
        ax.text(total, yi, f" {total:.2f} ms", va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.set_xlabel("mean ms per returning recommend request")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xlim(0, float((comp + graph + other).max()) * 1.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(stages: list[dict], floor_entries: list[dict]) -> None:
    head = (
        f"{'stage':24s} {'variant':58s} {'p50 ms':>8s} {'p90 ms':>8s} {'mean ms':>8s} {'MFLOP':>8s} {'GFLOP/s':>8s} {'of floor':>8s}  bound"
    )
    print(head)
    print("-" * len(head))
    for r in stages:
        mf = f"{r['flops'] / 1e6:8.3f}" if r.get("flops") else f"{'-':>8s}"
        g = f"{r['gflops_s']:8.2f}" if r.get("gflops_s") is not None else f"{'-':>8s}"
        fr = f"{100 * r['fraction_of_floor']:7.2f}%" if r.get("fraction_of_floor") is not None else f"{'-':>8s}"
        print(
            f"{r['name'][:24]:24s} {r['variant'][:58]:58s} {r['p50_ms']:8.3f} {r['p90_ms']:8.3f} {r['mean_ms']:8.3f} {mf} {g} {fr}  {r.get('bound', '')}"
        )
    print()
    print(f"{'matmul floor':44s} {'backend':12s} {'thr':>3s} {'p50 ms':>9s} {'GFLOP/s':>8s}")
    for e in floor_entries:
        print(f"{e['what'][:44]:44s} {e['backend']:12s} {e['threads']:3d} {e['p50_ms']:9.4f} {e['gflops_s']:8.2f}")


def tree_state() -> dict[str, Any]:
    """The commit measured and the files changed in the working tree (others may be editing it)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout
        return {"commit": head, "modified": [line[3:] for line in dirty.splitlines()]}
    except (OSError, subprocess.SubprocessError):
        return {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--run", type=Path, default=None, help=f"trained run (default: {DEFAULT_RUN} if present, else the latest run of --config)"
    )
    p.add_argument(
        "--config", default="tiny", help="named config whose latest run is used when --run is not given and the default is absent"
    )
    p.add_argument("--repository", type=Path, default=None, help="a repository with the run published (default: publish to a temp one)")
    p.add_argument("--triton-grpc", default=None, help="measure this running Triton (serving the same run) instead of starting one")
    p.add_argument("--metrics-url", default=None, help="its metrics page (with --triton-grpc)")
    p.add_argument("--no-triton", action="store_true", help="skip the Triton round trip (no glue figure)")
    p.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256, 1024], help="history lengths of the encoder rows")
    p.add_argument("--milvus-k", type=int, nargs="+", default=[100, 300, 500, 1000])
    p.add_argument("--ranker-batches", type=int, nargs="+", default=[10, 100, 300])
    p.add_argument("--users", type=int, default=300, help="returning users (real histories) for the whole-request figures")
    p.add_argument("--repeats", type=int, default=300, help="repeats of each cheap measurement")
    p.add_argument("--cold-repeats", type=int, default=30, help="repeats of each cold encode")
    p.add_argument("--floor-size", type=int, default=1024, help="side of the large square GEMM")
    p.add_argument("--out", type=Path, default=Path("bench/results/stage_costs.json"))
    a = p.parse_args(argv)

    run = a.run or (DEFAULT_RUN if DEFAULT_RUN.exists() and a.config == "tiny" else latest_run(name=a.config))
    run = run.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="genrec-stage-costs-"))
    load = [list(os.getloadavg())]
    t_start = time.perf_counter()
    ip = None
    server = None
    try:
        repo, version = published(run, a.repository, tmp)
        (tmp / "state").mkdir()
        ip = in_process(version, run, tmp / "state")
        cfg = ip.cfg
        say(f"run {run}, config {cfg.name}, version {version}; load average {os.getloadavg()[0]:.2f}")

        say("matmul floor")
        floor_entries, floor, call_floor = matmul_floor(cfg, a.floor_size, a.repeats)
        say(f"floor: {floor:.1f} GFLOP/s (onnxruntime, 1 thread, {a.floor_size}^3); an empty graph call {1e3 * call_floor:.1f} us")
        load.append(list(os.getloadavg()))

        stages = measure_encoder(ip, a.lengths, a.cold_repeats, a.repeats, floor)
        load.append(list(os.getloadavg()))

        users = run_users(run, a.users, tmp)
        say(f"{len(users)} returning users of the run (median {int(np.median([len(u.items) for u in users]))} events)")
        visit, metrics = None, None
        if not a.no_triton:
            grpc, metrics = a.triton_grpc, a.metrics_url
            if grpc is None:
                from genrec.runtime.triton_server import TritonServer

                say("starting Triton")
                (tmp / "triton-state").mkdir()
                server = TritonServer.on_free_ports(
                    repo, log=tmp / "triton.log", env={"GENREC_SERVING__STATE_DIR": str(tmp / "triton-state")}
                )
                server.start(timeout=300)
                grpc, metrics = server.grpc_url, server.metrics_url
            visit = triton_visit(grpc)
        say("returning users' requests" + (", in process and through Triton, interleaved" if visit else ", in process"))
        traces, inputs, tri = measure_requests(ip, users, visit, metrics)
        if server is not None:
            server.stop()
            server = None
        stages += request_rows(ip, traces, floor)
        triton: dict[str, Any] | None = None
        if tri is not None:
            triton = glue_figures(tri["client_ms"], [t.total_ms for t in traces], tri["timers"])
            stages.append(row("recommend via Triton", "gRPC, RecommendClient, returning user", tri["client_ms"], None, floor))
            stages.append(
                {
                    "name": "glue",
                    "variant": "Triton + gRPC + Python backend: client minus in-process request",
                    **{k: triton[k] for k in ("p50_ms", "p90_ms", "mean_ms")},
                    "flops": None,
                    "gflops_s": None,
                    "fraction_of_floor": None,
                }
            )
            say(
                f"Triton: client p50 {triton['client']['p50_ms']:.2f} ms, in process {triton['in_process']['p50_ms']:.2f} ms: glue {triton['p50_ms']:.2f} ms"
            )
        load.append(list(os.getloadavg()))

        vecs = np.stack([x.user for x in inputs])
        stages += measure_search(ip, vecs, a.milvus_k, a.repeats)
        stages += measure_prerank(ip, inputs, a.repeats, floor)
        stages += measure_ranker(ip, inputs, a.ranker_batches, a.repeats, floor)
        load.append(list(os.getloadavg()))
    finally:
        if server is not None:
            server.stop()
        if ip is not None:
            ip.close()
        shutil.rmtree(tmp, ignore_errors=True)

    # the glue bar: client minus in-process, interleaved per user; the bars then add up to the client's mean
    glue_ms = None if triton is None else (triton["paired_p50_ms"] if triton["paired_p50_ms"] is not None else triton["mean_ms"])
    parts = breakdown(traces, floor, glue_ms)
    overhead_bound = sorted({f"{r['name']} ({r['variant']})" for r in stages if r.get("bound") == "overhead"})
    out = {
        "created": now_iso(),
        "machine": machine(),
        "versions": versions(),
        "tree": tree_state(),
        "load_average": load,
        "run": str(run),
        "config": cfg.name,
        "beam_widths": list(cfg.pipeline.beam_widths),
        "ann_candidates": cfg.pipeline.ann_candidates,
        "ort_threads": cfg.serving.ort_threads,
        "users": len(traces),
        "repeats": a.repeats,
        "cold_repeats": a.cold_repeats,
        "floor_gflops_s": floor,
        "empty_graph_call_ms": call_floor,
        "matmul_floor": floor_entries,
        "stages": stages,
        "request_breakdown_mean_ms": parts,
        "glue": triton,
        "overhead_bound": overhead_bound,
        "wall_s": time.perf_counter() - t_start,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, out)
    png = a.out.with_suffix(".png")
    plot(png, parts, f"recommend, {cfg.name} ({run.name}), returning user: where the time goes (load avg {load[0][0]:.1f})")
    print_table(stages, floor_entries)
    total = sum(p["compute_ms"] + p["graph_overhead_ms"] + p["other_ms"] for p in parts)
    comp = sum(p["compute_ms"] for p in parts)
    say(f"per request: {total:.2f} ms, of which model compute at the floor {comp:.3f} ms ({100 * comp / total:.1f}%)")
    if triton is not None and triton["triton_timers"].get("request_ms") is not None:
        tm = triton["triton_timers"]
        say(
            f"Triton's timers (means): request {tm['request_ms']:.2f} ms, queue {tm['queue_ms']:.2f}, execute {tm['compute_ms']:.2f} "
            f"(stages {tm.get('stages_sum_ms', float('nan')):.2f}); client minus server {triton['client_and_grpc_mean_ms']:.2f} ms"
        )
    say(f"wrote {a.out} and {png} in {out['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
