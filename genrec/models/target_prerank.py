"""Target-aware pre-ranker in the spirit of M-FALCON: every candidate attends to the user's
cached encoder memory, never to the other candidates.

The serving path already holds, per request, the encoder memory the decoder cross-attends to:
the cached per-user state's outputs (exact recent tokens, one mean slot per older block, the
running summary; ``genrec.ensemble.encoder_state``) plus this request's CTX token, each entry
with the log of the tokens it stands for. The pre-ranker reuses that memory as its context:
K/V are one projection of it per request (M entries, M <= recent + block + slots + 2), and each
candidate is one extra query over them. There is no candidate-candidate attention, so a
candidate's score does not depend on which other candidates share its call: the candidates run
in microbatches (``pipeline.prerank_microbatch``) with the same scores as in one call.

    q_c   = W_q LN(item vector of c)                      (one query per candidate)
    K, V  = W_k LN(memory), W_v LN(memory)                (per request, shared by every candidate)
    o_c   = W_o softmax(q_c K^T / sqrt(d_h) + log w) V    (per head; log w: compressed slots)
    score = MLP([o_c, e_c, o_c * e_c, standardised features]) + a . features

``features`` are the cascade's cheap per-candidate signals (``genrec.ensemble.cascade
.PRERANK_FEATURES``: generation log-prob, beam rank, ANN similarity, source flags, popularity).
The linear term starts as the dot pre-rank (log-prob + w x similarity, w as fitted) and the
MLP's last layer at zero, so an untrained model ranks exactly like the dot pre-rank.

Trained after the main models (``genrec.train.fit_cascade``) on the cascade's candidates of the
validation targets: the target is the positive, the other candidates of its list the negatives,
listwise softmax. The number of epochs is picked on two held-out folds.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_FILE = "target_prerank.pt"
SPEC_FILE = "target_prerank.json"


@dataclass(frozen=True)
class PrerankSpec:
    d_item: int
    d_memory: int
    n_heads: int
    n_features: int
    hidden: int
    logprob_index: int  # the feature the linear term starts at 1 (generation log-prob)
    sim_index: int  # ... and at the dot pre-rank's weight (ANN similarity)


def spec_for(d_model: int, n_heads: int) -> PrerankSpec:
    """The pre-ranker ``genrec-train`` builds for an encoder of ``d_model`` (items, memory and
    the MLP all that wide) over the cascade's pre-rank features."""
    from genrec.ensemble.cascade import PRERANK_FEATURES

    return PrerankSpec(
        d_item=d_model,
        d_memory=d_model,
        n_heads=n_heads,
        n_features=len(PRERANK_FEATURES),
        hidden=d_model,
        logprob_index=PRERANK_FEATURES.index("gen_logprob"),
        sim_index=PRERANK_FEATURES.index("ann_sim"),
    )


class TargetPrerank(nn.Module):
    feat_mean: torch.Tensor
    feat_std: torch.Tensor

    def __init__(self, spec: PrerankSpec, dot_weight: float = 1.0) -> None:
        super().__init__()
        self.spec = spec
        d, h = spec.d_item, spec.n_heads
        if d % h:
            raise ValueError(f"d_item={d} is not a multiple of n_heads={h}")
        self.h, self.dh = h, d // h
        self.ln_mem = nn.LayerNorm(spec.d_memory)
        self.kv = nn.Linear(spec.d_memory, 2 * d)
        self.ln_q = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.item = nn.Linear(d, d)
        self.head = nn.Sequential(nn.Linear(3 * d + spec.n_features, spec.hidden), nn.SiLU(), nn.Linear(spec.hidden, 1))
        self.linear = nn.Linear(spec.n_features, 1)
        self.register_buffer("feat_mean", torch.zeros(spec.n_features))
        self.register_buffer("feat_std", torch.ones(spec.n_features))
        with torch.no_grad():  # start as the dot pre-rank: log-prob + w x similarity
            last = self.head[2]
            assert isinstance(last, nn.Linear)
            last.weight.zero_()
            last.bias.zero_()
            self.linear.weight.zero_()
            self.linear.bias.zero_()
            self.linear.weight[0, spec.logprob_index] = 1.0
            self.linear.weight[0, spec.sim_index] = dot_weight

    def context(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V (R, H, M, dh) of the memory: once per request, shared by all its candidates."""
        r, m, _ = memory.shape
        k, v = self.kv(self.ln_mem(memory)).chunk(2, dim=-1)
        return k.view(r, m, self.h, self.dh).transpose(1, 2), v.view(r, m, self.h, self.dh).transpose(1, 2)

    def forward(self, memory: torch.Tensor, memory_logw: torch.Tensor, item_vectors: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """memory (R, M, d_memory), memory_logw (R, M) (-inf = absent entry), item_vectors (R, N, d),
        features (R, N, F) -> scores (R, N). Candidate n's score depends on its own row only."""
        k, v = self.context(memory)
        r, n, _ = item_vectors.shape
        q = self.q(self.ln_q(item_vectors)).view(r, n, self.h, self.dh).transpose(1, 2)  # (R, H, N, dh)
        att = q @ k.transpose(-1, -2) / math.sqrt(self.dh) + memory_logw[:, None, None, :]
        o = (torch.softmax(att, dim=-1) @ v).transpose(1, 2).reshape(r, n, self.h * self.dh)
        o = self.out(o)
        e = self.item(item_vectors)
        z = torch.cat([o, e, o * e, (features - self.feat_mean) / self.feat_std], dim=-1)
        return self.head(z)[..., 0] + self.linear(features)[..., 0]

    def score_request(self, memory: np.ndarray, memory_logw: np.ndarray, item_vectors: np.ndarray, features: np.ndarray) -> np.ndarray:
        """One request's candidates (numpy in and out; the reference pipeline's call)."""
        t = torch.from_numpy
        with torch.no_grad():
            s = self(
                t(np.ascontiguousarray(memory, np.float32))[None],
                t(np.ascontiguousarray(memory_logw, np.float32))[None],
                t(np.ascontiguousarray(item_vectors, np.float32))[None],
                t(np.ascontiguousarray(features, np.float32))[None],
            )
        return s[0].numpy()

    def flops_per_candidate(self, memory_entries: int) -> int:
        """Multiply-adds x 2 for one candidate against ``memory_entries`` keys (the K/V
        projection of the memory, once per request, is not counted: ``flops_per_request``)."""
        d, f, hid = self.spec.d_item, self.spec.n_features, self.spec.hidden
        macs = 3 * d * d + 2 * memory_entries * d + (3 * d + f) * hid + hid + f
        return 2 * macs

    def flops_per_request(self, memory_entries: int, candidates: int) -> int:
        return 2 * memory_entries * self.spec.d_memory * 2 * self.spec.d_item + candidates * self.flops_per_candidate(memory_entries)


# ---- training ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrerankList:
    """One request's pre-rank problem: its encoder memory and its candidates."""

    memory: np.ndarray  # (M, d_memory) float32, absent entries already dropped
    memory_logw: np.ndarray  # (M,)
    items: np.ndarray  # (N,) candidate item ids
    features: np.ndarray  # (N, F) float32
    target: int  # index of the target among the candidates, -1 when it is not one


def _pad_batch(lists: list[PrerankList], item_vectors: np.ndarray) -> tuple[torch.Tensor, ...]:
    m = max(x.memory.shape[0] for x in lists)
    n = max(x.items.size for x in lists)
    r, dm, f = len(lists), lists[0].memory.shape[1], lists[0].features.shape[1]
    mem = np.zeros((r, m, dm), np.float32)
    logw = np.full((r, m), -np.inf, np.float32)
    items = np.zeros((r, n, item_vectors.shape[1]), np.float32)
    feats = np.zeros((r, n, f), np.float32)
    valid = np.zeros((r, n), bool)
    target = np.zeros(r, np.int64)
    for i, x in enumerate(lists):
        mem[i, : x.memory.shape[0]], logw[i, : x.memory.shape[0]] = x.memory, x.memory_logw
        items[i, : x.items.size] = item_vectors[x.items]
        feats[i, : x.items.size] = x.features
        valid[i, : x.items.size] = True
        target[i] = x.target
    t = torch.from_numpy
    return t(mem), t(logw), t(items), t(feats), t(valid), t(target)


def _scores(model: TargetPrerank, lists: list[PrerankList], item_vectors: np.ndarray, batch: int) -> list[np.ndarray]:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(lists), batch):
            chunk = lists[i : i + batch]
            mem, logw, items, feats, _, _ = _pad_batch(chunk, item_vectors)
            s = model(mem, logw, items, feats).numpy()
            out += [s[j, : x.items.size] for j, x in enumerate(chunk)]
    return out


def recall_at(scores: list[np.ndarray], lists: list[PrerankList], keep: int) -> float:
    """Share of lists whose target is among the ``keep`` best (ties to the lower index, as top_k)."""
    hits = [x.target >= 0 and x.target in np.argsort(-s, kind="stable")[:keep] for s, x in zip(scores, lists)]
    return float(np.mean(hits)) if hits else 0.0


def training_view(x: PrerankList, dot: np.ndarray, hard: int, random: int, rng: np.random.Generator) -> PrerankList:
    """The list a training step sees: the target, the ``hard`` best other candidates by the dot
    pre-rank (the ones the target must overtake to be kept) and ``random`` others. Scoring
    always covers every candidate; this only bounds a step's cost (~1000 candidates in `small`)."""
    others = np.flatnonzero(np.arange(x.items.size) != x.target)
    order = others[np.argsort(-dot[others], kind="stable")]
    rest = order[hard:]
    pick = np.concatenate([[x.target], order[:hard], rng.choice(rest, size=min(random, rest.size), replace=False)]).astype(np.int64)
    return PrerankList(x.memory, x.memory_logw, x.items[pick], x.features[pick], 0)


def _train_epochs(
    model: TargetPrerank,
    lists: list[PrerankList],
    item_vectors: np.ndarray,
    epochs: int,
    lr: float,
    batch: int,
    after_epoch: Callable[[int, TargetPrerank], None] | None = None,
) -> None:
    """``lists``: training views (target at 0). Listwise softmax: the target against the others."""
    if not lists or not epochs:
        return
    rng = np.random.default_rng(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    # length-sorted batches (little padding), visited in a random order each epoch
    order = sorted(range(len(lists)), key=lambda i: lists[i].items.size)
    batches = [_pad_batch([lists[i] for i in order[j : j + batch]], item_vectors) for j in range(0, len(order), batch)]
    for epoch in range(epochs):
        model.train()
        for bi in rng.permutation(len(batches)):
            mem, logw, items, feats, valid, target = batches[bi]
            s = model(mem, logw, items, feats).masked_fill(~valid, -1e9)
            loss = F.cross_entropy(s, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if after_epoch is not None:
            after_epoch(epoch + 1, model)


def build(spec: PrerankSpec, dot_weight: float, lists: list[PrerankList], seed: int) -> TargetPrerank:
    torch.manual_seed(seed)
    model = TargetPrerank(spec, dot_weight)
    feats = np.concatenate([x.features for x in lists]) if lists else np.zeros((1, spec.n_features), np.float32)
    with torch.no_grad():
        model.feat_mean.copy_(torch.from_numpy(feats.mean(axis=0).astype(np.float32)))
        model.feat_std.copy_(torch.from_numpy(np.maximum(feats.std(axis=0), 1e-3).astype(np.float32)))
    return model


@dataclass
class FitReport:
    epochs: int  # trained for the shipped model
    fold_recall: list[float]  # with folds: per epoch (0 = untrained = dot pre-rank), held-out recall@keep, mean over folds
    oof_recall: float | None  # with folds: the held-out-fold recall@keep at the kept epoch
    seconds: float
    lists: int
    lists_with_target: int

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def fit(
    lists: list[PrerankList],
    item_vectors: np.ndarray,
    spec: PrerankSpec,
    dot_weight: float,
    keep: int,
    epochs: int,
    lr: float,
    batch: int,
    seed: int,
    folds: int = 0,
    hard: int | None = None,
    random: int = 32,
) -> tuple[TargetPrerank, list[np.ndarray] | None, FitReport]:
    """The shipped model, trained on every list's training view (``training_view``: the target,
    the dot pre-rank's ``hard`` (default ``keep``) best others and ``random`` others).

    ``folds`` >= 2 (when the ranker is fitted behind this pre-ranker): the epoch count is the one
    best on held-out folds (at most ``epochs``), and every list's held-out-fold scores come back
    for the ranker's features (so the ranker sees pre-rank scores like the ones it gets when
    serving, not in-sample ones). Without folds: ``epochs`` epochs, no held-out scores (the
    cheap path every training run takes: seconds on `tiny`).

    Runs on one thread: its steps are small, and a second thread only adds synchronisation
    (measured: 12x slower with 2 threads on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(lists, item_vectors, spec, dot_weight, keep, epochs, lr, batch, seed, folds, keep if hard is None else hard, random)
    finally:
        torch.set_num_threads(threads)


def _fit(
    lists: list[PrerankList],
    item_vectors: np.ndarray,
    spec: PrerankSpec,
    dot_weight: float,
    keep: int,
    epochs: int,
    lr: float,
    batch: int,
    seed: int,
    folds: int,
    hard: int,
    random: int,
) -> tuple[TargetPrerank, list[np.ndarray] | None, FitReport]:
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    dot = [x.features[:, spec.logprob_index] + dot_weight * x.features[:, spec.sim_index] for x in lists]
    views = [training_view(x, d, hard, random, rng) if x.target >= 0 else None for x, d in zip(lists, dot)]
    n_target = sum(v is not None for v in views)
    curve: list[float] = []
    oof: list[np.ndarray] | None = None
    best = epochs
    if folds >= 2:
        fold_of = np.arange(len(lists)) % folds
        held_lists = [[x for x, f in zip(lists, fold_of) if f == k] for k in range(folds)]
        held_scores: list[list[list[np.ndarray]]] = []  # fold -> epoch -> the held-out lists' scores
        for k in range(folds):
            train_v = [v for v, f in zip(views, fold_of) if f != k and v is not None]
            model = build(spec, dot_weight, [x for x, f in zip(lists, fold_of) if f != k], seed + k)
            per_epoch = [_scores(model, held_lists[k], item_vectors, 4 * batch)]

            def record(
                _epoch: int, m: TargetPrerank, out: list[list[np.ndarray]] = per_epoch, held: list[PrerankList] = held_lists[k]
            ) -> None:
                out.append(_scores(m, held, item_vectors, 4 * batch))

            _train_epochs(model, train_v, item_vectors, epochs, lr, batch, record)
            held_scores.append(per_epoch)
        n_epochs = min(len(p) for p in held_scores)
        curve = [float(np.mean([recall_at(held_scores[k][e], held_lists[k], keep) for k in range(folds)])) for e in range(n_epochs)]
        best = max(range(n_epochs), key=lambda e: (round(curve[e], 6), -e))
        oof = [np.zeros(0)] * len(lists)
        pos = [0] * folds
        for i, f in enumerate(fold_of):
            oof[i] = held_scores[f][best][pos[f]]
            pos[f] += 1
    model = build(spec, dot_weight, lists, seed)
    _train_epochs(model, [v for v in views if v is not None], item_vectors, best, lr, batch)
    model.eval()
    report = FitReport(best, curve, curve[best] if curve else None, time.perf_counter() - t0, len(lists), n_target)
    return model, oof, report


# ---- files -----------------------------------------------------------------------------------
def save(model: TargetPrerank, directory: Path) -> None:
    torch.save(model.state_dict(), Path(directory) / WEIGHTS_FILE)
    (Path(directory) / SPEC_FILE).write_text(json.dumps(asdict(model.spec), indent=2))


def load(directory: Path) -> TargetPrerank | None:
    """The run's pre-ranker, or None for a run trained before it existed (it pre-ranks by "dot")."""
    directory = Path(directory)
    if not (directory / SPEC_FILE).exists():
        return None
    spec = PrerankSpec(**json.loads((directory / SPEC_FILE).read_text()))
    model = TargetPrerank(spec)
    model.load_state_dict(torch.load(directory / WEIGHTS_FILE, weights_only=True))
    return model.eval()
