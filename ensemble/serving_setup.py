"""Build the ``recommend`` model's pipeline from one published version folder.

A ``recommend`` version holds ``model.py`` (the Triton adapter), ``catalogue.npz`` and
``serving.json``: the run's Config and the version of each ONNX graph it was published with.
Pinning the graph versions keeps the catalogue (semantic IDs, item vectors) and the graphs from
the same run together while a new run's versions are being loaded.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from genrec.contracts import TARGET_PRERANK, pinnable_contracts
from genrec.ensemble.catalogue import Catalogue
from genrec.ensemble.encoder_cache import EncoderCache
from genrec.ensemble.onnx_decoder import Runner
from genrec.ensemble.retrieval import AnnIndex, ExactIndex, FailSoftIndex
from genrec.ensemble.serving_pipeline import ServingPipeline, StateCache
from genrec.settings import AnnBackend, Config, Execution, StateStore, config_from_dict, deployed, env_overrides, with_overrides

SERVING_FILE = "serving.json"


@dataclass(frozen=True)
class ServingSetup:
    cfg: Config
    pinned: dict[str, int]  # graph model -> version
    version_dir: Path
    repository_root: Path | None = None  # default: the repository the version folder is in

    @property
    def repository(self) -> Path:
        return self.repository_root or self.version_dir.parent.parent

    def graph_path(self, model: str) -> Path:
        return self.repository / model / str(self.pinned[model]) / "model.onnx"

    def outputs(self) -> dict[str, list[str]]:
        """Output names of each graph this version pins (a version published before the
        ``target_prerank`` graph existed pins the other four and pre-ranks by "dot")."""
        return {c.name: [t.name for t in c.outputs] for c in pinnable_contracts(self.cfg) if c.name in self.pinned}


def write_serving_file(version_dir: Path, cfg: Config, pinned: Mapping[str, int], source_run: str) -> None:
    (Path(version_dir) / SERVING_FILE).write_text(
        json.dumps({"config": cfg.to_dict(), "pinned_versions": dict(pinned), "source_run": source_run}, indent=2)
    )


def load_setup(version_dir: Path, environ: Mapping[str, str] | None = None, repository: Path | None = None) -> ServingSetup:
    d = json.loads((Path(version_dir) / SERVING_FILE).read_text())
    # the serving section is this deployment's (settings.deployed), the other sections the
    # run's, with this environment's overrides (GENREC_PIPELINE__* etc., modes checked there)
    others = {k: v for k, v in env_overrides(environ).items() if not k.startswith("serving.")}
    cfg = with_overrides(deployed(config_from_dict(d["config"]), environ), others)
    return ServingSetup(cfg, {k: int(v) for k, v in d["pinned_versions"].items()}, Path(version_dir), repository)


def make_ann(cfg: Config, catalogue: Catalogue, instance: str) -> AnnIndex:
    s = cfg.serving
    if s.ann is AnnBackend.EXACT:
        return ExactIndex(catalogue.item_vectors)
    from genrec.ensemble.milvus_index import IndexSpec, MilvusIndex

    uri = s.milvus_uri
    if not uri:  # milvus-lite: one local file per model instance (a lite file has one owner process)
        state = Path(s.state_dir or tempfile.mkdtemp(prefix="genrec-"))
        state.mkdir(parents=True, exist_ok=True)
        uri = str(state / f"milvus-{instance}-{os.getpid()}.db")
    # Milvus failing at run time serves generation alone (counted) and is reconnected; see FailSoftIndex
    spec = IndexSpec.of(s)  # serving.ann_index: FLAT (exact) by default
    return FailSoftIndex(lambda: MilvusIndex(uri, s.milvus_collection, catalogue.item_vectors, token=s.milvus_token, index=spec))


def make_state_store(cfg: Config, encoder_graph: Path | None = None) -> StateCache | None:
    """``encoder_graph``: the pinned encoder's file; shared (Redis) states are keyed by its digest."""
    s = cfg.serving
    if s.state_store is StateStore.REDIS:
        from genrec.ensemble.state_store import RedisEncoderCache, encoder_tag

        tag = encoder_tag(encoder_graph) if encoder_graph is not None else ""
        return RedisEncoderCache(s.redis_url, s.state_ttl_s, weights=tag, timeout_s=s.state_store_timeout_s)
    return EncoderCache(s.encoder_cache_bytes) if s.encoder_cache_bytes > 0 else None


def build_pipeline(setup: ServingSetup, bls: Runner | None = None, instance: str = "0") -> ServingPipeline:
    """The pipeline for a version: in-process sessions on the pinned graphs, or ``bls`` calls."""
    cfg = setup.cfg
    if cfg.serving.execution is Execution.BLS:
        if bls is None:
            raise ValueError("execution 'bls' needs a BLS runner (only inside Triton)")
        run = bls
    else:
        from genrec.ensemble.onnx_sessions import OnnxSessionRunner

        outputs = setup.outputs()
        run = OnnxSessionRunner({m: setup.graph_path(m) for m in outputs}, outputs, cfg.serving.ort_threads)
    catalogue = Catalogue.load(setup.version_dir)
    cache = make_state_store(cfg, setup.graph_path("ugt_encoder"))
    return ServingPipeline(
        cfg,
        catalogue,
        run,
        make_ann(cfg, catalogue, instance),
        cache,
        kv_cache=cfg.serving.kv_cache,
        has_target_prerank=TARGET_PRERANK in setup.pinned,
    )
