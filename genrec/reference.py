"""The PyTorch reference of the whole request path: the oracle the Triton path must match, and
the naive baseline the benchmarks compare against.

1. history -> UGT encoder (whole history, or a cached state extended by the new events), with
   history compression as configured;
2. beam search over semantic IDs, constrained by the catalogue trie (and the request's excluded
   items), with or without the decoder KV cache;
3. merge with ANN neighbours of the user vector (exact search here);
4. pre-rank to ``prerank_keep`` (100): the dot pre-rank, or the target-aware one
   (``genrec.models.target_prerank``, the PyTorch module the ``target_prerank`` graph is
   exported from) when ``pipeline.prerank`` says so and the run trained it;
5. LightGBM ranker to ``final_k`` (10).

Empty history is the documented cold-start path: the encoder still sees the USER and CTX
tokens, and the most popular items join the ANN candidates.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from genrec.batching import event_tokens, token_batches
from genrec.bundle import ModelBundle
from genrec.ensemble.beam_search import Generated, beam_search, generated_items
from genrec.ensemble.cascade import CascadeTrace, Prerank, cascade, target_prerank, top_k
from genrec.ensemble.request_types import Recommendation, RecommendRequest
from genrec.ensemble.request_validation import validate_for_catalogue
from genrec.ensemble.retrieval import AnnIndex, ExactIndex, search_excluding
from genrec.ensemble.serving_pipeline import StateCache, encode_with_cache, timed_recommendation
from genrec.models.moe_decoder import MoEDecoder
from genrec.models.ugt_encoder import EncoderOutput, build_tokens
from genrec.ranker import check_features


def stack_outputs(parts: list[EncoderOutput]) -> EncoderOutput:
    """Single-request encoder outputs as one batch; shorter memories are padded with absent
    entries (log-weight -inf), which the decoder gives no attention."""
    m = max(p.memory.shape[1] for p in parts)
    memory = torch.cat([torch.nn.functional.pad(p.memory, (0, 0, 0, m - p.memory.shape[1])) for p in parts])
    logw = torch.cat([torch.nn.functional.pad(p.memory_logw, (0, m - p.memory_logw.shape[1]), value=-math.inf) for p in parts])
    return EncoderOutput(memory, logw, torch.cat([p.user for p in parts]))


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


class ReferencePipeline:
    def __init__(
        self,
        bundle: ModelBundle,
        compression: bool | None = None,
        kv_cache: bool = True,
        encoder_cache: StateCache | None = None,
        ann: AnnIndex | None = None,
        prerank: str | None = None,
    ) -> None:
        """``prerank``: "dot" or "target_attention" (default ``pipeline.prerank``); a run
        without the target pre-ranker pre-ranks by "dot", as its served versions do."""
        self.b = bundle
        self.cfg = bundle.cfg.pipeline
        self.prerank_choice = prerank or self.cfg.prerank
        self.compression = bundle.cfg.encoder.compression if compression is None else compression
        self.kv_cache = kv_cache
        self.encoder_cache = encoder_cache
        self.catalogue = bundle.catalogue()
        self.ann = ann or ExactIndex(self.catalogue.item_vectors)

    # ---- validation ---------------------------------------------------------------------------
    def validate(self, item: object, action: object, timestamp: object, device: object, **kw: Any) -> RecommendRequest:
        return validate_for_catalogue(self.catalogue, self.cfg, item, action, timestamp, device, **kw)

    # ---- stages ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, reqs: list[RecommendRequest]) -> EncoderOutput:
        """Whole-history encoding of a batch (no cache). Histories up to ``dense_max_events`` go
        through the padded dense graph together; longer ones block by block through the
        incremental encoder (the serving path's; same outputs), so no (L x L) matrix is built
        for a long history. The caller bounds the batch's tokens (``traces`` does)."""
        long = [i for i, r in enumerate(reqs) if len(r.history) > self.cfg.dense_max_events]
        if not long:
            return self._encode_dense(reqs)
        parts: list[EncoderOutput | None] = [None] * len(reqs)
        short = sorted(set(range(len(reqs))) - set(long))
        if short:
            dense = self._encode_dense([reqs[i] for i in short])
            for row, i in enumerate(short):
                parts[i] = EncoderOutput(dense.memory[row : row + 1], dense.memory_logw[row : row + 1], dense.user[row : row + 1])
        inc = self.b.encoder.incremental(self.compression)
        for i in long:
            r = reqs[i]
            state = inc.extend(inc.init_state(), r.history, r.segment)
            q = inc.query(state, r.ctx_device, r.request_time(), r.segment)
            t = torch.from_numpy
            parts[i] = EncoderOutput(t(q.memory)[None], t(q.memory_logw)[None], t(q.user)[None])
        return stack_outputs([p for p in parts if p is not None])

    def _encode_dense(self, reqs: list[RecommendRequest]) -> EncoderOutput:
        tokens = build_tokens(
            [r.history for r in reqs], [r.segment for r in reqs], [r.ctx_device for r in reqs], [r.request_time() for r in reqs]
        )
        return self.b.encoder.forward_dense(tokens, compression=self.compression)

    def encode_cached(self, req: RecommendRequest) -> tuple[EncoderOutput, str]:
        """Encoding through the per-user state cache (only events after the cached prefix run),
        with the cache outcome."""
        out, outcome = encode_with_cache(self.b.encoder.incremental(self.compression), self.encoder_cache, req)
        t = torch.from_numpy
        return EncoderOutput(t(out.memory)[None], t(out.memory_logw)[None], t(out.user)[None]), outcome

    def generate(self, enc: EncoderOutput, reqs: list[RecommendRequest]) -> tuple[list[Generated], int]:
        widths = reqs[0].options.beam_widths
        stepper = (TorchCachedStep if self.kv_cache else TorchUncachedStep)(self.b.decoder, enc.memory, enc.memory_logw)
        excluded = [r.excluded for r in reqs]
        trie = self.catalogue.trie
        result = beam_search(stepper, trie, widths, len(reqs), excluded)
        return generated_items(result, trie, excluded), result.pruned

    @property
    def prerank_mode(self) -> str:
        # read at each call: training fits the pre-ranker after building this pipeline
        return self.prerank_choice if self.b.target_prerank is not None else "dot"

    def target_scorer(self, memory: torch.Tensor, memory_logw: torch.Tensor) -> Prerank | None:
        """One request's target-aware pre-rank over its encoder memory ((M, d), (M,)), or None (dot)."""
        model = self.b.target_prerank
        if self.prerank_mode != "target_attention" or model is None:
            return None
        logw = memory_logw.numpy()
        keep = np.isfinite(logw)  # padding of a batch, or entries the CTX token does not see
        mem, lw = memory.numpy()[keep], logw[keep]
        c = self.catalogue
        return target_prerank(
            lambda v, f: model.score_request(mem, lw, v, f), c.item_vectors, c.items.log_popularity, self.cfg.prerank_microbatch
        )

    def cascade(
        self, gen: Generated, enc: EncoderOutput, user_vec: np.ndarray, ann_items: np.ndarray, req: RecommendRequest
    ) -> CascadeTrace:
        """``enc``: this request's encoder output (batch of one), whose memory the target pre-rank attends to."""
        c = self.catalogue
        pre = self.target_scorer(enc.memory[0], enc.memory_logw[0])
        # the bundle's weight, not the catalogue snapshot's: training fits it after building this pipeline
        return cascade(gen, user_vec, ann_items, req, req.options, c.item_vectors, c.items, self.b.prerank_weight, c.popular, pre)

    def rank(self, trace: CascadeTrace, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.b.ranker is None:  # before the ranker is trained (training uses the pre-rank order)
            scores = trace.prerank[trace.kept]
        else:
            scores = self.b.ranker.predict(check_features(trace.features), num_threads=1)
        best = top_k(scores, k)
        return trace.candidates.items[trace.kept[best]], scores[best].astype(np.float32)

    # ---- whole requests -------------------------------------------------------------------------
    def traces(self, reqs: list[RecommendRequest]) -> tuple[EncoderOutput, list[CascadeTrace]]:
        """Every request's cascade trace and encoder output (in the given order), run in batches
        of similar length capped at ``pipeline.token_budget`` tokens: memory stays bounded
        whatever the history lengths."""
        tokens = [event_tokens(len(r.history)) for r in reqs]
        outs: list[EncoderOutput | None] = [None] * len(reqs)
        traces: list[CascadeTrace | None] = [None] * len(reqs)
        for idx in token_batches(tokens, self.cfg.token_budget, len(reqs)):
            batch = [reqs[i] for i in idx]
            enc = self.encode(batch)
            gens, _ = self.generate(enc, batch)
            user = enc.user.numpy()
            anns = self.retrieve(user, batch)
            for row, i in enumerate(idx):
                outs[i] = EncoderOutput(enc.memory[row : row + 1], enc.memory_logw[row : row + 1], enc.user[row : row + 1])
                traces[i] = self.cascade(gens[row], outs[i], user[row], anns[row], batch[row])
        return stack_outputs([o for o in outs if o is not None]), [t for t in traces if t is not None]

    def retrieve(self, user: np.ndarray, reqs: list[RecommendRequest]) -> list[np.ndarray]:
        """ANN neighbours of each user vector, minus the request's excluded items."""
        ann_k = reqs[0].options.ann_candidates
        if not ann_k:
            return [np.zeros(0, dtype=np.int64)] * len(reqs)
        return search_excluding(self.ann, user, ann_k, [r.excluded for r in reqs])

    def recommend(self, req: RecommendRequest) -> Recommendation:
        """One request, timed per stage: the same orchestration as the serving pipeline."""

        def encode(r: RecommendRequest) -> tuple[EncoderOutput, str]:
            if self.encoder_cache is not None and r.user_id is not None:
                return self.encode_cached(r)
            return self.encode([r]), "off"

        def generate(enc: EncoderOutput, r: RecommendRequest) -> tuple[Generated, int]:
            gens, pruned = self.generate(enc, [r])
            return gens[0], pruned

        return timed_recommendation(
            req,
            encode,
            generate,
            lambda user, r: self.retrieve(user[None], [r])[0],
            self.cascade,
            self.rank,
        )

    def recommend_batch(self, reqs: list[RecommendRequest]) -> list[tuple[np.ndarray, np.ndarray]]:
        _, traces = self.traces(reqs)
        return [self.rank(tr, r.options.final_k) for tr, r in zip(traces, reqs)]
