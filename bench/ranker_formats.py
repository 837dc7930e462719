"""Ranker format comparison, side by side in one run: LightGBM itself, onnxmltools' ONNX
(TreeEnsemble op in onnxruntime), and hummingbird's tensor forms (ONNX via onnxruntime, and
TorchScript). Prints p50 latency at batch 1 and 100 and parity, writes
``bench/results/ranker_formats.json``.

    python -m bench.ranker_formats --run artifacts/runs/small-001

hummingbird-ml pins an older onnx, so it is not in requirements.txt: install it in a scratch
virtualenv (``pip install hummingbird-ml``) to rerun this.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from genrec.artifacts import machine, now_iso, versions, write_json
from genrec.bundle import load_bundle
from genrec.ensemble.ranking_features import N_FEATURES
from genrec.exporters.onnx_export import export_ranker, p50_ms, session


def _p50(fn, x, runs: int = 200) -> float:
    for _ in range(10):
        fn(x)
    t = []
    for _ in range(runs):
        s = time.perf_counter()
        fn(x)
        t.append((time.perf_counter() - s) * 1e3)
    return float(np.median(t))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("bench/results/ranker_formats.json"))
    a = p.parse_args()
    import hummingbird.ml
    import torch

    torch.set_num_threads(2)
    b = load_bundle(a.run)
    rng = np.random.default_rng(0)
    x100 = rng.normal(size=(100, N_FEATURES)).astype(np.float32)
    x1 = x100[:1]
    ref = b.ranker.predict(x100)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ranker.onnx"
        export_ranker(b, path, x100)
        s = session(path)
        rows.append(
            {
                "format": "onnxmltools ONNX (onnxruntime)",
                "p50_ms_batch1": p50_ms(s, {"features": x1}, 200),
                "p50_ms_batch100": p50_ms(s, {"features": x100}, 200),
                "max_abs_err": float(np.abs(s.run(None, {"features": x100})[0][:, 0] - ref).max()),
            }
        )
        rows.append(
            {
                "format": "LightGBM predict",
                "p50_ms_batch1": _p50(lambda x: b.ranker.predict(x, num_threads=2), x1),
                "p50_ms_batch100": _p50(lambda x: b.ranker.predict(x, num_threads=2), x100),
                "max_abs_err": 0.0,
            }
        )
        for backend in ("onnx", "torch"):
            try:
                hb = hummingbird.ml.convert(b.ranker, backend, x100)
                pred = np.asarray(hb.predict(x100)).reshape(-1)
                rows.append(
                    {
                        "format": f"hummingbird {backend}",
                        "p50_ms_batch1": _p50(hb.predict, x1),
                        "p50_ms_batch100": _p50(hb.predict, x100),
                        "max_abs_err": float(np.abs(pred - ref).max()),
                    }
                )
            except Exception as e:  # noqa: BLE001 - a format that fails is a result too
                rows.append({"format": f"hummingbird {backend}", "error": str(e).splitlines()[0][:200]})
    for r in rows:
        print(r)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, {"rows": rows, "run": str(a.run), "created": now_iso(), "versions": versions(), "machine": machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
