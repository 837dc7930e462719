"""PyTorch / LightGBM -> ONNX, with parity against the source on real and random inputs.

Each ``export_*`` writes ``model.onnx`` and returns a ``Parity`` measured by running the file
with onnxruntime beside the source model on the same inputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from genrec.bundle import ModelBundle
from genrec.contracts import (
    ModelContract,
    ad_ctr_contract,
    decoder_cross_kv_contract,
    decoder_step_contract,
    encoder_contract,
    ranker_contract,
    target_prerank_contract,
)
from genrec.data.schema import History
from genrec.ensemble.encoder_state import IncrementalEncoder
from genrec.exporters.graphs import DecoderCrossKVGraph, DecoderStepGraph, EncoderBlockGraph, TargetPrerankGraph
from genrec.models.ugt_encoder import event_tokens

OPSET = 17
RANKER_OPSET = 15  # the highest onnxmltools 1.16 converts LightGBM to
# fp32 graphs re-associate sums (fused kernels, other matmul blocking): 1e-4 absolute on
# outputs of magnitude ~1-10 is rounding, not a bug. Trees are exact up to float32 rounding.
# target_prerank: scores of magnitude ~1-30 (generation log-probs and similarities through one
# attention layer and a small MLP): 1e-4 absolute is float32 rounding of the re-associated sums.
TOLERANCE = {"ugt_encoder": 1e-3, "decoder_cross_kv": 1e-4, "decoder_step": 1e-3, "ranker": 1e-4, "target_prerank": 1e-4}


@dataclass
class Parity:
    model: str
    max_abs_err: float
    max_rel_err: float
    cases: int
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_err <= self.tolerance

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def session(path: Path, threads: int = 2, opt_level: str = "all") -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opt_level]
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _dynamic_axes(c: ModelContract) -> dict[str, dict[int, str]]:
    axes = {}
    for t in (*c.inputs, *c.outputs):
        dyn = {i: f"{t.name}_{i}" for i, d in enumerate(t.triton_dims) if d == -1}
        if c.max_batch_size:
            dyn = {0: "batch", **{i + 1: n for i, n in dyn.items()}}
        if dyn:
            axes[t.name] = dyn
    return axes


def _export(graph: torch.nn.Module, args: tuple, c: ModelContract, path: Path) -> None:
    graph.eval()
    with torch.no_grad():
        torch.onnx.export(
            graph,
            args,
            str(path),
            input_names=[t.name for t in c.inputs],
            output_names=[t.name for t in c.outputs],
            dynamic_axes=_dynamic_axes(c),
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)))


def _compare(
    name: str,
    cases: list[dict[str, np.ndarray]],
    reference: Callable[[dict], list[np.ndarray]],
    sess: ort.InferenceSession,
    tolerance: float | None = None,
) -> Parity:
    abs_err = rel_err = 0.0
    for feeds in cases:
        want = reference(feeds)
        got = sess.run(None, feeds)
        for w, g in zip(want, got):
            if w.size == 0:
                continue
            diff = np.abs(w.astype(np.float64) - g.astype(np.float64))
            abs_err = max(abs_err, float(diff.max()))
            rel_err = max(rel_err, float((diff / np.maximum(np.abs(w), 1e-3)).max()))
    return Parity(name, abs_err, rel_err, len(cases), TOLERANCE[name] if tolerance is None else tolerance)


# ---- encoder ---------------------------------------------------------------------------------
def encoder_cases(b: ModelBundle, histories: list[History], seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Real cases (blocks of real histories against the real cached context) and random ones."""
    enc = b.encoder
    comp = b.cfg.encoder.compression
    rng = np.random.default_rng(seed)
    cases = []
    for h in histories:
        inc = enc.incremental(comp)
        s = inc.init_state()
        n_prefix = max(0, len(h) - 3)
        inc.extend(s, h.head(n_prefix), 0)
        new = History(h.item[n_prefix:], h.action[n_prefix:], h.timestamp[n_prefix:], h.device[n_prefix:])
        if len(new) == 0 or s.n_tokens == 0:
            continue
        if comp:
            inc.advance(s, s.n_tokens // b.cfg.encoder.block_tokens)
        ev = event_tokens(new.head(1), s.n_tokens)
        ctx = inc.context(s)
        ck, cv, cw, cpos, ctime = (ctx[n] for n in ("ctx_k", "ctx_v", "ctx_w", "ctx_pos", "ctx_time"))
        cases.append(_enc_feeds(ev, ck, cv, cw, cpos, ctime))
    if comp and histories:  # real calls spanning several blocks (per-token key weights, the cold path)
        cases += _span_cases(b, histories[0])
    d, layers = b.cfg.encoder.d_model, b.cfg.encoder.n_layers
    for n_ctx, g in ((0, 3), (5, 1), (40, 7)):
        ev = {
            "item": rng.integers(0, b.n_items, g),
            "action": rng.integers(0, 4, g),
            "device": rng.integers(0, b.n_devices, g),
            "types": rng.integers(1, 3, g),
            "time": 1.7e9 + np.sort(rng.random(g)) * 1e5,
            "pos": n_ctx + np.arange(g),
        }
        cases.append(
            _enc_feeds(
                ev,
                rng.normal(size=(layers, n_ctx, d)).astype(np.float32),
                rng.normal(size=(layers, n_ctx, d)).astype(np.float32),
                rng.integers(0, 2, (g, n_ctx)).astype(np.float32),  # each token its own subset of the keys
                np.arange(n_ctx, dtype=np.float64),
                1.7e9 - rng.random(n_ctx) * 1e6,
            )
        )
    return cases


SPAN_CASES = 2  # multi-block calls of one real history checked for parity


def _span_cases(b: ModelBundle, h: History) -> list[dict[str, np.ndarray]]:
    """The first graph calls of a cold user's history encoded several blocks per call."""
    feeds: list[dict[str, np.ndarray]] = []
    one_block = b.encoder.incremental(True)

    def record(f: dict[str, np.ndarray]):
        feeds.append({k: np.array(v) for k, v in f.items()})
        return one_block.block(f)

    spans = IncrementalEncoder(record, one_block.g, blocks_per_call=0)
    spans.extend(spans.init_state(), h, 0)
    return feeds[:SPAN_CASES]


def _enc_feeds(ev, ck, cv, cw, cpos, ctime) -> dict[str, np.ndarray]:
    """One call's feeds; ``cw`` per key (one view for every token) or already (tokens, keys)."""
    f = {k: np.asarray(ev[k], dtype=np.int64) for k in ("item", "action", "device", "types", "pos")}
    cw = cw if cw.ndim == 2 else np.broadcast_to(cw, (f["item"].size, cw.size))
    f["time"] = np.asarray(ev["time"], dtype=np.float64)
    f["segment"] = np.array([0], dtype=np.int64)
    f.update(
        ctx_k=ck.astype(np.float32),
        ctx_v=cv.astype(np.float32),
        ctx_w=cw.astype(np.float32),
        ctx_pos=cpos.astype(np.float64),
        ctx_time=ctime.astype(np.float64),
    )
    return f


def export_encoder(b: ModelBundle, path: Path, histories: list[History]) -> Parity:
    c = encoder_contract(b.cfg)
    graph = EncoderBlockGraph(b.encoder)
    cases = encoder_cases(b, histories)
    example = tuple(torch.from_numpy(cases[-1][t.name]) for t in c.inputs)
    _export(graph, example, c, path)

    def ref(feeds):
        with torch.no_grad():
            return [o.numpy() for o in graph(*(torch.from_numpy(feeds[t.name]) for t in c.inputs))]

    return _compare(c.name, cases, ref, session(path))


# ---- decoder ---------------------------------------------------------------------------------
def export_decoder(
    b: ModelBundle, cross_path: Path, step_path: Path, memories: list[tuple[np.ndarray, np.ndarray]]
) -> tuple[Parity, Parity]:
    cfg = b.cfg
    dc = cfg.decoder
    cross_c, step_c = decoder_cross_kv_contract(cfg), decoder_step_contract(cfg)
    cross_g, step_g = DecoderCrossKVGraph(b.decoder).eval(), DecoderStepGraph(b.decoder).eval()
    rng = np.random.default_rng(1)
    mem_cases = [{"memory": m} for m, _ in memories] + [{"memory": rng.normal(size=(2, 7, cfg.encoder.d_model)).astype(np.float32)}]
    _export(cross_g, (torch.from_numpy(mem_cases[0]["memory"]),), cross_c, cross_path)

    def ref_cross(feeds):
        with torch.no_grad():
            return [o.numpy() for o in cross_g(torch.from_numpy(feeds["memory"]))]

    cross_parity = _compare(cross_c.name, mem_cases, ref_cross, session(cross_path))

    dh = dc.d_model // dc.n_heads
    step_cases = []
    for (mem, logw), step, wp, w in [(m, s, wp, w) for m in memories[:2] for s, wp, w in ((0, 1, 1), (1, 1, 6), (2, 6, 9))]:
        ck, cv = ref_cross({"memory": mem})
        r = mem.shape[0]
        step_cases.append(
            {
                "step": np.array([step], np.int64),
                "codes": rng.integers(0, min(cfg.semantic_id.codebook_sizes), (r, w)).astype(np.int64),
                "parents": rng.integers(0, wp, (r, w)).astype(np.int64),
                "past_k": rng.normal(size=(dc.n_layers, r, wp, dc.n_heads, step, dh)).astype(np.float32),
                "past_v": rng.normal(size=(dc.n_layers, r, wp, dc.n_heads, step, dh)).astype(np.float32),
                "cross_k": ck,
                "cross_v": cv,
                "cross_bias": logw.astype(np.float32),
            }
        )
    example = tuple(torch.from_numpy(step_cases[-1][t.name]) for t in step_c.inputs)
    _export(step_g, example, step_c, step_path)

    def ref_step(feeds):
        with torch.no_grad():
            return [o.numpy() for o in step_g(*(torch.from_numpy(feeds[t.name]) for t in step_c.inputs))]

    return cross_parity, _compare(step_c.name, step_cases, ref_step, session(step_path))


# ---- target-aware pre-ranker -------------------------------------------------------------------
def target_prerank_cases(
    b: ModelBundle, requests: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], seed: int = 4
) -> list[dict[str, np.ndarray]]:
    """Real cases (each request's memory with its candidates in the serving path's microbatches,
    the last one short) and random ones (one memory entry / one candidate up to the caps)."""
    c = target_prerank_contract(b.cfg)
    mb = b.cfg.pipeline.prerank_microbatch
    cases = []
    for mem, logw, vecs, feats in requests:
        for i in range(0, len(vecs), mb):
            cases.append({"memory": mem, "memory_logw": logw, "item_vectors": vecs[i : i + mb], "features": feats[i : i + mb]})
    rng = np.random.default_rng(seed)
    d, f = b.cfg.encoder.d_model, c.inputs[3].dims[1]
    assert isinstance(f, int)
    for m, n in ((1, 1), (7, 33), (min(97, c.caps["memory"]), c.caps["candidates"])):
        cases.append(
            {
                "memory": rng.normal(size=(m, d)).astype(np.float32),
                "memory_logw": np.log(rng.integers(1, 9, m)).astype(np.float32),
                "item_vectors": rng.normal(size=(n, d)).astype(np.float32),
                "features": rng.normal(size=(n, f)).astype(np.float32) * 3,
            }
        )
    return cases


def export_target_prerank(b: ModelBundle, path: Path, cases: list[dict[str, np.ndarray]]) -> Parity:
    c = target_prerank_contract(b.cfg)
    assert b.target_prerank is not None
    graph = TargetPrerankGraph(b.target_prerank).eval()
    example = tuple(torch.from_numpy(cases[0][t.name]) for t in c.inputs)
    _export(graph, example, c, path)

    def ref(feeds):
        with torch.no_grad():
            return [graph(*(torch.from_numpy(feeds[t.name]) for t in c.inputs)).numpy()]

    return _compare(c.name, cases, ref, session(path))


# ---- ranker ----------------------------------------------------------------------------------
def export_ranker(b: ModelBundle, path: Path, real_features: np.ndarray) -> Parity:
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    c = ranker_contract(b.cfg)
    assert b.ranker is not None
    n = c.inputs[0].dims[0]
    assert isinstance(n, int), "the ranker's feature count is a fixed dimension"
    model = convert_lightgbm(b.ranker, initial_types=[(c.inputs[0].name, FloatTensorType([None, n]))], target_opset=RANKER_OPSET)
    produced = model.graph.output[0].name  # the converter's own output name -> the contract's
    model.graph.output[0].name = c.outputs[0].name
    for node in model.graph.node:
        node.output[:] = [c.outputs[0].name if o == produced else o for o in node.output]
    onnx.save(model, str(path))
    onnx.checker.check_model(onnx.load(str(path)))
    rng = np.random.default_rng(2)
    cases = [{"features": real_features.astype(np.float32)}, {"features": rng.normal(size=(64, n)).astype(np.float32) * 3}]

    def ref(feeds):
        return [b.ranker.predict(feeds["features"], num_threads=1).astype(np.float32).reshape(-1, 1)]

    return _compare(c.name, cases, ref, session(path))


def p50_ms(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], runs: int = 50) -> float:
    for _ in range(5):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


# ---- pCTR ------------------------------------------------------------------------------------
def export_ad_ctr(b: ModelBundle, path: Path, user_vectors: np.ndarray, histories: list[History], seed: int = 3) -> Parity:
    """The run's ``ad_ctr`` graph, checked against the PyTorch network on real user vectors with
    real ad rows (``ad_feature_rows`` of real histories, as the feed builds them), at batch and
    ads counts from 1 to the caps, and on random rows."""
    from genrec.ad_ctr import N_FEATURES, ONNX_TOLERANCE, ad_feature_rows, export_onnx, load

    model = load(b.path)
    c = ad_ctr_contract(b.cfg)
    if model.d_user != b.cfg.encoder.d_model:
        raise ValueError(f"ad_ctr: trained on user vectors of {model.d_user} dims, the encoder gives {b.cfg.encoder.d_model}")
    export_onnx(model, path)
    rng = np.random.default_rng(seed)
    ads = np.flatnonzero(~np.isnan(model.table.quality_proxy))  # the catalogue's ads
    users = np.asarray(user_vectors, np.float32)
    cases = []
    for batch, n_ads in ((1, 1), (1, 7), (len(users), 33), (min(len(users), c.max_batch_size), c.caps["ads"])):
        picks = [rng.choice(ads, n_ads) for _ in range(batch)]
        rows = [ad_feature_rows(histories[i % len(histories)].item, p, model.table) for i, p in enumerate(picks)]
        cases.append({"user_vector": users[np.arange(batch) % len(users)], "ad_features": np.stack(rows).astype(np.float32)})
    cases.append(
        {
            "user_vector": rng.normal(size=(4, model.d_user)).astype(np.float32),
            "ad_features": rng.normal(size=(4, 20, N_FEATURES)).astype(np.float32),
        }
    )

    def ref(feeds):
        return [model.predict(feeds["user_vector"], feeds["ad_features"])]

    return _compare(c.name, cases, ref, session(path), ONNX_TOLERANCE)
