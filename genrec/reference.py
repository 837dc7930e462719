"""The PyTorch reference of the whole request path: the oracle the Triton path must match, and
the naive baseline the benchmarks compare against.

1. history -> UGT encoder (whole history, or a cached state extended by the new events), with
   history compression as configured;
2. beam search over semantic IDs, constrained by the catalogue trie (and the request's excluded
   items), with or without the decoder KV cache;
3. merge with ANN neighbours of the user vector (exact search here);
4. pre-rank to ``prerank_keep`` (100);
5. LightGBM ranker to ``final_k`` (10).

Empty history is the documented cold-start path: the encoder still sees the USER and CTX
tokens, and the most popular items join the ANN candidates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from genrec.bundle import ModelBundle
from genrec.data.schema import History
from genrec.ensemble.beam_search import Generated, beam_search, generated_items
from genrec.ensemble.cascade import Candidates, merge, prerank_scores, top_k
from genrec.ensemble.encoder_cache import EncoderCache
from genrec.ensemble.ranking_features import ranking_features
from genrec.ensemble.request_validation import RequestOptions, validate_excluded, validate_history, validate_options
from genrec.ensemble.retrieval import AnnIndex, ExactIndex, search_excluding
from genrec.errors import InvalidValueError
from genrec.models.moe_decoder import MoEDecoder
from genrec.models.ugt_encoder import EncoderOutput, EncoderState, build_tokens
from genrec.ranker import check_features

COLD_START_POPULAR = 100  # popular items added to the candidates when the history is empty


class TorchCachedStep:
    """Decoder steps with the KV cache: shared cross K/V, per-beam self K/V reordered by index."""

    def __init__(self, decoder: MoEDecoder, memory: torch.Tensor, memory_logw: torch.Tensor) -> None:
        self.decoder = decoder
        self.cache = decoder.start(memory, memory_logw)

    def step(self, step: int, codes: np.ndarray | None, parents: np.ndarray | None) -> np.ndarray:
        if parents is not None:
            self.cache.reorder(torch.from_numpy(parents))
        c = None if codes is None else torch.from_numpy(codes)
        return self.decoder.step(self.cache, step, c, 1 if codes is None else codes.shape[1]).numpy()


class TorchUncachedStep:
    """The naive decoder: every step recomputes each beam's prefix and its own cross K/V."""

    def __init__(self, decoder: MoEDecoder, memory: torch.Tensor, memory_logw: torch.Tensor) -> None:
        self.decoder, self.memory, self.logw = decoder, memory, memory_logw
        self.prefix = np.zeros((memory.shape[0], 1, 0), dtype=np.int64)

    def step(self, step: int, codes: np.ndarray | None, parents: np.ndarray | None) -> np.ndarray:
        if parents is not None and codes is not None:
            r = np.arange(self.prefix.shape[0])[:, None]
            self.prefix = np.concatenate([self.prefix[r, parents], codes[:, :, None]], axis=2)
        return self.decoder.step_uncached(self.memory, self.logw, torch.from_numpy(self.prefix)).numpy()


@dataclass(frozen=True)
class RecommendRequest:
    history: History
    segment: int = 0
    ctx_device: int = 0
    ctx_time: int | None = None  # request time; defaults to one minute after the last event
    user_id: str | None = None  # key of the encoder cache
    excluded: np.ndarray | None = None
    options: RequestOptions | None = None

    def request_time(self) -> int:
        if self.ctx_time is not None:
            return int(self.ctx_time)
        return int(self.history.timestamp[-1]) + 60 if len(self.history) else 0


@dataclass
class Recommendation:
    items: np.ndarray
    scores: np.ndarray
    stage_counts: dict[str, int] = field(default_factory=dict)
    stage_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class CascadeTrace:
    """Intermediate results of one request (for evaluation and ranker training)."""

    generated: Generated
    candidates: Candidates
    prerank: np.ndarray  # pre-rank score of every candidate
    kept: np.ndarray  # indices into candidates, best first (the 100)
    features: np.ndarray  # ranker features of the kept candidates


class ReferencePipeline:
    def __init__(
        self,
        bundle: ModelBundle,
        compression: bool | None = None,
        kv_cache: bool = True,
        encoder_cache: EncoderCache[EncoderState] | None = None,
        ann: AnnIndex | None = None,
    ) -> None:
        self.b = bundle
        self.cfg = bundle.cfg.pipeline
        self.compression = bundle.cfg.encoder.compression if compression is None else compression
        self.kv_cache = kv_cache
        self.encoder_cache = encoder_cache
        self.ann = ann or ExactIndex(bundle.item_vectors)

    # ---- validation ---------------------------------------------------------------------------
    def validate(
        self, item, action, timestamp, device, segment: int = 0, ctx_device: int = 0, excluded=None, **options
    ) -> RecommendRequest:
        h = validate_history(item, action, timestamp, device, self.b.n_items, self.b.n_devices, self.cfg)
        if not 0 <= segment < self.b.n_segments:
            raise InvalidValueError("segment", f"expected [0, {self.b.n_segments})")
        if not 0 <= ctx_device < self.b.n_devices:
            raise InvalidValueError("ctx_device", f"expected [0, {self.b.n_devices})")
        return RecommendRequest(
            h,
            segment,
            ctx_device,
            excluded=validate_excluded(excluded, self.b.n_items, self.cfg),
            options=validate_options(self.cfg, **options),
        )

    # ---- stages ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, reqs: list[RecommendRequest]) -> EncoderOutput:
        """Whole-history encoding of a batch (no cache)."""
        tokens = build_tokens(
            [r.history for r in reqs], [r.segment for r in reqs], [r.ctx_device for r in reqs], [r.request_time() for r in reqs]
        )
        return self.b.encoder.forward_dense(tokens, compression=self.compression)

    @torch.no_grad()
    def encode_cached(self, req: RecommendRequest) -> EncoderOutput:
        """Encoding through the per-user state cache: only events after the cached prefix run."""
        assert self.encoder_cache is not None and req.user_id is not None
        enc = self.b.encoder
        state, n_cached = self.encoder_cache.take(req.user_id, req.history)
        if state is None:
            state = enc.init_state()
        enc.extend(
            state,
            History(*(a[n_cached:] for a in (req.history.item, req.history.action, req.history.timestamp, req.history.device))),
            req.segment,
            self.compression,
        )
        out = enc.query(state, req.ctx_device, req.request_time(), req.segment, self.compression)
        if len(req.history):
            self.encoder_cache.store(req.user_id, req.history, state)
        return out

    def generate(self, enc: EncoderOutput, reqs: list[RecommendRequest]) -> tuple[list[Generated], int]:
        widths = reqs[0].options.beam_widths if reqs[0].options else self.cfg.beam_widths
        stepper = (TorchCachedStep if self.kv_cache else TorchUncachedStep)(self.b.decoder, enc.memory, enc.memory_logw)
        excluded = [r.excluded for r in reqs]
        result = beam_search(stepper, self.b.trie, widths, len(reqs), excluded)
        return generated_items(result, self.b.trie, excluded), result.pruned

    def cascade(self, gen: Generated, user_vec: np.ndarray, ann_items: np.ndarray, req: RecommendRequest) -> CascadeTrace:
        opts = req.options or validate_options(self.cfg)
        if len(req.history) == 0:
            popular = self.b.popular_items(COLD_START_POPULAR + (0 if req.excluded is None else len(req.excluded)))
            if req.excluded is not None:
                popular = popular[~np.isin(popular, req.excluded)]
            ann_items = np.concatenate([ann_items, popular[~np.isin(popular, ann_items)][:COLD_START_POPULAR]])
        cands = merge(gen, ann_items, user_vec, self.b.item_vectors, opts.max_candidates)
        pre = prerank_scores(cands, self.b.prerank_weight)
        kept = top_k(pre, opts.prerank_keep)
        feats = ranking_features(
            cands.take(kept), pre[kept], self.b.items, req.history.item, req.history.timestamp, float(req.request_time())
        )
        return CascadeTrace(gen, cands, pre, kept, feats)

    def rank(self, trace: CascadeTrace, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.b.ranker is None:  # before the ranker is trained (training uses the pre-rank order)
            scores = trace.prerank[trace.kept]
        else:
            scores = self.b.ranker.predict(check_features(trace.features), num_threads=1)
        best = top_k(scores, k)
        return trace.candidates.items[trace.kept[best]], scores[best].astype(np.float32)

    # ---- whole requests -------------------------------------------------------------------------
    def traces(self, reqs: list[RecommendRequest]) -> tuple[EncoderOutput, list[CascadeTrace]]:
        enc = self.encode(reqs)
        gens, _ = self.generate(enc, reqs)
        user = enc.user.numpy()
        anns = self.retrieve(user, reqs)
        return enc, [self.cascade(g, user[i], anns[i], reqs[i]) for i, g in enumerate(gens)]

    def retrieve(self, user: np.ndarray, reqs: list[RecommendRequest]) -> list[np.ndarray]:
        """ANN neighbours of each user vector, minus the request's excluded items."""
        ann_k = reqs[0].options.ann_candidates if reqs[0].options else self.cfg.ann_candidates
        if not ann_k:
            return [np.zeros(0, dtype=np.int64)] * len(reqs)
        return search_excluding(self.ann, user, ann_k, [r.excluded for r in reqs])

    def recommend(self, req: RecommendRequest) -> Recommendation:
        t = {"start": time.perf_counter()}
        enc = self.encode_cached(req) if (self.encoder_cache is not None and req.user_id is not None) else self.encode([req])
        t["encode"] = time.perf_counter()
        gens, pruned = self.generate(enc, [req])
        t["generate"] = time.perf_counter()
        opts = req.options or validate_options(self.cfg)
        user = enc.user.numpy()
        ann = self.retrieve(user, [req])[0]
        t["retrieve"] = time.perf_counter()
        trace = self.cascade(gens[0], user[0], ann, req)
        t["prerank"] = time.perf_counter()
        items, scores = self.rank(trace, opts.final_k)
        t["rank"] = time.perf_counter()
        stages = list(t)
        return Recommendation(
            items,
            scores,
            {
                "generated": len(gens[0].items),
                "candidates": len(trace.candidates),
                "preranked": len(trace.kept),
                "returned": len(items),
                "beams_pruned": pruned,
            },
            {s: (t[s] - t[p]) * 1e3 for p, s in zip(stages, stages[1:])},
        )

    def recommend_batch(self, reqs: list[RecommendRequest]) -> list[tuple[np.ndarray, np.ndarray]]:
        _, traces = self.traces(reqs)
        k = reqs[0].options.final_k if reqs[0].options else self.cfg.final_k
        return [self.rank(tr, k) for tr in traces]
