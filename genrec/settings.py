"""Typed settings: every size, cap and default of the project lives here.

Named configurations (`tiny`, `small`, `full`) are built by `named_config`. Any field can be
overridden from the environment as ``GENREC_<SECTION>__<FIELD>`` (for example
``GENREC_ENCODER__N_LAYERS=4``), or with ``with_overrides`` from code.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from typing import Any

ENV_PREFIX = "GENREC_"
DATA_PRESETS = ("default", "realistic")
# pre-rank of the ~1000 candidates to prerank_keep: "dot" = generation log-prob + w x (user .
# item), w fitted by genrec-train; "target_attention" = genrec.models.target_prerank (each
# candidate attends to the user's cached encoder memory; bench/results/prerank_compare.json)
PRERANKERS = ("dot", "target_attention")


@dataclass(frozen=True)
class DataConfig:
    n_items: int = 20_000
    n_users: int = 5_000
    n_categories: int = 50
    n_authors: int = 2_000
    n_text_tokens: int = 1_000
    text_tokens_per_item: int = 8
    n_segments: int = 8  # user segments (a coarse user feature, the user token)
    n_devices: int = 3  # context token: the device a request comes from
    history_median: float = 40.0  # events per user, log-normal
    history_min: int = 6
    history_max: int = 400
    zipf_exponent: float = 1.0
    ad_fraction: float = 0.08
    product_fraction: float = 0.07
    p_successor: float = 0.35  # next event is the item's successor ("what follows what")
    p_category_transition: float = 0.25  # next event is from the next category of the chain
    seed: int = 0
    # "default": the generator above; "realistic": shaped like rating data (each item at most
    # once per user, heavy-tailed activity, bursts of equal timestamps, ratings 1-5 -> actions)
    preset: str = "default"
    heavy_users: int = 0  # users given heavy_min_events..heavy_max_events events (memory tests)
    heavy_min_events: int = 3_000
    heavy_max_events: int = 4_096
    rating_history_sigma: float = 1.1  # realistic preset: log-normal spread of events per user
    rating_history_max: int = 3_000  # realistic preset: the heaviest users
    rating_burst: float = 0.6  # realistic preset: chance a rating shares the previous one's timestamp

    def __post_init__(self) -> None:
        if self.preset not in DATA_PRESETS:
            raise ValueError(f"data.preset={self.preset!r}: expected one of {', '.join(map(repr, DATA_PRESETS))}")


@dataclass(frozen=True)
class SemanticIdConfig:
    codebook_sizes: tuple[int, int, int] = (64, 64, 64)
    latent_dim: int = 32
    hidden_dim: int = 128
    content_dim: int = 32  # dimension of the content (what-an-item-is) embedding
    collab_dim: int = 16  # dimension of the co-occurrence (collaborative) part; 0 disables it
    epochs: int = 60
    batch_size: int = 2048
    lr: float = 3e-3
    commitment: float = 0.25
    dead_code_every: int = 5  # epochs between dead-code resets


@dataclass(frozen=True)
class EncoderConfig:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.1
    pos_buckets: int = 16  # log2 buckets of relative position
    time_buckets: int = 24  # log2 buckets of relative time in minutes
    use_item_id_embedding: bool = True  # collaborative signal on top of content + semantic ID
    # History compression: the most recent `recent_tokens` tokens (block aligned) stay exact,
    # older blocks of `block_tokens` tokens become one mean slot each, at most `slots` of them,
    # and everything older is folded into one running summary slot.
    compression: bool = True
    recent_tokens: int = 64
    block_tokens: int = 16
    slots: int = 16


@dataclass(frozen=True)
class DecoderConfig:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    n_experts: int = 8
    top_k: int = 2
    expert_hidden: int = 128
    dropout: float = 0.1
    load_balance_weight: float = 0.01


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30  # at most: early stopping (patience) decides; small stopped at a cap of 8 still improving
    batch_size: int = 256
    lr: float = 2e-3
    max_train_events: int = 64  # history events per training sample (latest ones)
    cuts_per_user: int = 6  # training samples drawn per user per epoch
    retrieval_weight: float = 1.0
    # next-item loss at earlier positions (HSTU/SASRec-style): the encoder's output at each event's
    # ACTION token predicts the next event's item, on up to next_item_positions positions drawn per
    # batch (a sample otherwise teaches only its last target; 0 weight: off)
    next_item_weight: float = 1.0
    next_item_positions: int = 2_048
    sasrec_epochs: int = 20
    sasrec_patience: int = 3  # SASRec's validation recall is noisier than our validation loss
    sasrec_validation_users: int = 5_000
    ranker_users: int = 2_000
    ranker_rounds: int = 200
    seed: int = 0
    threads: int = 2
    token_budget: int = 65_536  # tokens per training batch (batch x longest sample), whatever the data
    patience: int = 2  # epochs without a better validation score before training stops
    validation_users: int = 1_000  # validation targets scored after each epoch (early stopping)
    # batches per generative epoch at most (0 = every batch): a run whose cost, not its quality,
    # is the point (bench/catalogue_scale.py trains 1M-item catalogues with it)
    max_steps: int = 0
    # the target-aware pre-ranker (genrec.models.target_prerank), fitted on the cascade's
    # candidates of the ranker users (epochs: with pipeline.prerank "target_attention", at most this many, picked on held-out folds)
    prerank_epochs: int = 12
    prerank_lr: float = 5e-3
    prerank_batch_users: int = 64
    prerank_random_negatives: int = 32  # per list, besides the target and the dot pre-rank's best prerank_keep
    # item-to-item transitions (genrec.ensemble.transitions), counted on training events: pairs of
    # one user's events at most follow_window apart (ties in time come in no order), follow_top
    # followers kept per item (the table's size: n_items x follow_top at most)
    follow_window: int = 4
    follow_top: int = 20


@dataclass(frozen=True)
class PipelineConfig:
    """Request-path sizes. Caps are the documented limits a request is validated against."""

    beam_widths: tuple[int, int, int] = (32, 128, 512)
    max_beam_width: int = 2_048
    ann_candidates: int = 500
    max_candidates: int = 1_000
    prerank_keep: int = 100
    final_k: int = 10
    max_history_events: int = 4_096
    max_excluded_items: int = 1_000
    max_user_id_bytes: int = 256  # the encoder-state cache key, in UTF-8 bytes
    max_timestamp: int = 4_102_444_800  # 2100-01-01: later (or negative) times are a unit mistake
    # Offline batches (evaluation, ranker fit, reference): at most `token_budget` encoder tokens
    # per batch (requests x longest), and histories over `dense_max_events` are encoded block by
    # block through the incremental encoder (same outputs) instead of padded dense attention.
    token_budget: int = 16_384
    dense_max_events: int = 256
    prerank: str = "dot"  # one of PRERANKERS; a version without the target_prerank graph serves "dot"
    prerank_microbatch: int = 256  # candidates per target_prerank call (each sees the history, not the others)
    # the transitions source (genrec.ensemble.transitions): items that followed the user's latest
    # events in training traffic join the candidates (at most follow_candidates, within
    # max_candidates), and the follow_keep with the most votes are sure of a pre-rank slot
    follow_candidates: int = 100
    follow_keep: int = 20

    def __post_init__(self) -> None:
        if not 0 <= self.follow_keep <= self.prerank_keep or self.follow_candidates < 0:
            raise ValueError(
                f"pipeline.follow_keep={self.follow_keep}, follow_candidates={self.follow_candidates}: expected 0 <= follow_keep <= prerank_keep and follow_candidates >= 0"
            )
        if self.prerank not in PRERANKERS:
            raise ValueError(f"pipeline.prerank={self.prerank!r}: expected one of {', '.join(map(repr, PRERANKERS))}")
        if self.prerank_microbatch < 1:
            raise ValueError(f"pipeline.prerank_microbatch={self.prerank_microbatch}: at least 1")


class Execution(str, Enum):
    """Where the ONNX graphs of ``recommend`` run (bench/results/bls_cost.json measures both)."""

    IN_PROCESS = "in_process"  # onnxruntime sessions inside the recommend model
    BLS = "bls"  # each graph call is a BLS request to the served model


class StateStore(str, Enum):
    """Where users' encoder states live."""

    MEMORY = "memory"  # an LRU per model instance, capped by encoder_cache_bytes
    REDIS = "redis"  # shared by every instance and server; capped by Redis's maxmemory


class AnnBackend(str, Enum):
    MILVUS = "milvus"  # a milvus-lite file per model instance, or a Milvus server at milvus_uri
    EXACT = "exact"  # brute force in numpy (tests, tiny catalogues)


class AnnIndexType(str, Enum):
    """The Milvus index over the item vectors (bench/results/catalogue_scale.json compares them)."""

    FLAT = "FLAT"  # exact: the served top-k equals the reference's brute force
    IVF_FLAT = "IVF_FLAT"  # k-means cells (ann_nlist), ann_nprobe of them searched per query
    HNSW = "HNSW"  # graph index (ann_hnsw_*); a Milvus server only: milvus-lite 2.5 refuses it


def _enum_field(cls: type[Enum], name: str, value: object) -> Enum:
    """A mode given as its string value (environment, JSON) or as the enum, checked once here."""
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"serving.{name}={value!r}: expected one of {choices}") from None


@dataclass(frozen=True)
class ServingConfig:
    """How the Triton ``recommend`` model runs (``GENREC_SERVING__<FIELD>`` at server start)."""

    execution: Execution = Execution.IN_PROCESS
    ort_threads: int = 1  # intra-op threads per in-process session
    kv_cache: bool = True  # False: the uncached decoder (the benchmark baseline)
    # encoder blocks per graph call (history compression on): 0 = the most whose tokens stay
    # exact for each other (recent_tokens // block_tokens + 1), same outputs with fewer calls; 1 =
    # one block per call (the path before; bench/results/cold_start.json compares them)
    encoder_blocks_per_call: int = 0
    encoder_cache_bytes: int = 256 * 2**20  # per model instance; ~107 KB per user in `small`
    state_store: StateStore = StateStore.MEMORY
    redis_url: str = "redis://localhost:6379/0"
    state_ttl_s: int = 7 * 86_400
    state_store_timeout_s: float = 0.05  # a slower Redis is served as a miss, not waited for
    ann: AnnBackend = AnnBackend.MILVUS
    milvus_uri: str = ""  # "" = a milvus-lite file per model instance under state_dir
    milvus_token: str = ""  # for a Milvus server that needs one (GENREC_SERVING__MILVUS_TOKEN)
    milvus_collection: str = "genrec_items"
    # the index type and its parameters (part of the collection's fingerprint: a change rebuilds
    # it). FLAT is exact; bench/results/catalogue_scale.json weighs IVF_FLAT against it by size
    ann_index: AnnIndexType = AnnIndexType.FLAT
    ann_nlist: int = 0  # IVF_FLAT cells; 0 = 4 x sqrt(items), at least 16
    ann_nprobe: int = 32  # IVF_FLAT cells searched per query
    ann_hnsw_m: int = 16  # HNSW links per node
    ann_hnsw_ef_construction: int = 200
    ann_hnsw_ef: int = 0  # HNSW search breadth; 0 = 2 x k (never under k)
    # search the ANN index on a worker thread while the beam search runs: the search needs only the
    # user vector, and Milvus runs in its own process, so the two use both cores (at 1M items the
    # search alone is ~27 ms); False: one after the other (bench/catalogue_scale.py compares them)
    ann_concurrent: bool = True
    state_dir: str = ""  # "" = a fresh temporary directory
    # recommend's opt-in bounded queue (config.pbtxt, written at publish; runtime/README.md "The
    # bounded queue"): > 0 refuses requests waiting beyond this many with UNAVAILABLE, at the cost
    # of Triton 2.51's ~500 ms stalls (bench/results/queue_policy.json); 0: callers' deadlines bound the wait
    max_queue_size: int = 0
    queue_timeout_ms: int = 500  # with max_queue_size > 0: a request still queued after this is refused (its own `timeout` overrides it)
    # genrec-triton's watchdog: a canary on recommend and the stub processes, checked every interval
    watchdog: bool = True
    watchdog_interval_s: float = 1.0
    watchdog_canary_timeout_s: float = 2.0
    watchdog_failures: int = 3  # failed canaries in a row (no progress) before unload + load
    watchdog_unload_timeout_s: float = 15.0  # an unload still draining a dead instance's queue after this: restart
    exit_timeout_s: int = 5  # tritonserver --exit-timeout-secs; what is left after it is killed
    # genrec-triton restarts a crashed tritonserver (signal or non-zero exit) this many times in a window
    server_restarts: int = 3
    server_restart_window_s: float = 600.0
    # recommend's custom metrics reach Triton's metrics port from a background thread at this
    # interval (ensemble/serving_metrics.py: sent inline they slowed a lightly loaded server);
    # 0 = inline, on the request path (bench/profile_recommend.py compares the two)
    metrics_flush_s: float = 1.0

    def __post_init__(self) -> None:
        for name, cls in (("execution", Execution), ("state_store", StateStore), ("ann", AnnBackend), ("ann_index", AnnIndexType)):
            object.__setattr__(self, name, _enum_field(cls, name, getattr(self, name)))
        for name in ("ann_nlist", "ann_nprobe", "ann_hnsw_m", "ann_hnsw_ef_construction", "ann_hnsw_ef"):
            if getattr(self, name) < (0 if name in ("ann_nlist", "ann_hnsw_ef") else 1):
                raise ValueError(f"serving.{name}={getattr(self, name)}: expected a positive count")


@dataclass(frozen=True)
class FeedConfig:
    """The BentoML feed service (``GENREC_FEED__<FIELD>``); every cap is documented in feed/README.md."""

    triton_grpc_url: str = "localhost:8001"
    redis_url: str = "redis://localhost:6379/0"
    run_dir: str = ""  # "" = the latest run under artifacts/runs
    model_repository: str = "model_repository"  # item vectors of the served recommend version
    triton_timeout_s: float = 2.0  # deadline of one recommend call; past it the feed falls back
    redis_timeout_s: float = 0.25  # socket timeout of one Redis call
    max_count: int = 50
    default_count: int = 10
    cursor_ttl_s: int = 1_800  # a feed session (its cursor and served pages) lives 30 min
    max_session_items: int = 500  # items one feed session can serve (the cursor's seen set)
    max_body_bytes: int = 65_536
    max_events_per_batch: int = 100
    event_token_ttl_s: int = 7 * 86_400
    idempotency_ttl_s: int = 86_400
    max_relations: int = 1_000  # likes and negatives kept per user (newest)
    max_impressions: int = 1_000  # impressions kept per user (newest)
    product_every: int = 4  # at most one product in every `product_every` positions
    candidates: int = 100  # top_k asked of recommend (the ranker's 100)
    signing_key: str = "genrec-dev-signing-key"  # the dev default logs a warning; set it in production
    max_concurrency: int = 32  # BentoML traffic limit: beyond it, 429
    request_timeout_s: float = 5.0  # BentoML traffic limit: beyond it, 504
    # canary: this share of users (a stable hash) is served by the newest ready `recommend`
    # version, the rest by the one before it (Triton keeps two loaded); 0 is the rollback
    canary_share: float = 1.0
    # how often the ready recommend versions are read from Triton; also how long a just-loaded
    # version is reached by requests for the newest ("") before the router holds it for its warm-up
    versions_refresh_s: float = 2.0
    # deploy warm-up (feed/warmup.py): a newly ready recommend version is held out of routing
    # while the encoder states of the `warm_users` most recently active users are built on it
    # from their stored histories, at most `warm_rate_per_s` calls a second, `warm_concurrency`
    # at a time, for at most `warm_budget_s`; then the canary split applies. 0 users: no hold
    warm_users: int = 600  # = rate x budget; and under what one instance's encoder cache holds (serving.encoder_cache_bytes)
    warm_rate_per_s: float = 5.0  # a cold encode is a whole recommend call: this bounds the CPU taken from serving
    warm_concurrency: int = 1
    warm_budget_s: float = 120.0  # past it the version is released, warmed or not
    # recently active users: every user whose state the feed reads, in sorted sets by last-seen
    # time (feed:active:{a<k>}, ACTIVE_SHARDS keys), trimmed to about this many users in all
    active_users_cap: int = 20_000
    port: int = 3000

    def __post_init__(self) -> None:
        # caps: a warm-up is a background job of the feed process, never a flood on Triton
        if not 0 <= self.warm_users <= 100_000:
            raise ValueError(f"feed.warm_users={self.warm_users}: expected 0..100000")
        if not 0 < self.warm_rate_per_s <= 100:
            raise ValueError(f"feed.warm_rate_per_s={self.warm_rate_per_s}: expected (0, 100]")
        if not 1 <= self.warm_concurrency <= 4:
            raise ValueError(f"feed.warm_concurrency={self.warm_concurrency}: expected 1..4")
        if not 0 <= self.warm_budget_s <= 3_600:
            raise ValueError(f"feed.warm_budget_s={self.warm_budget_s}: expected 0..3600")
        if not 0 <= self.active_users_cap <= 10_000_000:
            raise ValueError(f"feed.active_users_cap={self.active_users_cap}: expected 0..10000000")


@dataclass(frozen=True)
class AdsConfig:
    """Ads in the feed (``GENREC_ADS__<FIELD>``): auction, density, caps, budgets, pacing,
    experiments. The rules are documented in ads/README.md."""

    enabled: bool = True
    # auction: eCPM = pCTR x bid (CPC); the GSP price per click is the next eCPM / own pCTR,
    # clamped to [floor_cpc, own bid]; an ad whose bid is under the floor is not shown
    floor_cpc: float = 0.05  # reserve price per click, currency units
    min_ecpm: float = 0.002  # relevance threshold: a weaker ad never displaces organic items
    max_candidates: int = 256  # eligible ads scored per feed request (pCTR batch cap)
    # score the ads in the same Triton round trip as the organic candidates (the feed_candidates
    # ensemble); false: recommend, then ad_ctr (bench/results/ad_round_trip.json compares them)
    ensemble: bool = True
    # density (session positions, 0-based): at most `first_screen_max_ads` ads in the first
    # `first_screen` positions, then at most 1 ad in every `ad_every` positions; never two ads
    # adjacent, never an ad next to a product
    first_screen: int = 5
    first_screen_max_ads: int = 1
    ad_every: int = 5
    # state in Redis (key schema in ads/README.md); a day is a UTC day
    redis_url: str = ""  # "" = the feed's redis_url
    key_prefix: str = "ads"
    # pacing: a minute-level throttle per campaign toward the day's target spend curve
    pacing: bool = True
    pacing_interval_s: int = 60
    pacing_horizon_s: int = 900  # a gap to the target curve is closed over this much time
    pacing_smoothing_s: int = 600  # time constant of the demand estimate (ads/pacing.py)
    pacing_p_min: float = 0.001  # floor of the serve probability of a campaign ahead of its curve
    state_ttl_s: int = 172_800  # caps, spend, charged tokens, served impressions: 2 days
    served_cap: int = 200  # served-ad impression records kept per user
    # each feed process reads a campaign's spend and throttle at most this often (they only
    # filter eligibility: the charge script enforces the budget atomically); 0 = every request
    campaign_cache_s: float = 1.0
    # a click is billed only within this time of the serve (the attribution window); later clicks
    # are recorded, not charged. Below state_ttl_s by a day, so a click's charged-token set (kept
    # for state_ttl_s from the serve day) still exists whenever the click can be charged.
    click_window_s: int = 86_400
    # experiments: a stable hash of the user picks one of `ab_buckets` ad-load policies
    # (the `ad_every` of each bucket); a request may name its bucket
    ab_buckets: tuple[int, ...] = (5, 8)
    # pCTR model (genrec.ad_ctr, trained by genrec-train on genrec.data.ad_impressions): impression
    # requests per user (the first `ctr_warmup_requests` form the ads' prior-CTR log), ads per request
    ctr_requests_per_user: int = 12
    ctr_warmup_requests: int = 2
    ctr_slots: int = 6
    ctr_hidden: int = 32
    ctr_epochs: int = 40
    ctr_patience: int = 4

    def __post_init__(self) -> None:
        if self.served_cap < 1:
            raise ValueError(f"ads.served_cap={self.served_cap}: at least 1 (the served-impression list is capped by it)")
        if self.click_window_s + 86_400 > self.state_ttl_s:
            raise ValueError(
                f"ads.click_window_s={self.click_window_s} must stay a day under ads.state_ttl_s={self.state_ttl_s}: "
                "a click charged after its token set expired could be charged twice"
            )


@dataclass(frozen=True)
class Config:
    name: str = "small"
    data: DataConfig = field(default_factory=DataConfig)
    semantic_id: SemanticIdConfig = field(default_factory=SemanticIdConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    feed: FeedConfig = field(default_factory=FeedConfig)
    ads: AdsConfig = field(default_factory=AdsConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _tiny() -> Config:
    return Config(
        name="tiny",
        data=DataConfig(
            n_items=2_000,
            n_users=600,
            n_categories=20,
            n_authors=200,
            n_text_tokens=200,
            history_median=20.0,
            history_max=150,
        ),
        semantic_id=SemanticIdConfig(codebook_sizes=(32, 32, 32), latent_dim=16, hidden_dim=64, epochs=100),
        encoder=EncoderConfig(d_model=32, n_heads=2, recent_tokens=32, block_tokens=8, slots=8),
        decoder=DecoderConfig(d_model=32, n_layers=1, n_experts=4, top_k=2, expert_hidden=64),
        train=TrainConfig(epochs=6, max_train_events=60, sasrec_epochs=8, ranker_users=400, ranker_rounds=60),
        pipeline=PipelineConfig(beam_widths=(16, 48, 128), ann_candidates=100, max_candidates=300),
    )


def _small() -> Config:
    return Config(name="small")


def _full() -> Config:
    # The design's production sizes. It must build and be counted; it is not trained here.
    return Config(
        name="full",
        data=DataConfig(n_items=1_000_000, n_users=200_000, n_categories=500, n_authors=50_000),
        semantic_id=SemanticIdConfig(codebook_sizes=(1024, 4096, 16384), latent_dim=64, hidden_dim=512, content_dim=128, collab_dim=64),
        encoder=EncoderConfig(d_model=256, n_layers=12, n_heads=8, recent_tokens=256, block_tokens=32, slots=64),
        decoder=DecoderConfig(d_model=256, n_layers=4, n_heads=8, n_experts=16, top_k=4, expert_hidden=1024),
        pipeline=PipelineConfig(beam_widths=(64, 256, 1024)),
    )


NAMED_CONFIGS = {"tiny": _tiny, "small": _small, "full": _full}


def _coerce(value: str, current: Any) -> Any:
    if isinstance(current, bool):
        if value.lower() in {"1", "true", "yes", "on"}:
            return True
        if value.lower() in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"not a boolean: {value!r}")
    if isinstance(current, Enum):
        return value  # checked, with the list of choices, by the section's __post_init__
    if isinstance(current, tuple):
        return tuple(type(current[0])(v) for v in value.split(","))
    return type(current)(value)


def with_overrides(cfg: Config, overrides: Mapping[str, str]) -> Config:
    """Apply ``{"encoder.n_layers": "4"}``-style overrides, typed by the field's current value."""
    sections: dict[str, dict[str, Any]] = {}
    for key, raw in overrides.items():
        section, _, name = key.partition(".")
        sub = getattr(cfg, section, None)
        if sub is None or not dataclasses.is_dataclass(sub) or name not in {f.name for f in fields(sub)}:
            raise KeyError(f"unknown setting {key!r}")
        sections.setdefault(section, {})[name] = _coerce(raw, getattr(sub, name))
    return replace(cfg, **{s: replace(getattr(cfg, s), **v) for s, v in sections.items()})


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    out = {}
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX) and "__" in key:
            section, _, name = key[len(ENV_PREFIX) :].partition("__")
            out[f"{section.lower()}.{name.lower()}"] = value
    return out


def named_config(name: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The named configuration (default from ``GENREC_CONFIG``, else ``small``) plus env overrides."""
    environ = os.environ if environ is None else environ
    name = name or environ.get(ENV_PREFIX + "CONFIG", "small")
    if name not in NAMED_CONFIGS:
        raise KeyError(f"unknown config {name!r}; choose one of {sorted(NAMED_CONFIGS)}")
    return with_overrides(NAMED_CONFIGS[name](), env_overrides(environ))


def deployed(cfg: Config, environ: Mapping[str, str] | None = None) -> Config:
    """A trained run's ``cfg`` with this deployment's serving section: the defaults plus
    ``GENREC_SERVING__*`` now, not the values saved when the run was trained. Serving settings are
    deployment knobs (queue bounds, state store, ANN index; the recommend stub reads them from its
    environment too): an old run must not bring back an old default (the bounded queue)."""
    serving = {k: v for k, v in env_overrides(environ).items() if k.startswith("serving.")}
    return with_overrides(replace(cfg, serving=ServingConfig()), serving)


def config_from_dict(d: Mapping[str, Any]) -> Config:
    """Rebuild a Config saved with ``to_dict`` (tuples come back from JSON as lists)."""

    def build(cls: type, values: Mapping[str, Any]) -> Any:
        kwargs = {}
        for f in fields(cls):
            if f.name in values:
                v = values[f.name]
                kwargs[f.name] = tuple(v) if isinstance(v, list) else v
        return cls(**kwargs)

    return Config(
        name=d["name"],
        data=build(DataConfig, d["data"]),
        semantic_id=build(SemanticIdConfig, d["semantic_id"]),
        encoder=build(EncoderConfig, d["encoder"]),
        decoder=build(DecoderConfig, d["decoder"]),
        train=build(TrainConfig, d["train"]),
        pipeline=build(PipelineConfig, d["pipeline"]),
        serving=build(ServingConfig, d.get("serving", {})),
        feed=build(FeedConfig, d.get("feed", {})),
        ads=build(AdsConfig, d.get("ads", {})),
    )
