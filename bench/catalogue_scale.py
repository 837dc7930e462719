"""A catalogue fifty times bigger: what 20k, 200k and 1M items cost to build, load and serve.

    python -m bench.catalogue_scale                         # 20k, 200k, 1M items (~40 min here)
    python -m bench.catalogue_scale --sizes 20000 200000    # a part
    python -m bench.catalogue_scale --run DIR --repository R --triton-grpc H:P --triton-pid PID
                                                            # one run already published and served

For each size, `tiny` is trained briefly on a synthetic catalogue of that many items (modest
users, 1 epoch capped at ``--max-steps`` batches, a few RQ-VAE epochs, codebooks grown with the
catalogue: cost, not quality, is the point) in a subprocess, outside the lock. Then, holding
the shared benchmark lock (``/tmp/genrec-bench.lock``, so other benchmarks on this machine do not
run meanwhile), it measures:

- ``semantic_id_build_s``: item features + RQ-VAE codes for the whole catalogue (the run's
  settings, rebuilt here so the time is taken under the lock);
- ``publish_s``: ``genrec-publish`` of the run into a fresh model repository (export, parity
  checks, catalogue, configs);
- the prefix trie of the published catalogue: entries (nodes + leaf items) and bytes;
- Milvus (milvus-lite), side by side: FLAT (exact) and IVF_FLAT at each ``--nprobe`` (HNSW is
  tried: milvus-lite refuses it), build time, search p50/p99 at k=500 for real user vectors of
  held-out users, recall@500 against FLAT;
- the index served: the fastest one with recall@500 >= ``--min-recall`` (FLAT counts, recall 1);
- Triton: load time (start to ready), resident memory (RSS) of the ``recommend`` stub process, its
  milvus-lite child and all of Triton, and ``recommend`` p50/p99 at concurrency 1 and 4
  (returning users of the run, one new event per visit, after a first cold visit) with the
  model's own per-stage means.

Writes bench/results/catalogue_scale.json (``rows``: one per size) and .png (latency and memory
against items, log x).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from genrec.artifacts import machine, now_iso, versions, write_json
from genrec.ensemble.milvus_index import IndexSpec, MilvusIndex, default_nlist, recall_at_k
from genrec.settings import AnnIndexType

LOCK = "/tmp/genrec-bench.lock"
K = 500  # recall@500 and the search size of the ANN comparison (the issue's figure)
P99_GOAL_MS = 50.0
RECALL_GOAL = 0.95
DEFAULT_SIZES = (20_000, 200_000, 1_000_000)


def say(msg: str) -> None:
    print(f"[catalogue_scale] {msg}", flush=True)


@contextmanager
def bench_lock(path: str) -> Iterator[None]:
    """The machine's benchmark lock (flock, the same file as ``flock /tmp/genrec-bench.lock cmd``);
    '' = none (tests)."""
    if not path:
        yield
        return
    with open(path, "a") as f:
        t0 = time.monotonic()
        fcntl.flock(f, fcntl.LOCK_EX)
        waited = time.monotonic() - t0
        if waited > 1:
            say(f"waited {waited:.0f} s for {path}")
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---- building a run ----------------------------------------------------------------------------


def codebooks_for(n_items: int) -> tuple[int, int, int]:
    """Codebook size per level: the power of two >= cbrt(n / 2) (at least 32, `tiny`'s), so about
    two leaves per item and small collision groups whatever the catalogue: 20k -> 32, 200k -> 64,
    1M -> 128."""
    k = 32
    while k**3 < n_items / 2:
        k *= 2
    return (k, k, k)


def train_env(n_items: int, max_steps: int, rqvae_epochs: int) -> dict[str, str]:
    """GENREC_* overrides of a brief `tiny` run at this size (genrec.settings)."""
    return {
        "GENREC_SEMANTIC_ID__CODEBOOK_SIZES": ",".join(map(str, codebooks_for(n_items))),
        "GENREC_SEMANTIC_ID__EPOCHS": str(rqvae_epochs),
        "GENREC_TRAIN__EPOCHS": "1",
        "GENREC_TRAIN__MAX_STEPS": str(max_steps),
        "GENREC_TRAIN__BATCH_SIZE": "128",  # logits of a batch over every item: 128 x 1M floats
        "GENREC_TRAIN__VALIDATION_USERS": "200",
        "GENREC_TRAIN__RANKER_USERS": "200",
        "GENREC_ADS__CTR_EPOCHS": "3",
    }


def train_run(n_items: int, users: int, max_steps: int, rqvae_epochs: int, artifacts: Path, log: Path) -> Path:
    """`genrec-train --config tiny --items N` in a subprocess (its memory is freed when it ends)."""
    env = {**os.environ, **train_env(n_items, max_steps, rqvae_epochs)}
    cmd = [sys.executable, "-m", "genrec.train", "--config", "tiny", "--items", str(n_items), "--users", str(users)]
    cmd += ["--skip-sasrec", "--artifacts", str(artifacts)]
    say(f"training: {' '.join(cmd[2:])} (log {log})")
    before = set(artifacts.glob("tiny-*")) if artifacts.exists() else set()
    with open(log, "w") as out:
        subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
    new = sorted(set(artifacts.glob("tiny-*")) - before)
    if not new:
        raise RuntimeError(f"genrec-train wrote no run under {artifacts}; see {log}")
    return new[-1]


def time_semantic_ids(run: Path, rqvae_epochs: int | None) -> tuple[float, dict[str, Any]]:
    """Seconds to build the catalogue's semantic IDs as genrec-train does (features + RQ-VAE)."""
    import torch

    from genrec.bundle import load_bundle
    from genrec.data.split import leave_last_out
    from genrec.evaluate import dataset_of
    from genrec.item_features import item_feature_matrix
    from genrec.models.rqvae import train_rqvae

    b = load_bundle(run)
    cfg = b.cfg
    sid = cfg.semantic_id if rqvae_epochs is None else replace(cfg.semantic_id, epochs=rqvae_epochs)
    ds = dataset_of(b)
    del b
    train_events = leave_last_out(ds.events).train_events(ds.events)
    torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    t0 = time.perf_counter()
    feats = item_feature_matrix(ds.item_metadata, train_events, sid.content_dim, sid.collab_dim, cfg.train.seed)
    _, sem = train_rqvae(feats, sid, cfg.train.seed, lambda m: None)
    took = time.perf_counter() - t0
    return took, {"epochs": sid.epochs, "codebook_sizes": list(sid.codebook_sizes), **sem.report()}


# ---- the trie ----------------------------------------------------------------------------------


def trie_size(trie: Any) -> tuple[int, int]:
    """(entries, bytes) of a PrefixTrie: its nodes (every depth) plus its leaf item lists; bytes
    of every array it holds."""
    arrays = [*trie.child_ptr, *trie.child_code, *trie.child_node, trie.leaf_ptr, trie.leaf_items, trie.item_path, *trie.item_count]
    entries = sum(int(c.size) for c in trie.child_code) + int(trie.leaf_items.size)
    return entries, int(sum(a.nbytes for a in arrays))


# ---- the ANN comparison ------------------------------------------------------------------------


def query_vectors(run: Path, n: int) -> np.ndarray:
    """User vectors of ``n`` held-out users of the run (what recommend searches with)."""
    from genrec.bundle import load_bundle
    from genrec.data.split import leave_last_out
    from genrec.evaluate import dataset_of
    from genrec.heldout import heldout_requests
    from genrec.reference import ReferencePipeline

    b = load_bundle(run)
    ds = dataset_of(b)
    split = leave_last_out(ds.events)
    reqs, _ = heldout_requests(ds, split, split.eligible_users[:n], b.cfg.pipeline)
    import torch

    pipe = ReferencePipeline(b)
    with torch.no_grad():
        out = [pipe.encode(reqs[i : i + 32]).user.numpy() for i in range(0, len(reqs), 32)]
    return np.concatenate(out).astype(np.float32)


def search_times(index: MilvusIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[float]]:
    """Each query alone (as recommend sends it): ids (Q, k) and milliseconds per search."""
    ids, ms = [], []
    for q in queries:
        t = time.perf_counter()
        found, _ = index.search(q[None], k)
        ms.append((time.perf_counter() - t) * 1e3)
        ids.append(found[0])
    return np.stack(ids), ms


def compare_indexes(
    vectors: np.ndarray,
    queries: np.ndarray,
    nprobes: list[int],
    nlist: int,
    state: Path,
    k: int = K,
    milvus_uri: str = "",
    hnsw_efs: list[int] | None = None,
) -> list[dict[str, Any]]:
    """FLAT, then IVF_FLAT at each nprobe (one build), then HNSW (refused by milvus-lite: recorded),
    each in a milvus-lite file under ``state``, or on the Milvus server at ``milvus_uri``."""
    k = min(k, vectors.shape[0])
    rows: list[dict[str, Any]] = []
    exact_ids: np.ndarray | None = None
    for kind in (AnnIndexType.FLAT, AnnIndexType.IVF_FLAT, AnnIndexType.HNSW):
        spec = IndexSpec(kind, nlist=nlist)
        uri = milvus_uri or str(state / f"ann-{kind.value.lower()}.db")
        t0 = time.perf_counter()
        quiet = logging.getLogger("pymilvus")
        level = quiet.level
        if kind is AnnIndexType.HNSW:
            quiet.setLevel(logging.CRITICAL)  # its refusal is expected on milvus-lite and logged below, once
        try:
            index = MilvusIndex(uri, f"scale_{kind.value.lower()}", vectors, index=spec)
        except Exception as e:  # HNSW on milvus-lite: "local mode only support FLAT IVF_FLAT AUTOINDEX"
            msg = str(getattr(e, "message", e)).strip()
            rows.append({"index": kind.value, "error": f"{type(e).__name__}: {msg}"})
            say(f"  {kind.value}: not built ({msg})")
            continue
        finally:
            quiet.setLevel(level)
        build_s = time.perf_counter() - t0
        try:
            search_specs = [spec]
            if kind is AnnIndexType.IVF_FLAT:
                search_specs = [replace(spec, nprobe=p) for p in nprobes]
            elif kind is AnnIndexType.HNSW and hnsw_efs:
                search_specs = [replace(spec, hnsw_ef=e) for e in hnsw_efs]
            for s in search_specs:
                index.index = s
                search_times(index, queries[: min(5, len(queries))], k)  # warm
                ids, ms = search_times(index, queries, k)
                if exact_ids is None:
                    exact_ids = ids
                rec = recall_at_k(ids, exact_ids)
                row = {
                    "index": kind.value,
                    "describe": s.describe(vectors.shape[0]),
                    "nprobe": s.nprobe if kind is AnnIndexType.IVF_FLAT else None,
                    "nlist": s.cells(vectors.shape[0]) if kind is AnnIndexType.IVF_FLAT else None,
                    "ef": s.search_params(k).get("ef") if kind is AnnIndexType.HNSW else None,
                    "build_s": build_s,
                    "search_p50_ms": float(np.percentile(ms, 50)),
                    "search_p99_ms": float(np.percentile(ms, 99)),
                    f"recall_at_{K}": rec,
                }
                rows.append(row)
                say(
                    f"  {row['describe']}: build {build_s:.1f} s, search p50 {row['search_p50_ms']:.2f} / p99 {row['search_p99_ms']:.2f} ms, recall@{k} {rec:.4f}"
                )
        finally:
            if milvus_uri:  # a server keeps what it loaded: free it for the next index
                index.client.drop_collection(index.collection)
            index.close()
            if not milvus_uri:
                Path(uri).unlink(missing_ok=True)
    return rows


def pick_index(rows: list[dict[str, Any]], min_recall: float = RECALL_GOAL) -> dict[str, Any]:
    """The index to serve: the lowest search p50 among those with recall@500 >= ``min_recall``
    (FLAT is exact, so there is always one)."""
    ok = [r for r in rows if "error" not in r and r[f"recall_at_{K}"] >= min_recall]
    if not ok:
        raise ValueError(f"no index reached recall@{K} >= {min_recall}")
    return min(ok, key=lambda r: r["search_p50_ms"])


def serving_env(row: dict[str, Any], milvus_uri: str = "") -> dict[str, str]:
    """GENREC_SERVING__* that make recommend serve the picked index (with the search breadth it
    was measured at: HNSW's ef for k=500, not the default 2 x the request's k)."""
    env = {"GENREC_SERVING__ANN_INDEX": row["index"]}
    if row["index"] == AnnIndexType.IVF_FLAT.value:
        env |= {"GENREC_SERVING__ANN_NLIST": str(row["nlist"]), "GENREC_SERVING__ANN_NPROBE": str(row["nprobe"])}
    if row["index"] == AnnIndexType.HNSW.value:
        env |= {"GENREC_SERVING__ANN_HNSW_EF": str(row["ef"])}
    if milvus_uri:
        env["GENREC_SERVING__MILVUS_URI"] = milvus_uri
    return env


# ---- Triton ------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def triton_memory(server_pid: int) -> dict[str, float]:
    """RSS of the recommend stub(s), their milvus-lite children and every process of Triton."""
    from genrec.runtime.watchdog import child_processes, find_stubs

    stubs = [s for s in find_stubs(server_pid) if s.alive]
    rec = [s.pid for s in stubs if s.model == "recommend"]
    milvus = [pid for r in rec for pid, argv in child_processes(r) if argv and "milvus" in argv[0]]
    everything = [server_pid, *(s.pid for s in stubs), *milvus]
    return {
        "rss_mb": sum(rss_mb(p) for p in rec),
        "milvus_rss_mb": sum(rss_mb(p) for p in milvus),
        "triton_total_rss_mb": sum(rss_mb(p) for p in everything),
        "recommend_instances": len(rec),
    }


def scrape(url: str, settle_s: float = 1.5) -> str:
    time.sleep(settle_s)  # recommend's custom metrics reach the page from a background flush
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


class Visits:
    """Returning users of the run: visit ``cut`` sends the history less its last ``cut`` events."""

    def __init__(self, reqs: list) -> None:
        self.reqs = reqs

    def send(self, client: Any, u: int, cut: int) -> None:
        r = self.reqs[u]
        h = r.history
        n = len(h) - cut
        client.recommend(
            h.item[:n],
            h.action[:n],
            h.timestamp[:n],
            h.device[:n],
            user_id=f"scale-{u}",
            segment=r.segment,
            ctx_device=r.ctx_device,
            request_time=float(h.timestamp[n - 1] + 60),
        )

    def run(self, grpc_url: str, cut: int, concurrency: int) -> tuple[list[float], float]:
        """Every user once, ``concurrency`` closed-loop clients: latencies (ms) and wall seconds."""
        from genrec.client.recommend_client import RecommendClient

        lat: list[float] = []
        errors: list[BaseException] = []
        lock = threading.Lock()
        users = iter(range(len(self.reqs)))

        def worker() -> None:
            client = RecommendClient(grpc_url)
            while True:
                with lock:
                    u = next(users, None)
                if u is None:
                    return
                t = time.perf_counter()
                try:
                    self.send(client, u, cut)
                except Exception as e:
                    with lock:
                        errors.append(e)
                    continue
                with lock:
                    lat.append((time.perf_counter() - t) * 1e3)

        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(f"{len(errors)} of {len(self.reqs)} recommend calls failed, first: {errors[0]!r}")
        return lat, time.perf_counter() - t0


def visits_of(run: Path, n: int) -> Visits:
    from genrec.bundle import load_bundle
    from genrec.data.split import leave_last_out
    from genrec.evaluate import dataset_of
    from genrec.heldout import heldout_requests

    b = load_bundle(run)
    ds = dataset_of(b)
    split = leave_last_out(ds.events)
    reqs, _ = heldout_requests(ds, split, split.eligible_users, b.cfg.pipeline)
    return Visits([r for r in reqs if len(r.history) > 3][:n])


def measure_serving(grpc_url: str, metrics_url: str, visits: Visits, levels: tuple[int, ...] = (1, 4)) -> dict[str, Any]:
    """Cold first visits (not counted), then returning visits at concurrency 1 and 4."""
    from bench.recommend_latency import stage_means

    visits.run(grpc_url, 3, 1)
    out: dict[str, Any] = {}
    for cut, c, suffix in ((2, 1, ""), (1, 4, "_c4")):
        if c not in levels:
            continue
        before = scrape(metrics_url, 0.0)
        lat, wall = visits.run(grpc_url, cut, c)
        after = scrape(metrics_url)
        out |= {
            f"p50_ms{suffix}": float(np.percentile(lat, 50)),
            f"p99_ms{suffix}": float(np.percentile(lat, 99)),
            f"throughput_rps{suffix}": len(lat) / wall,
            f"stages_ms{suffix}": stage_means(before, after),
        }
        say(
            f"  recommend c={c}: p50 {out[f'p50_ms{suffix}']:.1f} p99 {out[f'p99_ms{suffix}']:.1f} ms ({len(lat)} requests, {len(lat) / wall:.1f} req/s)"
        )
    out["requests_per_level"] = len(visits.reqs)
    return out


@contextmanager
def served(repo: Path, state: Path, env: dict[str, str], timeout_s: float) -> Iterator[tuple[str, str, int, float]]:
    """Triton on free ports serving ``repo``: (gRPC url, metrics url, server pid, load seconds)."""
    from genrec.runtime.triton_server import TritonServer

    server = TritonServer.on_free_ports(repo, log=state / "triton.log", env={"GENREC_SERVING__STATE_DIR": str(state), **env})
    t0 = time.perf_counter()
    server.start(timeout=timeout_s)
    load_s = time.perf_counter() - t0
    try:
        assert server.proc is not None
        yield server.grpc_url, server.metrics_url, server.proc.pid, load_s
    finally:
        server.stop()


# ---- one size ----------------------------------------------------------------------------------


def measure_size(run: Path, a: argparse.Namespace, work: Path, given: tuple[Path, str, int] | None = None) -> dict[str, Any]:
    """Every figure of one catalogue. ``given``: (published repository, gRPC url, server pid) of a
    Triton already serving the run: publish and load are then not measured."""
    from genrec.ensemble.catalogue import Catalogue

    manifest = json.loads((run / "manifest.json").read_text())
    n_items = int(manifest["n_items"])
    row: dict[str, Any] = {"items": n_items, "users": int(manifest["n_users"]), "run": str(run)}
    row["train_s"] = manifest.get("train_seconds", {})  # the brief training, outside the lock
    # untimed preparation, outside the lock
    queries = query_vectors(run, a.queries)
    visits = visits_of(run, a.requests)
    say(f"{n_items} items: {len(queries)} query vectors, {len(visits.reqs)} users for the latency runs")
    with bench_lock(a.lock):
        row["load_average"] = list(os.getloadavg())
        row["semantic_id_build_s"], row["semantic_ids"] = time_semantic_ids(run, a.rqvae_epochs)
        say(f"  semantic IDs: {row['semantic_id_build_s']:.1f} s")
        if given is None:
            from genrec.exporters.publish import publish_run

            repo = work / "model_repository"
            shutil.rmtree(repo, ignore_errors=True)
            t0 = time.perf_counter()
            publish_run(run, repo, progress=lambda m: None)
            row["publish_s"] = time.perf_counter() - t0
            say(f"  publish: {row['publish_s']:.1f} s")
        else:
            repo, row["publish_s"] = given[0], None
        version = max((d for d in (repo / "recommend").iterdir() if d.name.isdigit()), key=lambda d: int(d.name))
        t0 = time.perf_counter()
        cat = Catalogue.load(version)
        row["catalogue_load_s"] = time.perf_counter() - t0  # npz + trie + popular order, in process
        row["trie_entries"], row["trie_bytes"] = trie_size(cat.trie)
        row["trie_leaves"] = int(cat.trie.leaf_ptr.size - 1)
        row["largest_leaf_items"] = int(np.diff(cat.trie.leaf_ptr).max())
        say(f"  trie: {row['trie_entries']} entries, {row['trie_bytes'] / 2**20:.1f} MiB; catalogue load {row['catalogue_load_s']:.2f} s")
        vectors = cat.item_vectors
        del cat
        ann_state = work / "ann"
        ann_state.mkdir(parents=True, exist_ok=True)
        nlist = a.nlist or default_nlist(n_items)
        row["ann"] = compare_indexes(vectors, queries, a.nprobe, nlist, ann_state, milvus_uri=a.milvus_uri, hnsw_efs=a.hnsw_ef)
        row["milvus"] = a.milvus_uri or "milvus-lite"
        del vectors
        chosen = pick_index(row["ann"], a.min_recall) if a.serve_index == "auto" else _named(row["ann"], a.serve_index)
        row["ann_index"] = chosen["describe"]
        row[f"ann_recall_at_{K}"] = chosen[f"recall_at_{K}"]
        row["ann_search_ms"] = _search_ms(row["ann"])
        row["ann_build_s"] = {r["describe"]: r["build_s"] for r in row["ann"] if "error" not in r}
        row["serving_env"] = serving_env(chosen, a.milvus_uri)
        say(f"  serving {row['ann_index']} (recall@{K} {chosen[f'recall_at_{K}']:.4f})")
        if given is None:
            state = work / "state"
            shutil.rmtree(state, ignore_errors=True)
            state.mkdir(parents=True)
            with served(repo, state, row["serving_env"], a.load_timeout_s) as (grpc_url, metrics_url, pid, load_s):
                row["load_s"] = load_s
                say(f"  Triton ready in {load_s:.1f} s")
                row |= measure_serving(grpc_url, metrics_url, visits)
                row |= triton_memory(pid)
            if a.sequential_ann:  # side by side: the ANN search after the beam search, not during it
                say("  again with the ANN search after the beam search (GENREC_SERVING__ANN_CONCURRENT=false)")
                env = row["serving_env"] | {"GENREC_SERVING__ANN_CONCURRENT": "false"}
                with served(repo, state, env, a.load_timeout_s) as (grpc_url, metrics_url, _, _):
                    row["sequential_ann"] = measure_serving(grpc_url, metrics_url, visits, levels=(1,))
        else:
            _, grpc_url, pid = given
            row["load_s"] = None
            row["serving_env"] = {}  # the given server serves what it was started with
            row |= measure_serving(grpc_url, a.metrics_url, visits)
            row |= triton_memory(pid)
        say(
            f"  RSS: recommend {row['rss_mb']:.0f} MiB, its milvus-lite {row['milvus_rss_mb']:.0f} MiB, Triton in all {row['triton_total_rss_mb']:.0f} MiB"
        )
        row["load_average_after"] = list(os.getloadavg())
    return row


def _named(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    ok = [r for r in rows if r["index"] == name and "error" not in r]
    if not ok:
        raise ValueError(f"--serve-index {name}: not built")
    return min(ok, key=lambda r: -r[f"recall_at_{K}"])  # IVF_FLAT: the widest nprobe


def _search_ms(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Search p50 (ms) per index type: FLAT, and for IVF_FLAT the cheapest setting at the recall goal
    (else the best recall)."""
    out: dict[str, float] = {}
    for kind in (AnnIndexType.FLAT.value, AnnIndexType.IVF_FLAT.value, AnnIndexType.HNSW.value):
        ok = [r for r in rows if r["index"] == kind and "error" not in r]
        if not ok:
            continue
        good = [r for r in ok if r[f"recall_at_{K}"] >= RECALL_GOAL]
        best = min(good, key=lambda r: r["search_p50_ms"]) if good else max(ok, key=lambda r: r[f"recall_at_{K}"])
        out[kind] = best["search_p50_ms"]
    return out


# ---- output ------------------------------------------------------------------------------------


def summary(rows: list[dict[str, Any]], a: argparse.Namespace, load: list[list[float]]) -> dict[str, Any]:
    big = max(rows, key=lambda r: r["items"]) if rows else None
    goal_met = None
    if big is not None and big["items"] >= 1_000_000:
        goal_met = big["p99_ms"] <= P99_GOAL_MS and big[f"ann_recall_at_{K}"] >= RECALL_GOAL
    return {
        "machine": machine(),
        "versions": versions(),
        "created": now_iso(),
        "config": "tiny (briefly trained per size: bench/catalogue_scale.py train_env)",
        "load_average": load,  # 1/5/15-min load averages before the first size and after each
        "k": K,
        "goal": f"1M items: p99 <= {P99_GOAL_MS:.0f} ms at concurrency 1 with an index of recall@{K} >= {RECALL_GOAL} against exact",
        "goal_met": goal_met,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "rows": rows,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    head = f"{'items':>9} {'p50':>6} {'p99':>6} {'p50c4':>6} {'p99c4':>6} {'rss MiB':>8} {'load s':>7} {'publ s':>7} {'sid s':>6} {'trie':>9} {'trie MiB':>8} {'index':<26} {'rec@500':>7} {'FLAT ms':>8} {'IVF ms':>7} {'p99 seq':>7}"
    print(head)
    for r in rows:
        ms = r["ann_search_ms"]

        def f(v: Any, fmt: str) -> str:
            return "-" if v is None else format(v, fmt)

        print(
            f"{r['items']:>9} {r['p50_ms']:>6.1f} {r['p99_ms']:>6.1f} {r['p50_ms_c4']:>6.1f} {r['p99_ms_c4']:>6.1f} {r['rss_mb']:>8.0f} "
            f"{f(r['load_s'], '7.1f'):>7} {f(r['publish_s'], '7.1f'):>7} {r['semantic_id_build_s']:>6.1f} {r['trie_entries']:>9} "
            f"{r['trie_bytes'] / 2**20:>8.1f} {r['ann_index']:<26} {r[f'ann_recall_at_{K}']:>7.4f} {f(ms.get('FLAT'), '8.2f'):>8} {f(ms.get('IVF_FLAT'), '7.2f'):>7} {f(r.get('sequential_ann', {}).get('p99_ms'), '7.1f'):>7}"
        )


def plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["items"])
    x = [r["items"] for r in rows]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.2))
    for key, label in (("p50_ms", "p50, c=1"), ("p99_ms", "p99, c=1"), ("p50_ms_c4", "p50, c=4"), ("p99_ms_c4", "p99, c=4")):
        ax1.plot(x, [r[key] for r in rows], "o-", label=label)
    ax1.axhline(P99_GOAL_MS, color="grey", linestyle=":", label="p99 goal (c=1)")
    ax1.set_title("recommend through Triton")
    ax1.set_ylabel("ms")
    for key, label in (
        ("rss_mb", "recommend stub"),
        ("milvus_rss_mb", "its milvus-lite"),
        ("triton_total_rss_mb", "Triton, all processes"),
    ):
        ax2.plot(x, [r[key] for r in rows], "o-", label=label)
    ax2.set_title("resident memory")
    ax2.set_ylabel("MiB")
    for kind in ("FLAT", "IVF_FLAT"):
        ys = [r["ann_search_ms"].get(kind) for r in rows]
        if any(y is not None for y in ys):
            ax3.plot(x, [np.nan if y is None else y for y in ys], "o-", label=f"{kind} search p50 (k={K})")
    ax3.plot(x, [r["load_s"] or np.nan for r in rows], "s--", label="Triton load (s)")
    ax3.plot(x, [r["publish_s"] or np.nan for r in rows], "^--", label="publish (s)")
    ax3.set_title("Milvus search (ms), load and publish (s)")
    ax3.set_yscale("log")
    for ax in (ax1, ax2, ax3):
        ax.set_xscale("log")
        ax.set_xlabel("catalogue items")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.catalogue_scale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="catalogue sizes to build (items)")
    p.add_argument("--run", type=Path, default=None, help="measure this trained run instead of training one per size")
    p.add_argument("--repository", type=Path, default=None, help="with --triton-grpc: the repository that server serves the run from")
    p.add_argument("--triton-grpc", default=None, help="with --run: measure this running Triton (no publish or load measured)")
    p.add_argument("--triton-pid", type=int, default=None, help="with --triton-grpc: its pid (for the stubs' memory)")
    p.add_argument("--metrics-url", default=None, help="with --triton-grpc: its metrics page")
    p.add_argument("--users", type=int, default=1000, help="synthetic users per catalogue")
    p.add_argument("--max-steps", type=int, default=40, help="generative training batches (1 epoch at most)")
    p.add_argument("--rqvae-epochs", type=int, default=5, help="RQ-VAE epochs of the brief runs (also of the timed rebuild)")
    p.add_argument("--requests", type=int, default=300, help="users per latency level (each visits cold first)")
    p.add_argument("--queries", type=int, default=200, help="user vectors for the ANN comparison")
    p.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64], help="IVF_FLAT nprobe values to compare")
    p.add_argument("--nlist", type=int, default=0, help="IVF_FLAT cells (0: 4 x sqrt(items))")
    p.add_argument("--hnsw-ef", type=int, nargs="+", default=[500, 1000], help="HNSW search breadths to compare (at least k=500)")
    p.add_argument("--min-recall", type=float, default=RECALL_GOAL, help="the served index's recall@500 at least")
    p.add_argument("--serve-index", choices=["auto", "FLAT", "IVF_FLAT"], default="auto", help="auto: the fastest at --min-recall")
    p.add_argument("--load-timeout-s", type=float, default=1200.0)
    p.add_argument(
        "--sequential-ann",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also serve with the ANN search after the beam search instead of during it (concurrency 1; side by side)",
    )
    p.add_argument(
        "--milvus-uri",
        default="",
        help="compare and serve the indexes on this Milvus server (e.g. http://127.0.0.1:19530; HNSW and nprobe work there) "
        "instead of milvus-lite files",
    )
    p.add_argument("--lock", default=LOCK, help=f"the benchmark lock held while measuring ('' = none; default {LOCK})")
    p.add_argument("--work-dir", type=Path, default=None, help="runs, repositories and logs (default: a temporary folder, removed)")
    p.add_argument("--out", type=Path, default=Path("bench/results/catalogue_scale.json"))
    p.add_argument("--append", action="store_true", help="keep the rows already in --out (a row of the same size is replaced)")
    a = p.parse_args(argv)
    if a.triton_grpc and (a.run is None or a.repository is None or a.triton_pid is None or a.metrics_url is None):
        p.error("--triton-grpc needs --run, --repository, --triton-pid and --metrics-url")

    work = a.work_dir or Path(tempfile.mkdtemp(prefix="genrec-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    load = [list(os.getloadavg())]
    rows: list[dict[str, Any]] = []
    if a.append and a.out.exists():
        before = json.loads(a.out.read_text())
        rows, load = before["rows"], [*before.get("load_average", []), *load]
    try:
        jobs: list[tuple[int | None, Callable[[], Path]]]
        if a.run is not None:
            jobs = [(None, lambda: a.run.resolve())]
        else:
            jobs = [
                (n, lambda n=n: train_run(n, a.users, a.max_steps, a.rqvae_epochs, work / "runs", work / f"train-{n}.log")) for n in a.sizes
            ]
        for n, make in jobs:
            t0 = time.perf_counter()
            run = make()
            if n is not None:
                say(f"{n} items: trained {run} in {time.perf_counter() - t0:.0f} s")
            given = (a.repository, a.triton_grpc, a.triton_pid) if a.triton_grpc else None
            size_dir = work / f"size-{n or 'run'}"
            row = measure_size(run, a, size_dir, given)
            rows = sorted([r for r in rows if r["items"] != row["items"]] + [row], key=lambda r: r["items"])
            shutil.rmtree(size_dir, ignore_errors=True)
            load.append(list(os.getloadavg()))
            a.out.parent.mkdir(parents=True, exist_ok=True)
            write_json(a.out, summary(rows, a, load))  # after every size: a later failure keeps the earlier ones
    finally:
        if a.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    plot(a.out.with_suffix(".png"), rows)
    print_table(rows)
    out = summary(rows, a, load)
    say(f"goal met: {out['goal_met']}" if out["goal_met"] is not None else "no 1M-item row: goal not assessed")
    say(f"wrote {a.out} and {a.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
