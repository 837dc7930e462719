"""The ads' pCTR model of a run, on its held-out users' impressions: AUC, log loss and expected
calibration error of the network (PyTorch and its ONNX graph), of the trivial baseline (the ad's
smoothed average CTR in training) and of the ground truth (the ceiling), plus the mean
|pCTR - true p| and a reliability table. Writes ``bench/results/ad_ctr.json``.

    python -m bench.ad_ctr                               # latest small run, else latest tiny
    python -m bench.ad_ctr --run artifacts/runs/small-001

The impressions, user vectors and feature rows are rebuilt exactly as ``genrec-train`` built them
(same data hash, seed and settings), so the figures must equal the run's ``ad_ctr.json``; the
script says so, or fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from genrec import ad_ctr
from genrec.artifacts import latest_run, machine, now_iso, versions, write_json
from genrec.bundle import load_bundle
from genrec.data.ad_impressions import Phase
from genrec.data.split import leave_last_out

ROWS = ("model", "model_onnx", "model_shuffled_user_vector", "model_uncalibrated", "baseline_ad_ctr", "truth")


def default_run() -> Path:
    try:
        return latest_run(name="small")
    except FileNotFoundError:
        return latest_run(name="tiny")


def _onnx_latency_ms(path: Path, d_user: int, ads: int, runs: int = 200) -> float:
    from genrec.exporters.onnx_export import p50_ms, session

    rng = np.random.default_rng(0)
    feeds = {
        "user_vector": rng.normal(size=(1, d_user)).astype(np.float32),
        "ad_features": rng.normal(size=(1, ads, len(ad_ctr.AD_FEATURES))).astype(np.float32),
    }
    return p50_ms(session(path, threads=1), feeds, runs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ad_ctr", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=None, help="trained run folder (default: latest small run, else latest tiny)")
    p.add_argument("--out", type=Path, default=Path("bench/results/ad_ctr.json"))
    a = p.parse_args(argv)
    import onnxruntime as ort
    import torch

    from genrec.evaluate import dataset_of

    torch.set_num_threads(2)
    run = a.run or default_run()
    t0 = time.perf_counter()
    print(f"[ad_ctr] {run}", flush=True)
    model = ad_ctr.load(run)
    bundle = load_bundle(run)
    ds = dataset_of(bundle)
    imp = ad_ctr.run_impressions(ds, leave_last_out(ds.events), bundle.cfg)
    users = ad_ctr.request_user_vectors(bundle, ds, imp)
    feats = ad_ctr.impression_features(ds, imp, model.table)
    test = imp.rows(Phase.TEST)
    u, x = users[imp.request[test]], feats[test][:, None, :]
    pred = model.predict(u, x)[:, 0]
    with torch.no_grad():
        logit = model.net.logits(torch.from_numpy(u), torch.from_numpy(x)).numpy()[:, 0].astype(np.float64)
    sess = ort.InferenceSession(str(run / "ad_ctr.onnx"), providers=["CPUExecutionProvider"])
    onnx_pred = np.concatenate(
        [sess.run(None, {"user_vector": u[i : i + 4096], "ad_features": x[i : i + 4096]})[0][:, 0] for i in range(0, len(test), 4096)]
    )
    # the user vector's share: each held-out request given another held-out request's user vector
    req = np.unique(imp.request[test])
    shuffled = dict(zip(req.tolist(), np.random.default_rng(0).permutation(req).tolist()))
    u_other = users[np.array([shuffled[r] for r in imp.request[test].tolist()])]
    others = {
        "model_onnx": onnx_pred,
        "model_shuffled_user_vector": model.predict(u_other, x)[:, 0],
        "model_uncalibrated": 1 / (1 + np.exp(-logit)),
    }
    scores = ad_ctr.held_out_scores(pred, imp, test, ds.item_metadata.n_items, others)
    trained = model.report["test"]
    same = all(abs(scores[k][m] - v) <= 1e-5 for k in trained for m, v in trained[k].items())
    print(f"{'predictor':<28}{'AUC':>8}{'log loss':>10}{'ECE':>9}{'|p - p_true|':>14}{'mean p':>9}")
    for k in ROWS:
        s = scores[k]
        print(
            f"{k:<28}{s['auc']:>8.4f}{s['log_loss']:>10.4f}{s['ece']:>9.4f}{s['mean_abs_error_vs_truth']:>14.4f}{s['mean_prediction']:>9.4f}"
        )
    m, b = scores["model"], scores["baseline_ad_ctr"]
    beats = m["auc"] > b["auc"] and m["log_loss"] < b["log_loss"]
    onnx_err = float(np.abs(onnx_pred - pred).max())
    print(
        f"held-out impressions {test.size} (clicks {int(imp.click[test].sum())}); model beats baseline: {beats}; "
        f"ONNX max |diff| {onnx_err:.2e}; equal to the run's ad_ctr.json: {same}"
    )
    result = {
        "created": now_iso(),
        "run": str(run),
        "config": bundle.cfg.name,
        "data_hash": bundle.manifest.get("data_hash"),
        "features": list(ad_ctr.AD_FEATURES),
        "d_user": model.d_user,
        "serving_position": 0,
        "truth": model.report["truth"],
        "impressions": model.report["impressions"],
        "ece_bins": ad_ctr.ECE_BINS,
        "ece_note": "ECE over equal-mass bins of the prediction; mean_abs_error_vs_truth = mean |pCTR - true p| per impression",
        "test": {k: scores[k] for k in ROWS},
        "model_beats_baseline": bool(beats),
        "calibration": model.report["calibration"],
        "reliability_model": ad_ctr.reliability(pred, imp.click[test], imp.p_true[test]),
        "reliability_baseline": ad_ctr.reliability(
            ad_ctr.baseline_ctr(imp, test, ds.item_metadata.n_items), imp.click[test], imp.p_true[test]
        ),
        "onnx": {
            "max_abs_err_vs_pytorch": onnx_err,
            "tolerance": ad_ctr.ONNX_TOLERANCE,
            "p50_ms_1x256_ads_1_thread": round(_onnx_latency_ms(run / "ad_ctr.onnx", model.d_user, 256), 4),
        },
        "equal_to_run_report": bool(same),
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine(),
        "versions": versions(),
    }
    write_json(a.out, result)
    print(f"wrote {a.out}")
    return 0 if beats and same and onnx_err <= ad_ctr.ONNX_TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
