"""The exporter's summary: per model size, parity and onnxruntime latency at batch 1 and at a
typical batch, plus the CPU speed levers (graph optimisation level, threads, int8 dynamic
quantisation) measured side by side. Written to ``bench/results/exporters.json``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genrec.artifacts import machine, now_iso, versions, write_json
from genrec.ensemble.ranking_features import N_FEATURES
from genrec.exporters.onnx_export import p50_ms, session
from genrec.settings import Config

OPT_LEVELS = ("disabled", "basic", "all")


def representative_feeds(cfg: Config) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """{model: {"batch1": feeds, "typical": feeds}} shaped like the request path's calls."""
    rng = np.random.default_rng(0)
    e, dc = cfg.encoder, cfg.decoder
    d, layers = e.d_model, e.n_layers
    ctx = e.recent_tokens + e.block_tokens + e.slots + 1  # a compressed returning user's context

    def enc(g: int) -> dict[str, np.ndarray]:
        return {
            "item": rng.integers(0, 100, g).astype(np.int64),
            "action": np.zeros(g, np.int64),
            "device": np.zeros(g, np.int64),
            "types": np.full(g, 1, np.int64),
            "time": 1.7e9 + np.arange(g, dtype=np.float64),
            "pos": ctx + np.arange(g, dtype=np.int64),
            "segment": np.zeros(1, np.int64),
            "ctx_k": rng.normal(size=(layers, ctx, d)).astype(np.float32),
            "ctx_v": rng.normal(size=(layers, ctx, d)).astype(np.float32),
            "ctx_w": np.ones((g, ctx), np.float32),
            "ctx_pos": np.arange(ctx, dtype=np.float64),
            "ctx_time": 1.7e9 - np.arange(ctx, dtype=np.float64)[::-1],
        }

    dh = dc.d_model // dc.n_heads
    w0, w1, _ = cfg.pipeline.beam_widths

    def step(s: int, wp: int, w: int, r: int = 1, m: int = ctx) -> dict[str, np.ndarray]:
        return {
            "step": np.array([s], np.int64),
            "codes": np.zeros((r, w), np.int64),
            "parents": rng.integers(0, wp, (r, w)).astype(np.int64),
            "past_k": rng.normal(size=(dc.n_layers, r, wp, dc.n_heads, s, dh)).astype(np.float32),
            "past_v": rng.normal(size=(dc.n_layers, r, wp, dc.n_heads, s, dh)).astype(np.float32),
            "cross_k": rng.normal(size=(dc.n_layers, r, dc.n_heads, m, dh)).astype(np.float32),
            "cross_v": rng.normal(size=(dc.n_layers, r, dc.n_heads, m, dh)).astype(np.float32),
            "cross_bias": np.zeros((r, m), np.float32),
        }

    def prerank(n: int, m: int) -> dict[str, np.ndarray]:
        from genrec.ensemble.cascade import PRERANK_FEATURES

        return {
            "memory": rng.normal(size=(m, d)).astype(np.float32),
            "memory_logw": np.zeros(m, np.float32),
            "item_vectors": rng.normal(size=(n, d)).astype(np.float32),
            "features": rng.normal(size=(n, len(PRERANK_FEATURES))).astype(np.float32),
        }

    return {
        "ugt_encoder": {"batch1": enc(1), "typical": enc(e.block_tokens)},
        "decoder_cross_kv": {
            "batch1": {"memory": rng.normal(size=(1, ctx, d)).astype(np.float32)},
            "typical": {"memory": rng.normal(size=(8, ctx, d)).astype(np.float32)},
        },
        "decoder_step": {"batch1": step(0, 1, 1), "typical": step(2, w0, w1)},
        "ranker": {
            "batch1": {"features": rng.normal(size=(1, N_FEATURES)).astype(np.float32)},
            "typical": {"features": rng.normal(size=(cfg.pipeline.prerank_keep, N_FEATURES)).astype(np.float32)},
        },
        # one candidate, and one microbatch of candidates, against a returning user's memory (+ CTX)
        "target_prerank": {
            "batch1": prerank(1, ctx + 1),
            "typical": prerank(min(cfg.pipeline.prerank_microbatch, cfg.pipeline.max_candidates), ctx + 1),
        },
    }


def quantize_int8(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return dst


def summarize(cfg: Config, exported: dict[str, tuple[Path, dict]], work: Path) -> dict:
    feeds = representative_feeds(cfg)
    rows, levers = [], []
    for model, (path, parity) in exported.items():
        sess = session(path)
        rows.append(
            {
                "model": model,
                "format": "onnx",
                "bytes": path.stat().st_size,
                "max_abs_err": parity["max_abs_err"],
                "max_rel_err": parity["max_rel_err"],
                "p50_ms": {"batch1": p50_ms(sess, feeds[model]["batch1"]), "typical": p50_ms(sess, feeds[model]["typical"])},
            }
        )
        typical = feeds[model]["typical"]
        base = sess.run(None, typical)
        for level in OPT_LEVELS:
            for threads in (1, 2):
                s = session(path, threads=threads, opt_level=level)
                levers.append(
                    {
                        "model": model,
                        "lever": f"opt={level},threads={threads}",
                        "p50_ms": p50_ms(s, typical),
                        "max_abs_err": _err(base, s.run(None, typical)),
                    }
                )
        if model in ("ugt_encoder", "decoder_step", "decoder_cross_kv"):
            q = quantize_int8(path, work / f"{model}.int8.onnx")
            s = session(q)
            levers.append(
                {
                    "model": model,
                    "lever": "int8-dynamic,opt=all,threads=2",
                    "bytes": q.stat().st_size,
                    "p50_ms": p50_ms(s, typical),
                    "max_abs_err": _err(base, s.run(None, typical)),
                }
            )
    return {"rows": rows, "cpu_levers": levers, "config": cfg.name, "created": now_iso(), "versions": versions(), "machine": machine()}


def _err(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(max((np.abs(x.astype(np.float64) - y).max() if x.size else 0.0) for x, y in zip(a, b)))


def print_table(summary: dict) -> None:
    print("| model | bytes | max abs err | max rel err | p50 ms batch 1 | p50 ms typical |")
    print("|---|---|---|---|---|---|")
    for r in summary["rows"]:
        print(
            f"| {r['model']} | {r['bytes']:,} | {r['max_abs_err']:.2e} | {r['max_rel_err']:.2e} | {r['p50_ms']['batch1']:.3f} | {r['p50_ms']['typical']:.3f} |"
        )


def write_summary(summary: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, summary)
