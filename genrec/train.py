"""Train everything from data to checkpoints: semantic IDs, UGT encoder + MoE decoder, the
SASRec baseline, the pre-rank weight, the target-aware pre-ranker, the LightGBM ranker and the ads' pCTR network.

    genrec-train --config tiny                 # ~1 minute on 2 cores
    genrec-train --config small                # the default demo
    genrec-train --config small --movielens path/to/u.data
    genrec-train --refit-cascade artifacts/runs/tiny-001 --prerank target_attention   # cascade only

The run lands in ``artifacts/runs/<config>-<NNN>/`` (never overwritten); see ``genrec.bundle``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from genrec import ad_ctr
from genrec.artifacts import DEFAULT_ROOT, machine, new_run, now_iso, versions, write_json
from genrec.batching import chunk_by_tokens, event_tokens
from genrec.bundle import ModelBundle, build_models, sasrec_for
from genrec.data.movielens import load_movielens
from genrec.data.schema import Dataset, Events
from genrec.data.split import Split, leave_last_out
from genrec.data.synthetic import generate
from genrec.ensemble.cascade import follows_only, prerank_features, prerank_keep, prerank_scores, top_k
from genrec.ensemble.encoder_state import ACTION, ITEM
from genrec.ensemble.ranking_features import ItemTable, ranking_features
from genrec.ensemble.transitions import Transitions
from genrec.heldout import heldout_requests, history_slice
from genrec.item_features import item_feature_matrix
from genrec.models.moe_decoder import MoEDecoder
from genrec.models.rqvae import train_rqvae
from genrec.models.sasrec import SASRec, left_pad
from genrec.models.target_prerank import PrerankList, spec_for
from genrec.models.target_prerank import fit as fit_prerank
from genrec.models.target_prerank import save as save_target_prerank
from genrec.models.ugt_encoder import TokenBatch, UGTEncoder, build_tokens
from genrec.ranker import train_ranker
from genrec.reference import ReferencePipeline
from genrec.settings import DATA_PRESETS, PRERANKERS, Config, named_config

PRERANK_WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def log(msg: str) -> None:
    print(msg, flush=True)


def load_dataset(cfg: Config, movielens: str | None) -> Dataset:
    return load_movielens(movielens, cfg.data.n_devices) if movielens else generate(cfg.data)


@dataclass(frozen=True)
class Sample:
    user: int
    end: int  # absolute index of the target event; the history is events[start:end]
    start: int


def draw_samples(split: Split, cfg: Config, rng: np.random.Generator) -> list[Sample]:
    """``cuts_per_user`` random cut points per user inside its training events, plus the last one."""
    out = []
    for u in split.eligible_users:
        s, e = int(split.offsets[u]), int(split.train_end[u])
        cuts = set(rng.integers(s, e, size=min(cfg.train.cuts_per_user, e - s)).tolist()) | {e - 1}
        out += [Sample(int(u), c, max(s, c - cfg.train.max_train_events)) for c in sorted(cuts)]
    return out


def validation_users(split: Split, cfg: Config, n: int | None = None) -> np.ndarray:
    """The users whose validation targets decide early stopping (a fixed sample of
    ``n`` or ``train.validation_users``, sorted)."""
    rng = np.random.default_rng(cfg.train.seed + 2)
    n = min(cfg.train.validation_users if n is None else n, split.eligible_users.size)
    return np.sort(rng.choice(split.eligible_users, size=n, replace=False))


def validation_samples(split: Split, cfg: Config) -> list[Sample]:
    """One sample per validation user: the validation target after the latest training events."""
    out = []
    for u in validation_users(split, cfg):
        end = int(split.offsets[u + 1]) - 2  # the validation target (leave-last-out)
        out.append(Sample(int(u), end, max(int(split.offsets[u]), end - cfg.train.max_train_events)))
    return sorted(out, key=lambda s: s.end - s.start)


@torch.no_grad()
def sample_batch(ds: Dataset, batch: Sequence[Any]) -> tuple[Any, torch.Tensor]:
    """Encoder tokens of a batch of training samples (history before ``end``, at the target's
    device and time) and the target items."""
    ev = ds.events
    tokens = build_tokens(
        [history_slice(ds, s.start, s.end) for s in batch],
        [int(ds.users.segment[s.user]) for s in batch],
        [int(ev.device[s.end]) for s in batch],
        [int(ev.timestamp[s.end]) for s in batch],
    )
    return tokens, torch.tensor([int(ev.item[s.end]) for s in batch])


@torch.no_grad()
def validation_score(ds: Dataset, samples: list[Sample], enc: UGTEncoder, dec: MoEDecoder, cfg: Config) -> dict[str, float]:
    """Losses on the validation targets (the early-stopping criterion: generation + weighted
    retrieval, in the served compression mode) and the user vector's recall@10 (reported)."""
    enc.eval()
    dec.eval()
    codes, tc = enc.item_codes, cfg.train
    item_vecs = enc.item_embeddings()
    gen_sum = ret_sum = hits = 0.0
    sizes = [event_tokens(s.end - s.start) for s in samples]
    for sl in chunk_by_tokens(sizes, tc.token_budget, tc.batch_size):
        batch = samples[sl]
        tokens, target = sample_batch(ds, batch)
        out = enc.forward_dense(tokens, compression=cfg.encoder.compression)
        logits, _ = dec(out.memory, out.memory_logw, codes[target])
        gen_sum += float(sum(F.cross_entropy(lg, codes[target, level], reduction="sum") for level, lg in enumerate(logits)))
        scores = out.user @ item_vecs.T
        ret_sum += float(F.cross_entropy(scores, target, reduction="sum"))
        hits += float((torch.topk(scores, 10, dim=1).indices == target[:, None]).any(dim=1).sum())
    n = max(len(samples), 1)
    gen, ret = gen_sum / n, ret_sum / n
    return {"loss": gen + tc.retrieval_weight * ret, "generation_loss": gen, "retrieval_loss": ret, "ann_recall@10": hits / n}


def next_item_targets(tokens: TokenBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, columns, items): each event's ACTION token that is followed by a next event, and
    that next event's item. The output there has seen the event and the ones before (causal)."""
    is_action = tokens.types[:, :-1] == ACTION
    follows = (tokens.types[:, 1:] == ITEM) & (tokens.item[:, 1:] >= 0)
    rows, cols = torch.nonzero(is_action & follows, as_tuple=True)
    return rows, cols, tokens.item[rows, cols + 1]


def next_item_loss(
    enc: UGTEncoder, memory: torch.Tensor, tokens: TokenBatch, item_vecs: torch.Tensor, max_positions: int, rng: np.random.Generator
) -> torch.Tensor:
    """Cross-entropy of the next event's item from the encoder's output at earlier positions
    (``next_item_targets``), over at most ``max_positions`` of them drawn from the batch.
    ``memory[:, :N]`` are the per-token outputs in both compression modes."""
    rows, cols, items = next_item_targets(tokens)
    if len(rows) == 0:
        return torch.zeros(())
    if len(rows) > max_positions:
        keep = torch.from_numpy(rng.choice(len(rows), max_positions, replace=False))
        rows, cols, items = rows[keep], cols[keep], items[keep]
    return F.cross_entropy(enc.user_proj(memory[rows, cols]) @ item_vecs.T, items)


class EarlyStopping:
    """Keeps the best state seen (by ``better``) and says when ``patience`` epochs passed without one."""

    def __init__(self, patience: int, modules: list[torch.nn.Module]) -> None:
        self.patience, self.modules = patience, modules
        self.best: float | None = None
        self.best_epoch, self.bad = 0, 0
        self.state: list[dict[str, torch.Tensor]] = []
        self.history: list[dict[str, float]] = []

    def update(self, epoch: int, value: float, scores: dict[str, float], higher_is_better: bool) -> bool:
        """Record an epoch; True when training should stop."""
        self.history.append({"epoch": epoch, **{k: round(v, 5) for k, v in scores.items()}})
        improved = self.best is None or (value > self.best if higher_is_better else value < self.best)
        if improved:
            self.best, self.best_epoch, self.bad = value, epoch, 0
            self.state = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.modules]
        else:
            self.bad += 1
        return self.bad >= self.patience

    def restore(self) -> dict[str, object]:
        for m, st in zip(self.modules, self.state):
            m.load_state_dict(st)
        return {"best_epoch": self.best_epoch, "epochs_run": len(self.history), "patience": self.patience, "validation": self.history}


def train_generative(
    ds: Dataset, split: Split, enc: UGTEncoder, dec: MoEDecoder, cfg: Config
) -> tuple[dict[str, float], dict[str, object]]:
    """Train until ``train.epochs`` or until the validation loss has not improved for
    ``train.patience`` epochs; the best epoch's weights are kept."""
    tc = cfg.train
    rng = np.random.default_rng(tc.seed)
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=0.01)
    codes = enc.item_codes
    history = {}
    val_samples = validation_samples(split, cfg)
    stopper = EarlyStopping(tc.patience, [enc, dec])
    for epoch in range(tc.epochs):
        enc.train()
        dec.train()
        samples = draw_samples(split, cfg, rng)
        # batches of similar length (little padding), capped by tokens, visited in random order
        samples.sort(key=lambda s: (s.end - s.start, rng.random()))
        sizes = [event_tokens(s.end - s.start) for s in samples]
        batches = [samples[sl] for sl in chunk_by_tokens(sizes, tc.token_budget, tc.batch_size)]
        t0, totals, n = time.perf_counter(), np.zeros(3), 0
        order = rng.permutation(len(batches))
        for bi in order[: tc.max_steps] if tc.max_steps > 0 else order:
            batch = batches[bi]
            # alternate compression on/off so one model serves both modes
            compression = cfg.encoder.compression and n % 2 == 0
            tokens, target = sample_batch(ds, batch)
            out = enc.forward_dense(tokens, compression=compression)
            logits, aux = dec(out.memory, out.memory_logw, codes[target])
            gen_loss = sum((F.cross_entropy(lg, codes[target, level]) for level, lg in enumerate(logits)), start=torch.zeros(()))
            item_vecs = enc.item_embeddings()
            ret_loss = F.cross_entropy(out.user @ item_vecs.T, target)
            loss = gen_loss + tc.retrieval_weight * ret_loss + cfg.decoder.load_balance_weight * aux
            if tc.next_item_weight > 0:
                next_loss = next_item_loss(enc, out.memory, tokens, item_vecs, tc.next_item_positions, rng)
                loss = loss + tc.next_item_weight * next_loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            totals += [gen_loss.item(), ret_loss.item(), aux.item()]
            n += 1
        totals /= max(n, 1)
        history = {"generation_loss": totals[0], "retrieval_loss": totals[1], "balance_loss": totals[2]}
        val = validation_score(ds, val_samples, enc, dec, cfg)
        log(
            f"  epoch {epoch + 1}/{tc.epochs}: generation {totals[0]:.3f} retrieval {totals[1]:.3f} balance {totals[2]:.3f} | validation loss {val['loss']:.3f} ANN recall@10 {val['ann_recall@10']:.3f} ({time.perf_counter() - t0:.1f}s, {len(samples)} samples, {n} of {len(batches)} batches)"
        )
        if stopper.update(epoch + 1, val["loss"], val, higher_is_better=False):
            log(f"  early stop: no better validation loss for {tc.patience} epochs")
            break
    report = stopper.restore()
    log(f"  kept epoch {report['best_epoch']} (validation loss {stopper.best:.3f})")
    enc.eval()
    dec.eval()
    return history, report


@torch.no_grad()
def sasrec_validation_recall(model: SASRec, ds: Dataset, split: Split, users: np.ndarray, exclude_seen: bool, k: int = 10) -> float:
    """Recall@k of the validation targets (seen items masked when the protocol excludes them)."""
    model.eval()
    hits = 0
    for i in range(0, users.size, 256):
        batch = users[i : i + 256]
        hist = [ds.events.item[int(split.offsets[u]) : int(split.offsets[u + 1]) - 2] for u in batch]
        scores = model.scores(left_pad(hist, model.n_items, model.max_len))
        if exclude_seen:
            for row, h in enumerate(hist):
                scores[row, torch.from_numpy(h.astype(np.int64))] = -math.inf
        top = torch.topk(scores, k, dim=1).indices.numpy()
        targets = np.array([ds.events.item[int(split.offsets[u + 1]) - 2] for u in batch])
        hits += int((top == targets[:, None]).any(axis=1).sum())
    return hits / max(users.size, 1)


def sasrec_windows(seqs: Sequence[np.ndarray], per_user: int, max_len: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Each user's latest ``max_len + 1`` training events, plus ``per_user - 1`` random earlier
    windows of a history longer than that: a heavy user's older events are trained on too (the
    latest window alone never shows them), with the per-user budget of the generative model's cuts."""
    out = []
    for s in seqs:
        out.append(s[-(max_len + 1) :])
        if per_user > 1 and len(s) > max_len + 1:
            out += [s[e - max_len - 1 : e] for e in rng.integers(max_len + 1, len(s), size=per_user - 1)]
    return out


def train_sasrec(ds: Dataset, split: Split, cfg: Config, exclude_seen: bool = False) -> tuple[SASRec, float, dict[str, object]]:
    """Train until ``train.sasrec_epochs`` or until validation recall@10 (every eligible user, up
    to ``sasrec_validation_users``) has not improved for ``train.sasrec_patience`` epochs; the best
    epoch's weights are kept. The baseline a team would pick, so it is trained as carefully as ours."""
    tc = cfg.train
    torch.manual_seed(tc.seed)
    model = sasrec_for(cfg, ds.item_metadata.n_items)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
    rng = np.random.default_rng(tc.seed)
    n_items, max_len = ds.item_metadata.n_items, tc.max_train_events
    seqs = [ds.events.item[int(split.offsets[u]) : int(split.train_end[u])] for u in split.eligible_users]
    loss_val = float("nan")
    # recall@10 at ~0.05 on 1,000 users moves by +-0.007 from noise alone: more users, more patience
    val_users = validation_users(split, cfg, tc.sasrec_validation_users)
    stopper = EarlyStopping(tc.sasrec_patience, [model])
    for epoch in range(tc.sasrec_epochs):
        model.train()
        windows = sasrec_windows(seqs, tc.cuts_per_user, max_len, rng)
        order = rng.permutation(len(windows))
        t0, total, n = time.perf_counter(), 0.0, 0
        for bi in range(0, len(order), tc.batch_size // 2):
            batch = [windows[i] for i in order[bi : bi + tc.batch_size // 2]]
            inp = left_pad([s[:-1] for s in batch], n_items, max_len)
            tgt = left_pad([s[1:] for s in batch], n_items, max_len)
            loss = model.loss(inp, tgt)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            n += 1
        loss_val = total / max(n, 1)
        recall = sasrec_validation_recall(model, ds, split, val_users, exclude_seen)
        log(
            f"  sasrec epoch {epoch + 1}/{tc.sasrec_epochs}: loss {loss_val:.3f} | validation recall@10 {recall:.4f} ({time.perf_counter() - t0:.1f}s, {len(windows)} windows)"
        )
        if stopper.update(epoch + 1, recall, {"train_loss": loss_val, "recall@10": recall}, higher_is_better=True):
            log(f"  early stop: no better validation recall for {tc.sasrec_patience} epochs")
            break
    report = stopper.restore()
    log(f"  kept sasrec epoch {report['best_epoch']} (validation recall@10 {stopper.best:.4f})")
    model.eval()
    return model, loss_val, report


def fit_cascade(bundle: ModelBundle, ds: Dataset, split: Split, cfg: Config, exclude_seen: bool = False) -> dict[str, object]:
    """Choose the pre-rank weight, fit the target-aware pre-ranker, then train the ranker behind
    the configured pre-rank (``pipeline.prerank``), on validation targets (under the evaluation
    protocol: with ``exclude_seen`` the requests exclude the user's earlier items)."""
    rng = np.random.default_rng(cfg.train.seed + 1)
    users = rng.choice(split.eligible_users, size=min(cfg.train.ranker_users, split.eligible_users.size), replace=False)
    pipeline = ReferencePipeline(bundle, prerank="dot")  # the candidates do not depend on the pre-rank
    reqs, targets = heldout_requests(ds, split, users, pipeline.cfg, target="validation", exclude_seen=exclude_seen)
    traces, memories = [], []
    for i in range(0, len(reqs), 32):
        enc, batch_traces = pipeline.traces(reqs[i : i + 32])  # within pipeline.token_budget tokens per batch
        traces += batch_traces
        for row in range(len(batch_traces)):
            seen = torch.isfinite(enc.memory_logw[row])  # the batch's padding dropped
            memories.append((enc.memory[row][seen].numpy(), enc.memory_logw[row][seen].numpy()))
        if (i // 32) % 10 == 0:
            log(f"  cascade traces {min(i + 32, len(reqs))}/{len(reqs)}")
    keep, follow_keep = cfg.pipeline.prerank_keep, cfg.pipeline.follow_keep
    recall = {}
    for w in PRERANK_WEIGHT_GRID:
        hits = [
            t in tr.candidates.items[prerank_keep(tr.candidates, prerank_scores(tr.candidates, w), keep, follow_keep)]
            for tr, t in zip(traces, targets)
        ]
        recall[w] = float(np.mean(hits))
    best = max(PRERANK_WEIGHT_GRID, key=lambda w: (recall[w], -w))
    bundle.prerank_weight = best
    log(f"  pre-rank weight {best} (recall@{keep} of the pre-rank: " + ", ".join(f"{w}: {r:.3f}" for w, r in recall.items()) + ")")
    target_scores, target_report = fit_target_prerank(bundle, traces, memories, targets, best, cfg)
    held = target_report["oof_recall"]
    log(
        f"  target-aware pre-ranker: {target_report['epochs']} epochs in {target_report['seconds']:.1f}s"
        + (f", held-out-fold recall@{keep} {held:.3f} (untrained = dot: {target_report['fold_recall'][0]:.3f})" if held is not None else "")
    )
    # the ranker is fitted behind the configured pre-rank; with the target pre-rank, on its
    # held-out-fold scores (the scores it will see when serving, not in-sample ones)
    pres = target_scores if target_scores is not None else [prerank_scores(tr.candidates, best) for tr in traces]
    feats, labels = [], []
    for tr, req, t, pre in zip(traces, reqs, targets, pres):
        kept = prerank_keep(tr.candidates, pre, keep, follow_keep)
        c = tr.candidates.take(kept)
        feats.append(ranking_features(c, pre[kept], bundle.items, req.history.item, req.history.timestamp, float(req.request_time())))
        labels.append(c.items == t)
    check = ranker_check(traces, feats, labels, targets, pres, bundle, cfg)
    bundle.ranker = train_ranker(feats, labels, cfg.train.ranker_rounds, cfg.train.seed, cfg.train.threads)
    return {
        "prerank_weight": best,
        "prerank": cfg.pipeline.prerank,
        "candidate_recall": float(np.mean([t in tr.candidates.items for tr, t in zip(traces, targets)])),
        "prerank_recall": recall[best],
        "target_prerank": target_report,
        "ranker_groups_with_positive": int(sum(lb.any() for lb in labels)),
        "ranker_check": check,
    }


def fit_target_prerank(
    bundle: ModelBundle, traces: list, memories: list[tuple[np.ndarray, np.ndarray]], targets: np.ndarray, dot_weight: float, cfg: Config
) -> tuple[list[np.ndarray] | None, dict]:
    """Fit ``genrec.models.target_prerank`` on the traces' candidates (the target against the
    other candidates of its list) and set it on the bundle; returns the fit report and, when the
    ranker is fitted behind it (``pipeline.prerank = "target_attention"``), each list's
    held-out-fold scores (two folds; they also pick the epoch count)."""
    log_pop = bundle.items.log_popularity
    lists = []
    for tr, (mem, logw), t in zip(traces, memories, targets):
        c = tr.candidates
        at = np.flatnonzero(c.items == t)
        lists.append(PrerankList(mem, logw, c.items, prerank_features(c, log_pop), int(at[0]) if at.size else -1))
    spec = spec_for(cfg.encoder.d_model, cfg.encoder.n_heads)
    tc = cfg.train
    model, oof, report = fit_prerank(
        lists,
        bundle.item_vectors,
        spec,
        dot_weight,
        cfg.pipeline.prerank_keep,
        tc.prerank_epochs,
        tc.prerank_lr,
        tc.prerank_batch_users,
        tc.seed,
        folds=2 if cfg.pipeline.prerank == "target_attention" else 0,
        random=tc.prerank_random_negatives,
    )
    bundle.target_prerank = model
    return oof, report.as_dict()


RANKER_CHECK_SHARE = 0.2  # validation users held out of a check ranker, to compare it with each source


def ranker_check(
    traces: list,
    feats: list[np.ndarray],
    labels: list[np.ndarray],
    targets: np.ndarray,
    pres: list[np.ndarray],
    bundle: ModelBundle,
    cfg: Config,
) -> dict:
    """Does the ranker beat its own sources? A ranker fitted on 80% of the validation users is
    compared, on the other 20%, with ANN only, generation only and the pre-rank's top 10
    (recall@10). The shipped ranker is then fitted on every validation user."""
    n_check = int(len(traces) * RANKER_CHECK_SHARE)
    if n_check < 10:
        return {}
    fit, held = slice(0, len(traces) - n_check), slice(len(traces) - n_check, len(traces))
    ranker = train_ranker(feats[fit], labels[fit], cfg.train.ranker_rounds, cfg.train.seed, cfg.train.threads)
    hits = {"ranker": 0, "prerank": 0, "ann_only": 0, "generation_only": 0, "transitions_only": 0}
    for tr, f, t, pre in zip(traces[held], feats[held], targets[held], pres[held]):
        c, g = tr.candidates, tr.generated
        kept = prerank_keep(c, pre, cfg.pipeline.prerank_keep, cfg.pipeline.follow_keep)  # the rows of f
        ranked = {
            "ranker": c.items[kept[top_k(np.asarray(ranker.predict(f, num_threads=1)), 10)]] if len(f) else c.items[:0],
            "prerank": c.items[kept[:10]],
            "ann_only": c.items[c.in_ann][:10],
            "generation_only": g.items[np.lexsort((-bundle.items.log_popularity[g.items], -g.logprob))][:10],
            "transitions_only": follows_only(c, 10),
        }
        for k, r in ranked.items():
            hits[k] += int(t in r)
    out: dict = {k: round(v / n_check, 4) for k, v in hits.items()}
    out["users"] = n_check
    best_source = max(out["ann_only"], out["generation_only"], out["transitions_only"])
    if out["ranker"] < best_source:
        log(f"  WARNING: the ranker's held-out recall@10 {out['ranker']:.3f} is below its best single source ({best_source:.3f})")
    log("  ranker check on held-out validation users (recall@10): " + ", ".join(f"{k} {v}" for k, v in out.items()))
    return out


def train(
    cfg: Config, movielens: str | None = None, root: Path = DEFAULT_ROOT, skip_sasrec: bool = False, exclude_seen: bool | None = None
) -> Path:
    """Train a run. ``exclude_seen`` (default: on for MovieLens-format input, as genrec-evaluate)
    is the protocol the ranker and SASRec's early stopping are fitted under."""
    # Reproducible runs: without this the MoE's scatter-add (index_put accumulate) sums in a
    # thread-dependent order and two runs drift apart (measured: 4e-4 in decoder weights).
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train(cfg, movielens, root, skip_sasrec, movielens is not None if exclude_seen is None else exclude_seen)
    finally:
        torch.use_deterministic_algorithms(was)


def item_table(ds: Dataset, train_events: Events, cfg: Config) -> ItemTable:
    """The per-item side data the cascade needs, from training events only (popularity and
    transitions never see a validation or test target)."""
    n = ds.item_metadata.n_items
    counts = np.bincount(train_events.item, minlength=n)
    tc = cfg.train
    return ItemTable(
        ds.item_metadata.category.astype(np.int64),
        ds.item_metadata.author.astype(np.int64),
        ds.item_metadata.kind.astype(np.int64),
        np.log1p(counts).astype(np.float64),
        ds.item_metadata.n_categories,
        Transitions.count(train_events.item, train_events.user, n, tc.follow_window, tc.follow_top),
    )


def _train(cfg: Config, movielens: str | None, root: Path, skip_sasrec: bool, exclude_seen: bool) -> Path:
    torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def timed(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 2)
        log(f"[{name}] done in {timings[name]:.1f}s")

    t0 = time.perf_counter()
    log(
        f"[data] {'MovieLens ' + movielens if movielens else f'synthetic ({cfg.data.preset}) {cfg.data.n_items} items x {cfg.data.n_users} users'}"
    )
    ds = load_dataset(cfg, movielens)
    split = leave_last_out(ds.events)
    train_events = split.train_events(ds.events)
    log(f"  {len(ds.events)} events, {split.eligible_users.size} users with >= 3 events, {len(train_events)} training events")
    timed("data", t0)

    t0 = time.perf_counter()
    log(f"[semantic ids] RQ-VAE codebooks {cfg.semantic_id.codebook_sizes}")
    feats = item_feature_matrix(ds.item_metadata, train_events, cfg.semantic_id.content_dim, cfg.semantic_id.collab_dim, cfg.train.seed)
    rq, sem = train_rqvae(feats, cfg.semantic_id, cfg.train.seed, log)
    sid_report = sem.report()
    log("  " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in sid_report.items()))
    timed("semantic_ids", t0)

    t0 = time.perf_counter()
    log(
        f"[generative] UGT encoder {cfg.encoder.n_layers}x{cfg.encoder.d_model} + MoE decoder {cfg.decoder.n_experts} experts top-{cfg.decoder.top_k}"
    )
    enc, dec = build_models(cfg, feats, sem, ds.users.n_segments, cfg.data.n_devices)
    gen_losses, gen_stopping = train_generative(ds, split, enc, dec, cfg)
    timed("generative", t0)

    sasrec_loss = None
    sasrec = None
    sasrec_stopping: dict[str, object] | None = None
    if not skip_sasrec:
        t0 = time.perf_counter()
        log("[sasrec] baseline")
        sasrec, sasrec_loss, sasrec_stopping = train_sasrec(ds, split, cfg, exclude_seen)
        timed("sasrec", t0)

    items = item_table(ds, train_events, cfg)
    manifest: dict[str, object] = {
        "config": cfg.name,
        "dataset": ds.name,
        "movielens_path": str(Path(movielens).resolve()) if movielens else None,
        "data_hash": ds.content_hash(),
        "n_items": ds.item_metadata.n_items,
        "n_users": ds.events.n_users,
        "n_events": len(ds.events),
        "n_segments": ds.users.n_segments,
        "n_devices": cfg.data.n_devices,
        "created": now_iso(),
        "versions": versions(),
        "machine": machine(),
    }
    bundle = ModelBundle(
        Path("."),
        cfg,
        enc,
        dec,
        sasrec,
        None,
        1.0,
        items,
        sem,
        np.zeros((0, 0), np.float32),
        cfg.data.n_devices,
        ds.users.n_segments,
        manifest,
    )
    bundle.refresh_item_vectors()

    t0 = time.perf_counter()
    log("[cascade] pre-rank weight, target-aware pre-ranker and LightGBM ranker on validation targets")
    cascade_report = fit_cascade(bundle, ds, split, cfg, exclude_seen)
    timed("ranker", t0)

    t0 = time.perf_counter()
    log("[ad ctr] pCTR network on synthetic ad impressions (genrec.ad_ctr)")
    ad_model = ad_ctr.fit_for_run(bundle, ds, split, cfg, log)
    timed("ad_ctr", t0)

    timings["total"] = round(time.perf_counter() - t_all, 2)
    manifest["train_seconds"] = timings
    with new_run(cfg.name, root) as run:
        d = run.staging
        write_json(d / "config.json", cfg.to_dict())
        np.save(d / "item_features.npy", feats)
        np.savez(d / "semantic_ids.npz", codes=sem.codes, disambiguation=sem.disambiguation, codebook_sizes=np.array(sem.codebook_sizes))
        np.savez(
            d / "item_table.npz",
            **items.arrays(),
            # ad columns (-1 / NaN on non-ad rows): the feed loads its ad inventory from here
            # (genrec.ads.inventory.AdInventory.from_item_table)
            advertiser=ds.item_metadata.advertiser,
            campaign=ds.item_metadata.campaign,
            bid_cpc=ds.item_metadata.bid_cpc,
            daily_budget=ds.item_metadata.daily_budget,
            frequency_cap=ds.item_metadata.frequency_cap,
            target_categories=ds.item_metadata.target_categories,
        )
        torch.save(rq.state_dict(), d / "rqvae.pt")
        torch.save(enc.state_dict(), d / "encoder.pt")
        torch.save(dec.state_dict(), d / "decoder.pt")
        if sasrec is not None:
            torch.save(sasrec.state_dict(), d / "sasrec.pt")
        assert bundle.ranker is not None
        bundle.ranker.save_model(str(d / "ranker.txt"))
        write_json(d / "pipeline.json", {"prerank_weight": bundle.prerank_weight})
        if bundle.target_prerank is not None:
            save_target_prerank(bundle.target_prerank, d)  # target_prerank.{pt,json}
        ad_report = ad_ctr.save(ad_model, d) if ad_model is not None else None  # ad_ctr.{pt,npz,json,onnx}
        write_json(
            d / "metrics.json",
            {
                "semantic_ids": sid_report,
                "train": {**gen_losses, "sasrec_loss": sasrec_loss},
                "early_stopping": {"generative": gen_stopping, "sasrec": sasrec_stopping},
                "cascade_fit": {**cascade_report, "exclude_seen": exclude_seen},
                "ad_ctr": ad_report,
            },
        )
        write_json(d / "manifest.json", manifest)
    assert run.final is not None
    log(f"[done] {run.final} in {timings['total']:.1f}s: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items() if k != "total"))
    return run.final


REFIT_REPLACED = (
    "config.json",
    "pipeline.json",
    "item_table.npz",
    "ranker.txt",
    "metrics.json",
    "manifest.json",
    "target_prerank.pt",
    "target_prerank.json",
)


def refit_cascade(run: Path, overrides: dict[str, str], root: Path | None = None, exclude_seen: bool | None = None) -> Path:
    """A new run folder from ``run`` whose cascade (pre-rank weight, target-aware pre-ranker,
    LightGBM ranker) is fitted again under ``overrides`` (``{"pipeline.prerank": "target_attention"}``):
    the generative models, semantic IDs, SASRec and pCTR are copied, so two pre-rankers are
    compared behind the same models without training them twice. ``exclude_seen``: default the
    protocol the run was fitted under."""
    import json
    import shutil

    from genrec.bundle import load_bundle
    from genrec.settings import with_overrides

    run = Path(run)
    bundle = load_bundle(run)
    cfg = with_overrides(bundle.cfg, overrides)
    bundle.cfg = cfg
    metrics = json.loads((run / "metrics.json").read_text())
    if exclude_seen is None:
        exclude_seen = bool(metrics.get("cascade_fit", {}).get("exclude_seen", False))
    m = bundle.manifest
    ds = load_dataset(cfg, m.get("movielens_path"))
    if ds.content_hash() != m["data_hash"]:
        raise RuntimeError(f"data hash {ds.content_hash()} differs from the run's {m['data_hash']}: the data changed since training")
    split = leave_last_out(ds.events)
    bundle.items = item_table(ds, split.train_events(ds.events), cfg)  # transitions under this config
    torch.set_num_threads(cfg.train.threads)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        t0 = time.perf_counter()
        log(f"[cascade] refit of {run} with " + ", ".join(f"{k}={v}" for k, v in overrides.items()))
        report = fit_cascade(bundle, ds, split, cfg, exclude_seen)
        seconds = round(time.perf_counter() - t0, 2)
    finally:
        torch.use_deterministic_algorithms(was)
    with new_run(cfg.name, root or run.parent) as out:
        d = out.staging
        for f in run.iterdir():
            if f.is_file() and f.name not in REFIT_REPLACED:
                shutil.copy2(f, d / f.name)
        write_json(d / "config.json", cfg.to_dict())
        write_json(d / "pipeline.json", {"prerank_weight": bundle.prerank_weight})
        with np.load(run / "item_table.npz") as saved:  # the ad columns stay as they were
            np.savez(d / "item_table.npz", **{**dict(saved), **bundle.items.arrays()})
        assert bundle.ranker is not None and bundle.target_prerank is not None
        bundle.ranker.save_model(str(d / "ranker.txt"))
        save_target_prerank(bundle.target_prerank, d)
        write_json(d / "metrics.json", {**metrics, "cascade_fit": {**report, "exclude_seen": exclude_seen}, "refit_from": str(run)})
        write_json(
            d / "manifest.json", {**m, "refit_from": str(run), "refit_overrides": overrides, "refit_seconds": seconds, "created": now_iso()}
        )
    assert out.final is not None
    log(f"[done] {out.final} (cascade refit in {seconds:.1f}s)")
    return out.final


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="genrec-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="named configuration: tiny, small (default, or $GENREC_CONFIG), full")
    p.add_argument("--movielens", default=None, help="path to a MovieLens u.data or ratings.dat file instead of synthetic data")
    p.add_argument("--items", type=int, default=None, help="synthetic catalogue size (overrides the config)")
    p.add_argument("--users", type=int, default=None, help="synthetic user count (overrides the config)")
    p.add_argument("--epochs", type=int, default=None, help="generative-model epochs (overrides the config)")
    p.add_argument("--artifacts", type=Path, default=DEFAULT_ROOT, help=f"runs folder (default {DEFAULT_ROOT})")
    p.add_argument("--skip-sasrec", action="store_true", help="do not train the SASRec baseline")
    p.add_argument("--data", choices=DATA_PRESETS, default=None, help="synthetic preset: default, or realistic (rating-shaped)")
    p.add_argument(
        "--exclude-seen",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fit the ranker with each user's earlier items excluded, as genrec-evaluate --exclude-seen (default: on for MovieLens-format input)",
    )
    p.add_argument(
        "--prerank", choices=PRERANKERS, default=None, help="pre-rank the ranker is fitted behind (pipeline.prerank; default dot)"
    )
    p.add_argument(
        "--refit-cascade",
        type=Path,
        default=None,
        metavar="RUN",
        help="copy RUN's models into a new run and fit only its cascade again (with --prerank): seconds instead of a training",
    )
    a = p.parse_args(argv)
    from genrec.settings import with_overrides

    if a.refit_cascade is not None:
        refit_cascade(a.refit_cascade, {"pipeline.prerank": a.prerank} if a.prerank else {}, exclude_seen=a.exclude_seen)
        return 0
    cfg = named_config(a.config)
    pairs = (
        ("data.n_items", a.items),
        ("data.n_users", a.users),
        ("train.epochs", a.epochs),
        ("data.preset", a.data),
        ("pipeline.prerank", a.prerank),
    )
    ov = {k: str(v) for k, v in pairs if v is not None}
    cfg = with_overrides(cfg, ov)
    if cfg.name == "full":
        print("the full configuration is counted (genrec-model-card), not trained on this machine", file=sys.stderr)
        return 2
    train(cfg, a.movielens, a.artifacts, a.skip_sasrec, a.exclude_seen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
