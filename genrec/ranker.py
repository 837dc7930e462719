"""LightGBM lambdarank ranker over the cascade's (user, candidate) features."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np

from genrec.ensemble.ranking_features import FEATURE_NAMES, N_FEATURES
from genrec.errors import InvalidValueError


def check_features(features: np.ndarray) -> np.ndarray:
    """The ranker's input contract: (n, N_FEATURES) finite float32."""
    if features.ndim != 2 or features.shape[1] != N_FEATURES:
        raise InvalidValueError("features", f"expected shape (n, {N_FEATURES}), got {features.shape}")
    bad = ~np.isfinite(features)
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise InvalidValueError("features", f"NaN or infinity in {FEATURE_NAMES[cols[0]]} of candidate {rows[0]} ({bad.sum()} values)")
    return features.astype(np.float32, copy=False)


def train_ranker(features: list[np.ndarray], labels: list[np.ndarray], rounds: int, seed: int = 0, threads: int = 2) -> lgb.Booster:
    """One group per request; groups without a positive carry no ranking signal and are dropped."""
    keep = [i for i, y in enumerate(labels) if y.any()]
    if not keep:
        raise ValueError("no request has its target among the candidates: nothing to learn from")
    x = check_features(np.concatenate([features[i] for i in keep]))
    y = np.concatenate([labels[i] for i in keep]).astype(np.int32)
    data = lgb.Dataset(x, y, group=[len(labels[i]) for i in keep], feature_name=list(FEATURE_NAMES), free_raw_data=False)
    params = {
        "objective": "lambdarank",
        "metric": "ndcg",
        "ndcg_eval_at": [10],
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_data_in_leaf": 20,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "seed": seed,
        "deterministic": True,
        "num_threads": threads,
        "verbosity": -1,
    }
    return lgb.train(params, data, num_boost_round=rounds)
