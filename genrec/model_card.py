"""Parameter counts and FLOPs per request for every named configuration.

    genrec-model-card                 # all configs, table + bench/results/model_card.json
    genrec-model-card --config full

FLOPs count multiply-adds as 2 and cover the matmuls (the elementwise work is small beside
them): the encoder over a history of L events (2L+2 tokens; with compression each query sees at
most ``recent + block + slots + 1`` keys), the decoder's cross K/V once per request plus one
step per beam (step 0: 1 beam, step 1: w1, step 2: w2, routed MoE: top-k of E experts), and
the ranker over 100 candidates (one comparison per tree level, counted as 1 FLOP). The opt-in
target-aware pre-ranker (``pipeline.prerank = "target_attention"``) is counted apart, over the
``max_candidates`` merged candidates: K/V of the memory once, then per candidate its query,
item and output projections, attention over the memory and the scoring MLP.
The full configuration is built on PyTorch's meta device, so nothing is allocated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from genrec.artifacts import machine, now_iso, versions, write_json
from genrec.models.moe_decoder import MoEDecoder
from genrec.models.sasrec import SASRec
from genrec.models.target_prerank import TargetPrerank, spec_for
from genrec.models.ugt_encoder import UGTEncoder
from genrec.settings import NAMED_CONFIGS, Config, named_config

HISTORY_LENGTHS = (256, 1024, 4096)
RANKER_CANDIDATES = 100
RANKER_DEPTH = 8  # levels a 31-leaf tree walks at most


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def encoder_flops(cfg: Config, events: int, compression: bool) -> float:
    e = cfg.encoder
    d, n = e.d_model, 2 * events + 2
    if compression:
        keys = np.minimum(np.arange(1, n + 1), e.recent_tokens + e.block_tokens + e.slots + 1).sum()
    else:
        keys = n * (n + 1) / 2
    per_layer = n * (2 * d * 4 * d + 2 * d * d) + 2 * 2 * keys * d
    return float(e.n_layers * per_layer + n * 2 * d * d)


def memory_size(cfg: Config, events: int, compression: bool) -> int:
    e = cfg.encoder
    n = 2 * events + 2
    return min(n, e.recent_tokens + e.block_tokens + e.slots + 1) if compression else n


def decoder_flops(cfg: Config, memory: int) -> dict[str, float]:
    dc = cfg.decoder
    d = dc.d_model
    widths = (1, *cfg.pipeline.beam_widths[:2])
    ks = cfg.semantic_id.codebook_sizes
    cross_kv = dc.n_layers * memory * 2 * d * 2 * d
    out = {"cross_kv_once": float(cross_kv)}
    for step, (w, k) in enumerate(zip(widths, ks)):
        per_token = (
            dc.n_layers
            * (
                2 * d * 3 * d
                + 2 * d * d  # self-attention projections
                + 2 * 2 * (step + 1) * d  # self-attention over the step's past
                + 2 * d * d * 2
                + 2 * 2 * memory * d  # cross q/out + attention over memory
                + 2 * d * dc.n_experts
                + dc.top_k * 2 * 2 * d * dc.expert_hidden  # gate + routed experts
            )
            + 2 * d * k
        )
        out[f"step{step}_beams{w}"] = float(w * per_token)
    out["total"] = float(sum(out.values()))
    return out


def target_prerank_flops(cfg: Config, memory: int) -> float:
    """The target-aware pre-ranker over ``pipeline.max_candidates``, as ``genrec.train`` builds it."""
    with torch.device("meta"):
        model = TargetPrerank(spec_for(cfg.encoder.d_model, cfg.encoder.n_heads))
    return float(model.flops_per_request(memory, cfg.pipeline.max_candidates))


def card(cfg: Config) -> dict:
    sid = cfg.semantic_id
    n_items = cfg.data.n_items
    content = np.zeros((n_items, sid.content_dim + sid.collab_dim), dtype=np.float32)
    codes = np.zeros((n_items, 3), dtype=np.int64)
    with torch.device("meta"):
        enc = UGTEncoder(cfg.encoder, content, codes, sid.codebook_sizes, cfg.data.n_segments, cfg.data.n_devices)
        dec = MoEDecoder(cfg.decoder, sid.codebook_sizes, cfg.encoder.d_model)
        sas = SASRec(n_items, cfg.encoder.d_model, 2, cfg.encoder.n_heads, cfg.train.max_train_events)
    id_params = _params(enc.id_emb) if enc.id_emb is not None else 0
    dense_expert = 2 * cfg.decoder.d_model * cfg.decoder.expert_hidden
    flops = {}
    for events in HISTORY_LENGTHS:
        for compression in (True, False):
            mem = memory_size(cfg, events, compression)
            tag = f"L{events}_{'compressed' if compression else 'exact'}"
            dec_f = decoder_flops(cfg, mem)
            enc_f = encoder_flops(cfg, events, compression)
            rank_f = float(RANKER_CANDIDATES * cfg.train.ranker_rounds * RANKER_DEPTH)
            flops[tag] = {
                "encoder": enc_f,
                "decoder": dec_f["total"],
                "decoder_steps": dec_f,
                "memory_entries": mem,
                "ranker": rank_f,
                "total": enc_f + dec_f["total"] + rank_f,
                "target_prerank": target_prerank_flops(cfg, mem),  # opt-in, not in the total
            }
    return {
        "config": cfg.name,
        "params": {
            "encoder": _params(enc),
            "encoder_item_id_table": id_params,
            "decoder": _params(dec),
            "decoder_active_per_token": _params(dec)
            - cfg.decoder.n_layers
            * (cfg.decoder.n_experts - cfg.decoder.top_k)
            * (dense_expert + cfg.decoder.expert_hidden + cfg.decoder.d_model),
            "sasrec_baseline": _params(sas),
        },
        "codebooks": list(sid.codebook_sizes),
        "beam_widths": list(cfg.pipeline.beam_widths),
        "flops_per_request": flops,
    }


def _fmt(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="genrec-model-card", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", help="a named config (repeatable; default: all)")
    p.add_argument(
        "--out", type=Path, default=Path("bench/results/model_card.json"), help="JSON output (default bench/results/model_card.json)"
    )
    a = p.parse_args(argv)
    cards = [card(named_config(n, environ={})) for n in (a.config or list(NAMED_CONFIGS))]
    print(
        "| config | encoder params | decoder params (active/token) | FLOPs/request L=256 (enc + dec + rank) | L=4096 compressed | L=4096 exact |"
    )
    print("|---|---|---|---|---|---|")
    for c in cards:
        pr, f = c["params"], c["flops_per_request"]
        print(
            f"| {c['config']} | {_fmt(pr['encoder'])} | {_fmt(pr['decoder'])} ({_fmt(pr['decoder_active_per_token'])}) | "
            f"{_fmt(f['L256_compressed']['total'])} ({_fmt(f['L256_compressed']['encoder'])} + {_fmt(f['L256_compressed']['decoder'])} + {_fmt(f['L256_compressed']['ranker'])}) | "
            f"{_fmt(f['L4096_compressed']['total'])} | {_fmt(f['L4096_exact']['total'])} |"
        )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, {"cards": cards, "created": now_iso(), "versions": versions(), "machine": machine()})
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
