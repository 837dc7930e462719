"""pCTR of ads: features, a small calibrated network over (user vector, ad features), its ONNX
graph ``ad_ctr`` and its metrics against a baseline and the ground truth.

The served interface (fixed; the Triton side is built against it)::

    inputs   user_vector  FP32 [batch, d_user]       the encoder's user vector of the request
                                                      (``recommend``'s, the one ANN searches with)
             ad_features  FP32 [batch, ads, F]       ``ad_feature_rows`` of the eligible ads
    output   pctr         FP32 [batch, ads]          calibrated click probabilities

``d_user`` is the encoder's ``d_model``. The feed builds ``ad_features`` with ``ad_feature_rows``,
the function training builds its rows with, from the user's history and the run's
``AdFeatureTable`` (``ad_ctr.npz``). Position is a feature (the truth has a position effect);
the feed passes 0, so the pCTR is the ad's click probability at the top slot: the auction ranks
and prices ads on that, as a position-normalised CTR.

The network: a wide part (a logistic regression on the normalised ad features) plus a deep part
whose first layer sums a projection of the user vector and one of the ad features (so the user
vector interacts with each ad), ReLU, one hidden layer, one logit. Trained with binary cross
entropy on the train users' impressions, early stopped on the validation users' log loss, then
calibrated by Platt scaling on the validation users (``sigmoid(scale * logit + bias)``, folded
into the graph: the ONNX output is the calibrated probability).

Run files: ``ad_ctr.pt`` (weights, normalisation and calibration included), ``ad_ctr.npz`` (the
per-item feature table), ``ad_ctr.json`` (feature names, d_user, metrics), ``ad_ctr.onnx``.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genrec.data.ad_impressions import AdImpressions, Phase, generate_impressions
from genrec.data.schema import Dataset, ItemKind

if TYPE_CHECKING:
    import torch

    from genrec.bundle import ModelBundle
    from genrec.data.split import Split
    from genrec.settings import Config

AD_FEATURES: tuple[str, ...] = (
    "history_category_share",  # smoothed share of the ad's category in the user's history
    "recent_category_share",  # the same over the latest RECENT_EVENTS events
    "log_history_length",  # log1p(events in the history): how far the shares can be trusted
    "quality_proxy",  # the ad's observable quality score (0 where unknown)
    "prior_ctr_logit",  # logit of the ad's smoothed click-through rate in the warm-up log
    "log_prior_impressions",  # log1p(the ad's impressions in the warm-up log)
    "position",  # slot of the impression, 0 = top; the feed passes 0
)
N_FEATURES = len(AD_FEATURES)
RECENT_EVENTS = 10
SHARE_PRIOR = 2.0  # pseudo-events spread evenly over the categories (a cold user's share is 1/n_categories)
CTR_PRIOR = 20.0  # pseudo-impressions at the global CTR in an ad's smoothed CTR (prior feature and baseline)
ECE_BINS = 15  # equal-mass bins of the prediction (CTRs of a few %: equal-width bins would hold everything in one)
BATCH = 2048
LR = 3e-3
WEIGHT_DECAY = 1e-4
ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-5  # fp32 graph vs fp32 PyTorch on probabilities < 1: rounding only


# ---- features --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdFeatureTable:
    """Per item (ads only are meaningful): what ``ad_feature_rows`` needs besides the history."""

    category: np.ndarray  # (n_items,) int64
    n_categories: int
    quality_proxy: np.ndarray  # (n_items,) float32, NaN on non-ads
    prior_clicks: np.ndarray  # (n_items,) float32, clicks in the warm-up log
    prior_impressions: np.ndarray  # (n_items,) float32, impressions in the warm-up log
    global_ctr: float  # the warm-up log's click-through rate

    def smoothed_ctr(self, ads: np.ndarray) -> np.ndarray:
        return (self.prior_clicks[ads] + CTR_PRIOR * self.global_ctr) / (self.prior_impressions[ads] + CTR_PRIOR)

    def save(self, path: Path) -> None:
        np.savez(
            path,
            category=self.category,
            n_categories=self.n_categories,
            quality_proxy=self.quality_proxy,
            prior_clicks=self.prior_clicks,
            prior_impressions=self.prior_impressions,
            global_ctr=self.global_ctr,
        )

    @staticmethod
    def load(path: Path) -> AdFeatureTable:
        z = np.load(path)
        return AdFeatureTable(
            z["category"].astype(np.int64),
            int(z["n_categories"]),
            z["quality_proxy"].astype(np.float32),
            z["prior_clicks"].astype(np.float32),
            z["prior_impressions"].astype(np.float32),
            float(z["global_ctr"]),
        )


def feature_table(ds: Dataset, imp: AdImpressions) -> AdFeatureTable:
    """The run's table: categories, quality proxies, and each ad's clicks and impressions in the
    warm-up log (never the model's own training rows)."""
    n = ds.item_metadata.n_items
    w = imp.rows(Phase.WARMUP)
    clicks = np.bincount(imp.ad[w], weights=imp.click[w], minlength=n).astype(np.float32)
    shown = np.bincount(imp.ad[w], minlength=n).astype(np.float32)
    return AdFeatureTable(
        ds.item_metadata.category.astype(np.int64),
        ds.item_metadata.n_categories,
        imp.quality.proxy.astype(np.float32),
        clicks,
        shown,
        float(imp.click[w].mean()) if w.size else 0.0,
    )


def _shares(history_categories: np.ndarray, ad_categories: np.ndarray, n_categories: int) -> np.ndarray:
    counts = np.bincount(history_categories, minlength=n_categories)
    return (counts[ad_categories] + SHARE_PRIOR / n_categories) / (history_categories.size + SHARE_PRIOR)


def ad_feature_rows(history_items: np.ndarray, ads: np.ndarray, table: AdFeatureTable, position: int | np.ndarray = 0) -> np.ndarray:
    """``(len(ads), len(AD_FEATURES))`` float32 rows of one user's candidate ads: the columns of
    ``AD_FEATURES``. ``history_items``: the user's items, oldest first (the request's history
    window); ``position``: the slot (the feed passes 0). Training builds its rows with this
    function too, so the features cannot drift between training and serving."""
    ads = np.asarray(ads, dtype=np.int64)
    hist = table.category[np.asarray(history_items, dtype=np.int64)]
    ad_cat = table.category[ads]
    out = np.empty((ads.size, N_FEATURES), dtype=np.float32)
    out[:, 0] = _shares(hist, ad_cat, table.n_categories)
    out[:, 1] = _shares(hist[-RECENT_EVENTS:], ad_cat, table.n_categories)
    out[:, 2] = math.log1p(hist.size)
    out[:, 3] = np.nan_to_num(table.quality_proxy[ads], nan=0.0)
    ctr = table.smoothed_ctr(ads)
    out[:, 4] = np.log(np.clip(ctr, 1e-6, 1.0)) - np.log(np.clip(1.0 - ctr, 1e-6, 1.0))
    out[:, 5] = np.log1p(table.prior_impressions[ads])
    out[:, 6] = position
    return out


def impression_features(ds: Dataset, imp: AdImpressions, table: AdFeatureTable) -> np.ndarray:
    """(N, F) rows of every impression, one ``ad_feature_rows`` call per request."""
    out = np.empty((len(imp), N_FEATURES), dtype=np.float32)
    bounds = np.searchsorted(imp.request, np.arange(imp.request_user.size + 1))
    for r in range(imp.request_user.size):
        s, e = bounds[r], bounds[r + 1]
        history = ds.events.item[imp.request_start[r] : imp.request_end[r]]
        out[s:e] = ad_feature_rows(history, imp.ad[s:e], table, imp.position[s:e])
    return out


def request_user_vectors(bundle: ModelBundle, ds: Dataset, imp: AdImpressions) -> np.ndarray:
    """(R, d_user) the encoder's user vector of each impression request, computed as serving
    computes ``recommend``'s: the request's history window, segment, device and time through the
    encoder in the served compression mode (``ReferencePipeline.encode``, which the parity tests
    hold equal to the serving encoder)."""
    from genrec.batching import event_tokens, token_batches
    from genrec.ensemble.request_types import RecommendRequest
    from genrec.ensemble.request_validation import validate_options
    from genrec.heldout import history_slice
    from genrec.reference import ReferencePipeline

    pipeline = ReferencePipeline(bundle)
    options = validate_options(pipeline.cfg)
    ev = ds.events
    reqs = [
        RecommendRequest(history_slice(ds, int(s), int(e)), options, int(ds.users.segment[u]), int(ev.device[e]), int(ev.timestamp[e]))
        for u, s, e in zip(imp.request_user, imp.request_start, imp.request_end)
    ]
    out = np.empty((len(reqs), bundle.cfg.encoder.d_model), dtype=np.float32)
    for idx in token_batches([event_tokens(len(r.history)) for r in reqs], pipeline.cfg.token_budget, 512):
        out[idx] = pipeline.encode([reqs[i] for i in idx]).user.numpy()
    return out


# ---- model -----------------------------------------------------------------------------------


def network(d_user: int, n_features: int = N_FEATURES, hidden: int = 32, dropout: float = 0.1) -> Any:
    """A fresh ``AdCtrNet``: ``forward(user_vector [B, d], ad_features [B, A, F]) -> pctr [B, A]`` (calibrated)."""
    return _network_class()(d_user, n_features, hidden, dropout)


@functools.cache
def _network_class() -> type:
    # torch is imported on first use: the feed imports this module for ad_feature_rows only
    import torch
    from torch import nn

    class AdCtrNet(nn.Module):
        """``forward(user_vector [B, d], ad_features [B, A, F]) -> pctr [B, A]`` (calibrated)."""

        # buffers (register_buffer), declared for the type checker
        u_mean: torch.Tensor
        u_std: torch.Tensor
        x_mean: torch.Tensor
        x_std: torch.Tensor
        calib_scale: torch.Tensor
        calib_bias: torch.Tensor

        def __init__(self, d_user: int, n_features: int = N_FEATURES, hidden: int = 32, dropout: float = 0.1) -> None:
            super().__init__()
            self.d_user, self.n_features, self.hidden = d_user, n_features, hidden
            for name, size in (("u_mean", d_user), ("u_std", d_user), ("x_mean", n_features), ("x_std", n_features)):
                self.register_buffer(name, torch.zeros(size) if name.endswith("mean") else torch.ones(size))
            self.register_buffer("calib_scale", torch.ones(()))
            self.register_buffer("calib_bias", torch.zeros(()))
            self.wide = nn.Linear(n_features, 1)
            self.user_in = nn.Linear(d_user, hidden)
            self.ad_in = nn.Linear(n_features, hidden, bias=False)
            self.deep = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

        def set_normalisation(self, user_vectors: np.ndarray, features: np.ndarray) -> None:
            for name, x in (("u", user_vectors), ("x", features)):
                t = torch.from_numpy(np.asarray(x, dtype=np.float32))
                getattr(self, f"{name}_mean").copy_(t.mean(0))
                getattr(self, f"{name}_std").copy_(t.std(0).clamp_min(1e-3))

        def logits(self, user_vector: torch.Tensor, ad_features: torch.Tensor) -> torch.Tensor:
            """Uncalibrated logits [B, A]."""
            u = (user_vector - self.u_mean) / self.u_std
            x = (ad_features - self.x_mean) / self.x_std
            h = self.user_in(u).unsqueeze(1) + self.ad_in(x)  # [B, 1, H] + [B, A, H]
            return (self.wide(x) + self.deep(h)).squeeze(-1)

        def forward(self, user_vector: torch.Tensor, ad_features: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.calib_scale * self.logits(user_vector, ad_features) + self.calib_bias)

    return AdCtrNet


@dataclass
class AdCtrModel:
    net: Any  # network(): an AdCtrNet (its class is built on first use, so it is not nameable here)
    table: AdFeatureTable
    report: dict

    @property
    def d_user(self) -> int:
        return self.net.d_user

    def predict(self, user_vectors: np.ndarray, ad_features: np.ndarray) -> np.ndarray:
        """[batch, ads] calibrated pCTR of ``ad_features`` [batch, ads, F] for ``user_vectors`` [batch, d_user]."""
        import torch

        self.net.eval()
        u = torch.from_numpy(np.ascontiguousarray(user_vectors, dtype=np.float32))
        x = torch.from_numpy(np.ascontiguousarray(ad_features, dtype=np.float32))
        with torch.no_grad():
            return self.net(u, x).numpy()


def predict(model: AdCtrModel, user_vectors: np.ndarray, ad_features: np.ndarray) -> np.ndarray:
    return model.predict(user_vectors, ad_features)


# ---- metrics ---------------------------------------------------------------------------------


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (ties get average ranks)."""
    label = np.asarray(label).astype(bool)
    pos, neg = int(label.sum()), int((~label).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(np.asarray(score), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse.reshape(-1)]  # 1-based, ties averaged
    return float((ranks[label].sum() - pos * (pos + 1) / 2) / (pos * neg))


def log_loss(p: np.ndarray, label: np.ndarray) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(label, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def expected_calibration_error(p: np.ndarray, label: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over ``bins`` equal-mass bins of the prediction of (bin share) x |mean prediction - click rate|."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(label, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    return float(sum(abs(p[b].mean() - y[b].mean()) * b.size for b in np.array_split(order, bins) if b.size) / max(p.size, 1))


def scores(p: np.ndarray, label: np.ndarray, p_true: np.ndarray | None = None) -> dict[str, float]:
    out = {
        "auc": auc(p, label),
        "log_loss": log_loss(p, label),
        "ece": expected_calibration_error(p, label),
        "mean_prediction": float(np.mean(p)),
        "click_rate": float(np.mean(label)),
    }
    if p_true is not None:
        out["mean_abs_error_vs_truth"] = float(np.mean(np.abs(np.asarray(p, dtype=np.float64) - p_true)))
    return {k: round(v, 6) for k, v in out.items()}


def baseline_ctr(imp: AdImpressions, rows: np.ndarray, n_items: int, phases: tuple[Phase, ...] = (Phase.WARMUP, Phase.TRAIN)) -> np.ndarray:
    """The trivial baseline for ``rows``: each ad's average CTR over the training impressions
    (warm-up and train), smoothed toward the overall CTR with ``CTR_PRIOR`` pseudo-impressions."""
    fit = np.flatnonzero(np.isin(imp.phase, phases))
    clicks = np.bincount(imp.ad[fit], weights=imp.click[fit], minlength=n_items)
    shown = np.bincount(imp.ad[fit], minlength=n_items)
    overall = float(imp.click[fit].mean())
    return (clicks[imp.ad[rows]] + CTR_PRIOR * overall) / (shown[imp.ad[rows]] + CTR_PRIOR)


def held_out_scores(model_p: np.ndarray, imp: AdImpressions, rows: np.ndarray, n_items: int, others: dict | None = None) -> dict[str, dict]:
    """Scores on ``rows`` (held-out impressions) of the model's predictions ``model_p``, of any
    ``others`` predictions, of the baseline (the ad's smoothed training CTR) and of the truth (the
    ceiling: its AUC is the best any model can reach, its ECE is the sampling noise)."""
    y, p_true = imp.click[rows], imp.p_true[rows]
    out = {"model": scores(model_p, y, p_true)}
    out.update({k: scores(v, y, p_true) for k, v in (others or {}).items()})
    out["baseline_ad_ctr"] = scores(baseline_ctr(imp, rows, n_items), y, p_true)
    out["truth"] = scores(p_true, y, p_true)
    return out


def reliability(p: np.ndarray, label: np.ndarray, p_true: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per equal-mass bin of the prediction: its mean, the observed click rate, the truth's mean."""
    order = np.argsort(p, kind="stable")
    return [
        {
            "impressions": int(b.size),
            "mean_prediction": round(float(p[b].mean()), 6),
            "click_rate": round(float(label[b].mean()), 6),
            "mean_true_p": round(float(p_true[b].mean()), 6),
        }
        for b in np.array_split(order, bins)
        if b.size
    ]


# ---- training --------------------------------------------------------------------------------


def _flat_logits(net: Any, users: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return net.logits(users, x[:, None, :])[:, 0]


def _logits_of(net: Any, users: np.ndarray, x: np.ndarray) -> np.ndarray:
    import torch

    net.eval()
    with torch.no_grad():
        out = [_flat_logits(net, torch.from_numpy(users[i : i + 8192]), torch.from_numpy(x[i : i + 8192])) for i in range(0, len(x), 8192)]
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def platt(logit: np.ndarray, label: np.ndarray, iters: int = 50) -> tuple[float, float]:
    """(scale, bias) minimising the log loss of sigmoid(scale * logit + bias): Newton's method."""
    a, b = 1.0, 0.0
    y = label.astype(np.float64)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(a * logit + b)))
        g = np.array([np.sum((p - y) * logit), np.sum(p - y)])
        w = p * (1 - p)
        h = np.array([[np.sum(w * logit * logit), np.sum(w * logit)], [np.sum(w * logit), np.sum(w)]]) + 1e-6 * np.eye(2)
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(a), float(b)


def train_ad_ctr(
    user_vectors: np.ndarray,
    features: np.ndarray,
    imp: AdImpressions,
    table: AdFeatureTable,
    hidden: int = 32,
    epochs: int = 40,
    patience: int = 4,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> AdCtrModel:
    """Train on the TRAIN phase, early stop and calibrate on VALID, report on TEST.

    ``user_vectors``: (R, d_user), one per request; ``features``: (N, F), one row per impression."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows = {ph: imp.rows(ph) for ph in Phase}
    u_rows = {ph: np.ascontiguousarray(user_vectors[imp.request[r]], dtype=np.float32) for ph, r in rows.items()}
    x_rows = {ph: np.ascontiguousarray(features[r], dtype=np.float32) for ph, r in rows.items()}
    y_rows = {ph: imp.click[r].astype(np.float32) for ph, r in rows.items()}
    net = network(user_vectors.shape[1], features.shape[1], hidden)
    net.set_normalisation(user_vectors[np.unique(imp.request[rows[Phase.TRAIN]])], x_rows[Phase.TRAIN])
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    tu, tx, ty = (torch.from_numpy(a) for a in (u_rows[Phase.TRAIN], x_rows[Phase.TRAIN], y_rows[Phase.TRAIN]))
    best, best_epoch, bad, state, history = math.inf, 0, 0, None, []
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        net.train()
        total = 0.0
        order = torch.from_numpy(rng.permutation(ty.numel()))
        for i in range(0, ty.numel(), BATCH):
            idx = order[i : i + BATCH]
            loss = loss_fn(_flat_logits(net, tu[idx], tx[idx]), ty[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * idx.numel()
        val = log_loss(1 / (1 + np.exp(-_logits_of(net, u_rows[Phase.VALID], x_rows[Phase.VALID]))), y_rows[Phase.VALID])
        history.append({"epoch": epoch, "train_loss": round(total / max(ty.numel(), 1), 5), "validation_log_loss": round(val, 5)})
        if val < best - 1e-5:
            best, best_epoch, bad = val, epoch, 0
            state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    assert state is not None
    net.load_state_dict(state)
    net.eval()
    log(f"  pCTR network: kept epoch {best_epoch} of {len(history)} (validation log loss {best:.4f}, {time.perf_counter() - t0:.1f}s)")

    val_logit = _logits_of(net, u_rows[Phase.VALID], x_rows[Phase.VALID])
    scale, bias = platt(val_logit, y_rows[Phase.VALID])
    net.calib_scale.fill_(scale)
    net.calib_bias.fill_(bias)

    test = rows[Phase.TEST]
    test_logit = _logits_of(net, u_rows[Phase.TEST], x_rows[Phase.TEST])
    model_p = 1 / (1 + np.exp(-(scale * test_logit + bias)))
    report = {
        "features": list(AD_FEATURES),
        "d_user": int(user_vectors.shape[1]),
        "hidden": hidden,
        "truth": asdict(imp.truth),
        "impressions": {ph.name.lower(): {"impressions": int(r.size), "clicks": int(imp.click[r].sum())} for ph, r in rows.items()},
        "test": held_out_scores(model_p, imp, test, table.category.size, {"model_uncalibrated": 1 / (1 + np.exp(-test_logit))}),
        "calibration": {"method": "platt on validation users", "scale": round(scale, 6), "bias": round(bias, 6)},
        "early_stopping": {"best_epoch": best_epoch, "epochs_run": len(history), "patience": patience, "validation": history},
        "ece_bins": ECE_BINS,
        "serving_position": 0,
    }
    return AdCtrModel(net, table, report)


def run_impressions(ds: Dataset, split: Split, cfg: Config) -> AdImpressions:
    """The impressions a run trains on (``cfg.ads.ctr_*``, ``cfg.train.seed``): the bench
    regenerates the same ones."""
    ac = cfg.ads
    return generate_impressions(
        ds, split, cfg.train.seed, ac.ctr_requests_per_user, ac.ctr_warmup_requests, ac.ctr_slots, cfg.pipeline.max_history_events
    )


def fit_for_run(bundle: ModelBundle, ds: Dataset, split: Split, cfg: Config, log: Callable[[str], None] = print) -> AdCtrModel | None:
    """The run's pCTR model: impressions of the run's data, user vectors from its encoder. None
    (with a message) when the catalogue has too few ads (MovieLens input has none)."""
    n_ads = int((ds.item_metadata.kind == ItemKind.AD).sum())
    ac = cfg.ads
    if n_ads < max(ac.ctr_slots, 10):
        log(f"  {n_ads} ads in the catalogue: no pCTR model")
        return None
    imp = run_impressions(ds, split, cfg)
    log(f"  {len(imp)} impressions of {n_ads} ads over {imp.request_user.size} requests, CTR {imp.click.mean():.4f}")
    t0 = time.perf_counter()
    users = request_user_vectors(bundle, ds, imp)
    table = feature_table(ds, imp)
    feats = impression_features(ds, imp, table)
    log(f"  user vectors and features in {time.perf_counter() - t0:.1f}s")
    model = train_ad_ctr(users, feats, imp, table, ac.ctr_hidden, ac.ctr_epochs, ac.ctr_patience, cfg.train.seed, log)
    t = model.report["test"]
    log(
        "  pCTR on held-out users: "
        + ", ".join(
            f"{k} AUC {v['auc']:.4f} log loss {v['log_loss']:.4f} ECE {v['ece']:.4f}" for k, v in t.items() if k != "model_uncalibrated"
        )
    )
    return model


# ---- files -----------------------------------------------------------------------------------


def export_onnx(model: Any, path: Path) -> None:
    """The ``ad_ctr`` graph: user_vector [batch, d_user], ad_features [batch, ads, F] -> pctr [batch, ads]."""
    import onnx
    import torch

    net = model.net if isinstance(model, AdCtrModel) else model
    net.eval()
    args = (torch.zeros(2, net.d_user), torch.zeros(2, 3, net.n_features))
    with torch.no_grad():
        torch.onnx.export(
            net,
            args,
            str(path),
            input_names=["user_vector", "ad_features"],
            output_names=["pctr"],
            dynamic_axes={"user_vector": {0: "batch"}, "ad_features": {0: "batch", 1: "ads"}, "pctr": {0: "batch", 1: "ads"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)))


def onnx_parity(model: AdCtrModel, path: Path, seed: int = 0) -> float:
    """Max |onnxruntime - PyTorch| of the file at ``path`` over random inputs of a few shapes."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    err = 0.0
    for b, a in ((1, 1), (1, 7), (4, 33), (16, 256)):
        u = rng.normal(size=(b, model.d_user)).astype(np.float32)
        x = rng.normal(size=(b, a, model.net.n_features)).astype(np.float32)
        (got,) = sess.run(None, {"user_vector": u, "ad_features": x})
        err = max(err, float(np.abs(got - model.predict(u, x)).max()))
    return err


def save(model: AdCtrModel, run_dir: Path) -> dict:
    """Write the run files; returns the report (with the ONNX parity) for metrics.json."""
    import torch

    run_dir = Path(run_dir)
    torch.save(model.net.state_dict(), run_dir / "ad_ctr.pt")
    model.table.save(run_dir / "ad_ctr.npz")
    export_onnx(model, run_dir / "ad_ctr.onnx")
    model.report["onnx_max_abs_err"] = onnx_parity(model, run_dir / "ad_ctr.onnx")
    (run_dir / "ad_ctr.json").write_text(json.dumps(model.report, indent=2) + "\n")
    return model.report


def load(run_dir: str | Path) -> AdCtrModel:
    """The run's pCTR model (``ad_ctr.pt``, ``ad_ctr.npz``, ``ad_ctr.json``)."""
    run_dir = Path(run_dir)
    if not (run_dir / "ad_ctr.json").exists():
        raise FileNotFoundError(f"{run_dir} has no pCTR model (ad_ctr.json); train the run with genrec-train")
    report = json.loads((run_dir / "ad_ctr.json").read_text())
    if tuple(report["features"]) != AD_FEATURES:
        raise ValueError(f"{run_dir}/ad_ctr.json was trained on features {report['features']}, this code builds {list(AD_FEATURES)}")
    import torch

    net = network(int(report["d_user"]), N_FEATURES, int(report["hidden"]))
    net.load_state_dict(torch.load(run_dir / "ad_ctr.pt", weights_only=True))
    net.eval()
    return AdCtrModel(net, AdFeatureTable.load(run_dir / "ad_ctr.npz"), report)
