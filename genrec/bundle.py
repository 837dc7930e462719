"""A trained run folder, loaded: every model and table the request path needs.

Layout of ``artifacts/runs/<config>-<NNN>/``::

    config.json          the full Config
    manifest.json        data set, data hash, versions, creation time, training times
    metrics.json         semantic-ID report, training losses, evaluation (when run)
    item_features.npy    RQ-VAE input (content + collaborative)
    semantic_ids.npz     codes (n, 3) and disambiguation index (n,)
    item_table.npz       category, author, kind, log popularity, item-to-item transitions
    rqvae.pt encoder.pt decoder.pt sasrec.pt ranker.txt
    pipeline.json        fitted pre-rank weight
    target_prerank.{pt,json}  the target-aware pre-ranker (absent in runs trained before it)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import torch

from genrec.ensemble.catalogue import Catalogue
from genrec.ensemble.ranking_features import ItemTable
from genrec.models.moe_decoder import MoEDecoder
from genrec.models.rqvae import SemanticIds, codebook_triple
from genrec.models.sasrec import SASRec
from genrec.models.target_prerank import TargetPrerank
from genrec.models.target_prerank import load as load_target_prerank
from genrec.models.ugt_encoder import UGTEncoder
from genrec.settings import Config, config_from_dict


@dataclass
class ModelBundle:
    path: Path
    cfg: Config
    encoder: UGTEncoder
    decoder: MoEDecoder
    sasrec: SASRec | None
    ranker: lgb.Booster | None
    prerank_weight: float
    items: ItemTable
    semantic_ids: SemanticIds
    item_vectors: np.ndarray  # (n_items, d) published to the ANN index
    n_devices: int
    n_segments: int
    manifest: dict
    target_prerank: TargetPrerank | None = None  # None: the run pre-ranks by "dot" only

    @property
    def n_items(self) -> int:
        return int(self.items.category.shape[0])

    def catalogue(self) -> Catalogue:
        """The request path's view of this run (trie, item vectors, item table, popularity order),
        the same type the served ``recommend`` loads from its published ``catalogue.npz``."""
        return Catalogue.from_bundle(self)

    def refresh_item_vectors(self) -> None:
        with torch.no_grad():
            self.item_vectors = self.encoder.item_embeddings().numpy().astype(np.float32)


def build_models(
    cfg: Config, item_features: np.ndarray, sem: SemanticIds, n_segments: int, n_devices: int
) -> tuple[UGTEncoder, MoEDecoder]:
    enc = UGTEncoder(cfg.encoder, item_features, sem.codes, sem.codebook_sizes, n_segments, n_devices)
    dec = MoEDecoder(cfg.decoder, sem.codebook_sizes, cfg.encoder.d_model)
    return enc, dec


def sasrec_for(cfg: Config, n_items: int) -> SASRec:
    return SASRec(n_items, cfg.encoder.d_model, 2, cfg.encoder.n_heads, cfg.train.max_train_events)


def load_bundle(path: str | Path) -> ModelBundle:
    path = Path(path)
    if not (path / "manifest.json").exists():
        raise FileNotFoundError(f"{path} is not a trained run folder (no manifest.json); train one with genrec-train")
    cfg = config_from_dict(json.loads((path / "config.json").read_text()))
    manifest = json.loads((path / "manifest.json").read_text())
    feats = np.load(path / "item_features.npy")
    s = np.load(path / "semantic_ids.npz")
    sem = SemanticIds(s["codes"], s["disambiguation"], codebook_triple(s["codebook_sizes"]))
    t = np.load(path / "item_table.npz")
    items = ItemTable.from_arrays(t)
    enc, dec = build_models(cfg, feats, sem, manifest["n_segments"], manifest["n_devices"])
    enc.load_state_dict(torch.load(path / "encoder.pt", weights_only=True))
    dec.load_state_dict(torch.load(path / "decoder.pt", weights_only=True))
    enc.eval()
    dec.eval()
    sasrec = None
    if (path / "sasrec.pt").exists():
        sasrec = sasrec_for(cfg, items.category.shape[0])
        sasrec.load_state_dict(torch.load(path / "sasrec.pt", weights_only=True))
        sasrec.eval()
    ranker = lgb.Booster(model_file=str(path / "ranker.txt")) if (path / "ranker.txt").exists() else None
    pipeline = json.loads((path / "pipeline.json").read_text()) if (path / "pipeline.json").exists() else {"prerank_weight": 1.0}
    b = ModelBundle(
        path,
        cfg,
        enc,
        dec,
        sasrec,
        ranker,
        float(pipeline["prerank_weight"]),
        items,
        sem,
        np.zeros((0, 0), dtype=np.float32),
        manifest["n_devices"],
        manifest["n_segments"],
        manifest,
        load_target_prerank(path),
    )
    b.refresh_item_vectors()
    return b
