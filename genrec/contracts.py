"""Tensor contracts of the served models: names, dtypes, shapes and caps, declared once.

The exporters name the ONNX inputs/outputs from these, ``config.pbtxt`` files are generated
from them (``genrec.exporters.pbtxt``), and the request path builds its tensors from them.
A dynamic dim is named (``"tokens"``, ``"beams"``, ...) and ``caps`` gives its upper bound;
``config.pbtxt`` shows it as ``-1``. ``ModelContract.check_feeds`` enforces names, dtypes, ranks
and caps on every graph call of the request path (in-process and BLS alike), and the pip
runtime's onnxruntime backend enforces the same caps on direct calls (they travel in the
generated config's ``parameters``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from genrec.ensemble.prefix_trie import N_LEVELS
from genrec.ensemble.ranking_features import N_FEATURES
from genrec.errors import InvalidValueError
from genrec.settings import Config

Dim = int | str  # a fixed size, or the name of a dynamic dim whose cap is in ModelContract.caps

ENCODER = "ugt_encoder"
DECODER_CROSS_KV = "decoder_cross_kv"
DECODER_STEP = "decoder_step"
RANKER = "ranker"
TARGET_PRERANK = "target_prerank"
RECOMMEND = "recommend"
AD_CTR = "ad_ctr"
FEED_CANDIDATES = "feed_candidates"
AD_CTR_MAX_BATCH = 16  # concurrent feed requests merged into one ad_ctr call
RECOMMEND_INSTANCES = 1  # see README "Where a user's encoder state lives" for the measured choice
MAX_REQUESTS_PER_CALL = 64  # requests batched into one decoder call (recommend sends 1)


def memory_cap(cfg: Config) -> int:
    """Encoder memory entries a request can bring: without compression, 2 tokens per event + 2."""
    return 2 * cfg.pipeline.max_history_events + 2


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # Triton type name without the TYPE_ prefix: INT64, FP32, FP64, STRING
    dims: tuple[Dim, ...]
    doc: str = ""
    optional: bool = False

    @property
    def numpy_dtype(self) -> str:
        return {"INT64": "int64", "FP32": "float32", "FP64": "float64", "STRING": "object"}[self.dtype]

    @property
    def triton_dims(self) -> tuple[int, ...]:
        return tuple(-1 if isinstance(d, str) else d for d in self.dims)


@dataclass(frozen=True)
class EnsembleStep:
    """One step of a Triton ensemble: ``inputs`` maps the model's input -> an ensemble tensor,
    ``outputs`` the model's output -> an ensemble tensor."""

    model: str
    inputs: dict[str, str]
    outputs: dict[str, str]


@dataclass(frozen=True)
class ModelContract:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0  # 0: shapes are explicit (no implicit batch dimension)
    caps: dict[str, int] = field(default_factory=dict)  # dynamic dim name -> cap (every named dim has one)
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    doc: str = ""
    backend: str = ""  # "" = an ONNX graph (platform onnxruntime_onnx); "python" = a Python-backend model
    parameters: dict[str, str] = field(default_factory=dict)  # documented request parameters -> doc
    instances: int = 1
    versions_kept: int = 2  # the previous version keeps answering requests that name it
    steps: tuple[EnsembleStep, ...] = ()  # set: a Triton ensemble (platform "ensemble") of these steps
    # a bounded queue (Triton's default_queue_policy, REJECT): beyond max_queue_size waiting, or
    # after queue_timeout_us in the queue, a request is refused with UNAVAILABLE; 0: unbounded
    max_queue_size: int = 0
    queue_timeout_us: int = 0

    def __post_init__(self) -> None:
        named = {d for t in (*self.inputs, *self.outputs) for d in t.dims if isinstance(d, str)}
        if named - self.caps.keys():
            raise ValueError(f"{self.name}: dynamic dims {sorted(named - self.caps.keys())} have no cap")

    def input_caps(self) -> dict[str, dict[int, int]]:
        """input name -> {axis: cap} for its dynamic dims (what a server must refuse beyond)."""
        return {t.name: {i: self.caps[d] for i, d in enumerate(t.dims) if isinstance(d, str)} for t in self.inputs}

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The feeds of one call, checked against the contract: the input names, each tensor's
        rank, fixed dims and caps; cast to the contract's dtype. A violation names the input."""
        required = {t.name for t in self.inputs if not t.optional}
        known = {t.name for t in self.inputs}
        if missing := required - feeds.keys():
            raise InvalidValueError(f"{self.name} inputs", f"missing {sorted(missing)}")
        if unknown := feeds.keys() - known:
            raise InvalidValueError(f"{self.name} inputs", f"unknown {sorted(unknown)}")
        out = {}
        for t in self.inputs:
            if t.name not in feeds:
                continue
            arr = np.ascontiguousarray(feeds[t.name], dtype=t.numpy_dtype)
            batch = (-1,) if self.max_batch_size else ()
            dims = (*batch, *t.dims)
            if arr.ndim != len(dims):
                raise InvalidValueError(t.name, f"expected {len(dims)} dims {list(dims)}, got shape {list(arr.shape)}")
            for size, d in zip(arr.shape, dims):
                if isinstance(d, str) and size > self.caps[d]:
                    raise InvalidValueError(t.name, f"{d} = {size}, over the cap of {self.caps[d]}")
                if isinstance(d, int) and d >= 0 and size != d:
                    raise InvalidValueError(t.name, f"expected shape {list(dims)}, got {list(arr.shape)}")
            out[t.name] = arr
        return out

    def caps_parameter(self) -> str:
        """``input_caps`` as JSON, for the generated config's parameters."""
        return json.dumps({name: {str(a): c for a, c in axes.items()} for name, axes in self.input_caps().items() if axes})


def encoder_contract(cfg: Config) -> ModelContract:
    layers, d = cfg.encoder.n_layers, cfg.encoder.d_model
    tok = lambda name, dtype, doc: TensorSpec(name, dtype, ("tokens",), doc)  # noqa: E731
    g_cap = max(cfg.encoder.block_tokens, 2)
    # exact context keys: with compression at most recent+block+slots+1; without it the whole history
    n_cap = memory_cap(cfg)
    return ModelContract(
        ENCODER,
        inputs=(
            tok("item", "INT64", "item id per token, -1 where not an ITEM token"),
            tok("action", "INT64", "action code per token"),
            tok("device", "INT64", "device per token"),
            tok("types", "INT64", "token type: 0 user, 1 item, 2 action, 3 context"),
            tok("time", "FP64", "unix seconds per token"),
            tok("pos", "INT64", "absolute position per token"),
            TensorSpec("segment", "INT64", (1,), "user segment"),
            TensorSpec("ctx_k", "FP32", (layers, "context", d), "cached keys per layer"),
            TensorSpec("ctx_v", "FP32", (layers, "context", d), "cached values per layer"),
            TensorSpec(
                "ctx_w",
                "FP32",
                ("tokens", "context"),
                "per new token, the tokens each cached key stands for in its view (0 = not seen)",
            ),
            TensorSpec("ctx_pos", "FP64", ("context",), "position of each cached key"),
            TensorSpec("ctx_time", "FP64", ("context",), "time of each cached key"),
        ),
        outputs=(
            TensorSpec("new_k", "FP32", (layers, "tokens", d), "keys of the new tokens, to append"),
            TensorSpec("new_v", "FP32", (layers, "tokens", d), "values of the new tokens, to append"),
            TensorSpec("out", "FP32", ("tokens", d), "encoder outputs of the new tokens"),
            TensorSpec("user", "FP32", ("tokens", d), "user vector (meaningful at the CTX token)"),
        ),
        caps={"tokens": max(g_cap, n_cap), "context": n_cap},
        doc="UGT encoder over one block of new tokens against explicit cached K/V (incremental encoding).",
    )


def decoder_cross_kv_contract(cfg: Config) -> ModelContract:
    dc = cfg.decoder
    dh = dc.d_model // dc.n_heads
    return ModelContract(
        DECODER_CROSS_KV,
        inputs=(TensorSpec("memory", "FP32", ("requests", "memory", cfg.encoder.d_model), "encoder memory (R, M, d)"),),
        outputs=(
            TensorSpec("cross_k", "FP32", (dc.n_layers, "requests", dc.n_heads, "memory", dh), "per layer, per request"),
            TensorSpec("cross_v", "FP32", (dc.n_layers, "requests", dc.n_heads, "memory", dh), "per layer, per request"),
        ),
        caps={"requests": MAX_REQUESTS_PER_CALL, "memory": memory_cap(cfg)},
        doc="Cross-attention K/V, computed once per request and shared by all its beams.",
    )


def decoder_step_contract(cfg: Config) -> ModelContract:
    dc = cfg.decoder
    dh = dc.d_model // dc.n_heads
    kmax = max(cfg.semantic_id.codebook_sizes)
    past: tuple[Dim, ...] = (dc.n_layers, "requests", "beams", dc.n_heads, "steps", dh)
    cross: tuple[Dim, ...] = (dc.n_layers, "requests", dc.n_heads, "memory", dh)
    return ModelContract(
        DECODER_STEP,
        inputs=(
            TensorSpec("step", "INT64", (1,), "0, 1 or 2: the code level this step predicts"),
            TensorSpec("codes", "INT64", ("requests", "beams"), "(R, W) newest code of each beam (ignored at step 0)"),
            TensorSpec("parents", "INT64", ("requests", "beams"), "(R, W) previous beam each beam extends"),
            TensorSpec("past_k", "FP32", past, "(L, R, W_prev, H, t, dh) self-attention keys"),
            TensorSpec("past_v", "FP32", past, "(L, R, W_prev, H, t, dh) self-attention values"),
            TensorSpec("cross_k", "FP32", cross, "from decoder_cross_kv"),
            TensorSpec("cross_v", "FP32", cross, "from decoder_cross_kv"),
            TensorSpec("cross_bias", "FP32", ("requests", "memory"), "(R, M) log token count per memory entry"),
        ),
        outputs=(
            TensorSpec("logits", "FP32", ("requests", "beams", kmax), f"(R, W, {kmax}); columns past the level's codebook are padding"),
            TensorSpec("present_k", "FP32", past, "past_k reordered by parents, plus this step"),
            TensorSpec("present_v", "FP32", past, "past_v reordered by parents, plus this step"),
        ),
        # past K/V hold one entry per earlier step: at most the number of code levels
        caps={"beams": cfg.pipeline.max_beam_width, "requests": MAX_REQUESTS_PER_CALL, "steps": N_LEVELS, "memory": memory_cap(cfg)},
        doc="One MoE decoder step with its KV cache; beams reordered by index inside the graph.",
    )


def ranker_contract(cfg: Config) -> ModelContract:
    return ModelContract(
        RANKER,
        inputs=(TensorSpec("features", "FP32", (N_FEATURES,), "ranking features of one candidate"),),
        outputs=(TensorSpec("score", "FP32", (1,), "ranker score"),),
        max_batch_size=1024,
        preferred_batch_sizes=(100, 200, 400),
        max_queue_delay_us=500,
        doc="LightGBM lambdarank over (user, candidate) features; a request's 100 candidates are its batch.",
    )


def target_prerank_contract(cfg: Config) -> ModelContract:
    from genrec.ensemble.cascade import PRERANK_FEATURES

    d = cfg.encoder.d_model
    return ModelContract(
        TARGET_PRERANK,
        inputs=(
            TensorSpec("memory", "FP32", ("memory", d), "the request's encoder memory (cached state + CTX), as the decoder gets it"),
            TensorSpec("memory_logw", "FP32", ("memory",), "log of the tokens each memory entry stands for"),
            TensorSpec("item_vectors", "FP32", ("candidates", d), "one microbatch of candidates: their item vectors"),
            TensorSpec(
                "features",
                "FP32",
                ("candidates", len(PRERANK_FEATURES)),
                "their cheap signals, columns genrec.ensemble.cascade.PRERANK_FEATURES",
            ),
        ),
        outputs=(TensorSpec("score", "FP32", ("candidates",), "pre-rank score of each candidate (higher is better)"),),
        caps={"memory": memory_cap(cfg), "candidates": cfg.pipeline.max_candidates},
        doc="Target-aware pre-rank: each candidate attends to the user's encoder memory (not to the other candidates).",
    )


def recommend_contract(cfg: Config) -> ModelContract:
    p = cfg.pipeline
    hist = lambda name, dtype, doc: TensorSpec(name, dtype, ("events",), doc)  # noqa: E731
    return ModelContract(
        RECOMMEND,
        inputs=(
            hist("history_items", "INT64", "item ids, oldest first; empty = cold start"),
            hist("history_actions", "INT64", "action per event: 0 view, 1 click, 2 like, 3 purchase"),
            hist("history_timestamps", "FP64", "unix seconds per event, non-decreasing (FP64 so NaN is caught, not cast)"),
            hist("history_devices", "INT64", "device per event"),
            TensorSpec("user_id", "STRING", (1,), "key of the per-user encoder cache; absent = no caching", optional=True),
            TensorSpec("segment", "INT64", (1,), "user segment (default 0)", optional=True),
            TensorSpec("ctx_device", "INT64", (1,), "device of this request (default 0)", optional=True),
            TensorSpec("request_time", "FP64", (1,), "unix seconds of this request (default: last event + 60 s)", optional=True),
            TensorSpec(
                "excluded_items",
                "INT64",
                ("excluded",),
                "items never to return (seen or blocked); masked inside beam search",
                optional=True,
            ),
        ),
        outputs=(
            TensorSpec("items", "INT64", ("top_k",), "recommended item ids, best first (top_k of them)"),
            TensorSpec("scores", "FP32", ("top_k",), "ranker score of each item"),
            # (1, d): a batch of one, so it feeds ad_ctr (dynamic batching) inside the feed_candidates ensemble
            TensorSpec(
                "user_vector",
                "FP32",
                (1, cfg.encoder.d_model),
                "the encoder's user vector (ANN query) of this request; only when requested",
            ),
        ),
        caps={"events": p.max_history_events, "excluded": p.max_excluded_items, "top_k": p.prerank_keep},
        backend="python",
        # the newest two serve: the feed's canary split sends a share of users to the newest and
        # the rest to the previous one (each pins its own graph versions, which keep two as well)
        versions_kept=2,
        instances=RECOMMEND_INSTANCES,
        max_queue_size=cfg.serving.max_queue_size,
        queue_timeout_us=cfg.serving.queue_timeout_ms * 1000,
        parameters={
            "beam_width": f"int or 'w0,w1,w2' per semantic-ID level (default {','.join(map(str, p.beam_widths))}, cap {p.max_beam_width})",
            "ann_candidates": f"Milvus neighbours merged with the beams (default {p.ann_candidates}, cap max_candidates)",
            "max_candidates": f"candidates before pre-rank (default and cap {p.max_candidates}, at least {p.prerank_keep})",
            "top_k": f"items returned (default {p.final_k}, cap {p.prerank_keep})",
            "excluded_items": "comma-separated item ids, added to the excluded_items input",
        },
        doc="The whole request: encoder (cached per user) -> constrained beam search -> Milvus ANN -> pre-rank -> ranker.",
    )


def ad_ctr_contract(cfg: Config) -> ModelContract:
    from genrec.ad_ctr import AD_FEATURES

    return ModelContract(
        AD_CTR,
        inputs=(
            TensorSpec("user_vector", "FP32", (cfg.encoder.d_model,), "the request's user vector (recommend's user_vector output)"),
            TensorSpec("ad_features", "FP32", ("ads", len(AD_FEATURES)), "one row per eligible ad, columns genrec.ad_ctr.AD_FEATURES"),
        ),
        outputs=(TensorSpec("pctr", "FP32", ("ads",), "calibrated click probability of each ad"),),
        max_batch_size=AD_CTR_MAX_BATCH,
        caps={"ads": cfg.ads.max_candidates},
        # requests merge only when their ads counts are equal (Triton batches equal shapes); a
        # short wait is all a feed request can spare
        preferred_batch_sizes=(4, 8),
        max_queue_delay_us=200,
        doc="pCTR of a request's eligible ads for its user vector; requests are batched dynamically.",
    )


def feed_candidates_contract(cfg: Config) -> ModelContract:
    """The feed's one round trip: ``recommend`` then ``ad_ctr`` on its user vector, inside Triton.

    ``recommend`` is not batched and ``ad_ctr`` is: recommend emits ``user_vector`` as (1, d), which
    ad_ctr reads as a batch of one, and the ensemble takes ``ad_features`` as (1, ads, F) and
    returns ``pctr`` as (1, ads). Request parameters (top_k, beam_width, ...) reach recommend.
    """
    rec, ctr = recommend_contract(cfg), ad_ctr_contract(cfg)
    ads = ctr.inputs[1]
    user = next(t for t in rec.outputs if t.name == "user_vector")
    return ModelContract(
        FEED_CANDIDATES,
        inputs=(*rec.inputs, TensorSpec(ads.name, ads.dtype, (1, *ads.dims), f"(1, ads, F): {ads.doc}")),
        outputs=(
            *(t for t in rec.outputs if t.name != user.name),
            TensorSpec("pctr", "FP32", (1, "ads"), "(1, ads): pCTR of each row of ad_features"),
        ),
        caps={**rec.caps, **ctr.caps},
        parameters=rec.parameters,
        versions_kept=1,
        steps=(
            EnsembleStep(RECOMMEND, {t.name: t.name for t in rec.inputs}, {t.name: t.name for t in rec.outputs}),
            EnsembleStep(AD_CTR, {t.name: t.name for t in ctr.inputs}, {"pctr": "pctr"}),
        ),
        doc="One round trip per feed: recommend (items, scores, user_vector) -> ad_ctr(user_vector, ad_features) -> pctr.",
    )


def all_contracts(cfg: Config) -> list[ModelContract]:
    """The ONNX graphs (published from a trained run); ``recommend`` pins one version of each."""
    return [encoder_contract(cfg), decoder_cross_kv_contract(cfg), decoder_step_contract(cfg), ranker_contract(cfg)]


def pinnable_contracts(cfg: Config) -> list[ModelContract]:
    """Every graph a ``recommend`` version may pin: ``all_contracts`` and ``target_prerank``, which
    only runs trained with the target-aware pre-ranker publish (a version without it pre-ranks by
    "dot"). Its config.pbtxt is written at its first publish, not committed: a repository folder
    with a config and no version would keep a strict-readiness server from being ready."""
    return [*all_contracts(cfg), target_prerank_contract(cfg)]
