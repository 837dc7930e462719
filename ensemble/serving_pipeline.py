"""The request path of the Triton ``recommend`` model, runnable without a server.

    validate -> encode (per-user state cache, history compression) -> constrained beam search
    (KV-cached decoder) -> ANN (Milvus) -> merge to ~1000 -> pre-rank to 100 -> ranker to 10

Pre-rank is the dot pre-rank, or with ``pipeline.prerank = "target_attention"`` and a pinned
``target_prerank`` graph, the target-aware one: the candidates in microbatches against the
request's encoder memory (the same memory the decoder got; no extra encoder work).

Every model call goes through a ``Runner`` ``(model, feeds) -> outputs``: in-process
onnxruntime sessions or Triton BLS requests, chosen by ``ServingConfig.execution``. The stages
are the same functions the PyTorch reference (``genrec.reference``) uses; only the model calls
differ, which is what the parity test checks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Protocol

import numpy as np

from genrec.contracts import ENCODER, RANKER, TARGET_PRERANK, pinnable_contracts
from genrec.data.schema import History
from genrec.ensemble.beam_search import Generated, beam_search, generated_items
from genrec.ensemble.cascade import CascadeTrace, Prerank, cascade, target_prerank, top_k
from genrec.ensemble.catalogue import Catalogue
from genrec.ensemble.encoder_state import EncodedRequest, EncoderState, Geometry, IncrementalEncoder
from genrec.ensemble.onnx_decoder import DecoderGraphs, OnnxDecoderStep, OnnxUncachedStep, Runner
from genrec.ensemble.request_types import Recommendation, RecommendRequest
from genrec.ensemble.request_validation import validate_for_catalogue
from genrec.ensemble.retrieval import AnnIndex, search_excluding
from genrec.settings import Config

STAGES = ("encode", "generate", "retrieve", "prerank", "rank")


class StateCache(Protocol):
    """Where encoder states live: ``EncoderCache`` (in process) or ``RedisEncoderCache``."""

    def take(self, user: str, history: History) -> tuple[EncoderState | None, int]: ...

    def store(self, user: str, history: History, state: EncoderState) -> None: ...


class ServingPipeline:
    def __init__(
        self,
        cfg: Config,
        catalogue: Catalogue,
        run: Runner,
        ann: AnnIndex,
        encoder_cache: StateCache | None = None,
        kv_cache: bool = True,
        compression: bool | None = None,
        blocks_per_call: int | None = None,
        has_target_prerank: bool = False,
    ) -> None:
        """``has_target_prerank``: the runner serves the ``target_prerank`` graph (the version
        pins one); without it the pipeline pre-ranks by "dot" whatever ``pipeline.prerank`` says."""
        self.cfg, self.cat, self.ann = cfg, catalogue, ann
        # one worker: requests of an instance run one at a time, so one search is ever in flight
        self._ann_worker = ThreadPoolExecutor(1, thread_name_prefix="ann") if cfg.serving.ann_concurrent else None
        self.prerank_mode = cfg.pipeline.prerank if has_target_prerank else "dot"
        contracts = {c.name: c for c in pinnable_contracts(cfg)}
        # every graph call checked against its contract (names, dtypes, ranks, caps), whichever runner
        self.run: Runner = lambda model, feeds: run(model, contracts[model].check_feeds(feeds))
        self.encoder_cache = encoder_cache
        self.kv_cache = kv_cache
        per_call = cfg.serving.encoder_blocks_per_call if blocks_per_call is None else blocks_per_call
        self.encoder = IncrementalEncoder(self._encoder_block, Geometry.of(cfg.encoder, compression), per_call)
        dc = cfg.decoder
        self.decoder = DecoderGraphs(run, catalogue.codebook_sizes, dc.n_layers, dc.n_heads, dc.d_model // dc.n_heads)

    def _encoder_block(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        new_k, new_v, out, user = self.run(ENCODER, feeds)
        return new_k, new_v, out, user

    def validate(self, item: object, action: object, timestamp: object, device: object, **kw: Any) -> RecommendRequest:
        return validate_for_catalogue(self.cat, self.cfg.pipeline, item, action, timestamp, device, **kw)

    # ---- stages -------------------------------------------------------------------------------
    def encode(self, req: RecommendRequest) -> tuple[EncodedRequest, str]:
        return encode_with_cache(self.encoder, self.encoder_cache, req)

    def generate(self, enc: EncodedRequest, req: RecommendRequest) -> tuple[Generated, int]:
        step_cls = OnnxDecoderStep if self.kv_cache else OnnxUncachedStep
        stepper = step_cls(self.decoder, enc.memory[None], enc.memory_logw[None])
        excluded = [req.excluded]
        result = beam_search(stepper, self.cat.trie, req.options.beam_widths, 1, excluded)
        return generated_items(result, self.cat.trie, excluded)[0], result.pruned

    def retrieve(self, user: np.ndarray, req: RecommendRequest) -> np.ndarray:
        if not req.options.ann_candidates:
            return np.zeros(0, dtype=np.int64)
        return search_excluding(self.ann, user[None], req.options.ann_candidates, [req.excluded])[0]

    def target_scorer(self, enc: EncodedRequest) -> Prerank | None:
        """The request's target-aware pre-rank over the ``target_prerank`` graph, or None (dot)."""
        if self.prerank_mode != "target_attention":
            return None
        memory, logw = np.ascontiguousarray(enc.memory, np.float32), np.ascontiguousarray(enc.memory_logw, np.float32)

        def score(vecs: np.ndarray, feats: np.ndarray) -> np.ndarray:
            (s,) = self.run(TARGET_PRERANK, {"memory": memory, "memory_logw": logw, "item_vectors": vecs, "features": feats})
            return s

        c = self.cat
        return target_prerank(score, c.item_vectors, c.items.log_popularity, self.cfg.pipeline.prerank_microbatch)

    def prerank(self, gen: Generated, enc: EncodedRequest, user: np.ndarray, ann_items: np.ndarray, req: RecommendRequest) -> CascadeTrace:
        c = self.cat
        pre = self.target_scorer(enc)
        return cascade(gen, user, ann_items, req, req.options, c.item_vectors, c.items, c.prerank_weight, c.popular, pre)

    def rank(self, trace: CascadeTrace, k: int) -> tuple[np.ndarray, np.ndarray]:
        (score,) = self.run(RANKER, {"features": np.ascontiguousarray(trace.features, dtype=np.float32)})
        scores = score.reshape(-1)
        best = top_k(scores, k)
        return trace.candidates.items[trace.kept[best]], scores[best].astype(np.float32)

    # ---- the whole request --------------------------------------------------------------------
    def recommend(self, req: RecommendRequest) -> Recommendation:
        submit = self._ann_worker.submit if self._ann_worker is not None else None
        return timed_recommendation(req, self.encode, self.generate, self.retrieve, self.prerank, self.rank, submit)

    def close(self) -> None:
        """Stop the ANN worker, then close the index (a Milvus client, a milvus-lite server)."""
        if self._ann_worker is not None:
            self._ann_worker.shutdown(wait=True)
        close = getattr(self.ann, "close", None)
        if close:
            close()


def encode_with_cache(encoder: IncrementalEncoder, cache: StateCache | None, req: RecommendRequest) -> tuple[EncodedRequest, str]:
    """Encoder output and the cache outcome ("hit", "miss", "off"): only the events after the
    cached prefix run. A miss rebuilds the state from the whole history, so hit and miss give the
    same output. Shared by the serving path and the PyTorch reference."""
    user = req.user_id
    cache = cache if user is not None else None
    state, n_cached = (None, 0) if cache is None or user is None else cache.take(user, req.history)
    outcome = "off" if cache is None else ("hit" if state is not None else "miss")
    state = state or encoder.init_state()
    h = req.history
    encoder.extend(state, History(h.item[n_cached:], h.action[n_cached:], h.timestamp[n_cached:], h.device[n_cached:]), req.segment)
    out = encoder.query(state, req.ctx_device, req.request_time(), req.segment)
    if cache is not None and user is not None and len(h):
        cache.store(user, h, state)
    return out, outcome


def timed_recommendation(
    req: RecommendRequest,
    encode: Callable[[RecommendRequest], tuple[Any, str]],
    generate: Callable[[Any, RecommendRequest], tuple[Generated, int]],
    retrieve: Callable[[np.ndarray, RecommendRequest], np.ndarray],
    prerank: Callable[[Generated, Any, np.ndarray, np.ndarray, RecommendRequest], CascadeTrace],
    rank: Callable[[CascadeTrace, int], tuple[np.ndarray, np.ndarray]],
    submit: Callable[..., Future] | None = None,
) -> Recommendation:
    """One request through the stages, timed, with the candidate counts the metrics report. The
    encoder output needs ``user`` ((d,) or (1, d)) and ``memory_logw``; generate and pre-rank get
    it as is (the target-aware pre-rank attends to its memory). With ``submit`` (an executor's)
    the ANN search runs there while the beam search runs here; each stage's time is its own, so
    ``retrieve`` then overlaps ``generate``."""
    t0 = time.perf_counter()
    enc, outcome = encode(req)
    t_enc = time.perf_counter()
    user = np.asarray(enc.user).reshape(-1)
    pending = submit(_timed, retrieve, user, req) if submit is not None else None
    try:
        gen, pruned = generate(enc, req)
    except BaseException:
        if pending is not None and not pending.cancel():
            wait([pending])  # no search of this request outlives it
        raise
    t_gen = time.perf_counter()
    ann, retrieve_s = pending.result() if pending is not None else _timed(retrieve, user, req)
    t_ann = time.perf_counter()
    trace = prerank(gen, enc, user, ann, req)
    t_pre = time.perf_counter()
    items, scores = rank(trace, req.options.final_k)
    t_rank = time.perf_counter()
    counts = {
        "generated": len(gen.items),
        "candidates": len(trace.candidates),
        "preranked": len(trace.kept),
        "returned": len(items),
        "beams_pruned": pruned,
        "memory_entries": int(np.isfinite(np.asarray(enc.memory_logw)).sum()),  # the decoder attends to these
    }
    seconds = {"encode": t_enc - t0, "generate": t_gen - t_enc, "retrieve": retrieve_s, "prerank": t_pre - t_ann, "rank": t_rank - t_pre}
    stage_ms = {s: seconds[s] * 1e3 for s in STAGES}
    return Recommendation(items, scores, counts, stage_ms, outcome, user.astype(np.float32))


def _timed(fn: Callable[..., np.ndarray], *args: Any) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t
