"""Publish a trained run into the Triton model repository as new versions; roll back.

    genrec-publish --run artifacts/runs/small-001                 # export, check, publish
    genrec-publish --run ... --triton-url localhost:8000          # ...and load into a running server
    genrec-rollback --model decoder_step --triton-url localhost:8000

Publishing is atomic and never overwrites: each model is exported into a staging folder beside
the repository, checked (parity against its source; the file loads in onnxruntime with the
contract's tensor names; the repository's config.pbtxt equals the one generated from the
contract), given a manifest (source run, hashes, parity, time) and renamed into the next free
version number. With a server, the model is then loaded through the repository API; if that
fails, the new version is retired again and the previous one keeps serving. Rollback retires
the newest version (moved to ``.<repo>.retired/``, never deleted) and reloads.

A run with a pCTR model (``ad_ctr.json``) also publishes ``ad_ctr`` (same gates, before
``recommend``) and, after ``recommend``, the ``feed_candidates`` ensemble: a config only, generated
from the contracts, with the empty version folder ``1/`` Triton requires.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from genrec.artifacts import now_iso, versions, write_json
from genrec.contracts import AD_CTR, TARGET_PRERANK, ModelContract, all_contracts, pinnable_contracts
from genrec.exporters.pbtxt import render


class PublishError(RuntimeError):
    """The publish was refused; the serving version is untouched."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def version_numbers(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()) if model_dir.exists() else []


def _side_dir(repository: Path, kind: str) -> Path:
    d = repository.parent / f".{repository.name}.{kind}"  # same filesystem: rename is atomic
    d.mkdir(parents=True, exist_ok=True)
    return d


def smoke_check(onnx_path: Path, c: ModelContract) -> None:
    try:
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise PublishError(f"{c.name}: {onnx_path.name} does not load in onnxruntime: {str(e).splitlines()[0]}") from e
    names_in = [i.name for i in sess.get_inputs()]
    names_out = [o.name for o in sess.get_outputs()]
    want_in, want_out = [t.name for t in c.inputs], [t.name for t in c.outputs]
    if sorted(names_in) != sorted(want_in) or sorted(names_out) != sorted(want_out):
        raise PublishError(f"{c.name}: graph tensors {names_in} -> {names_out} do not match the contract {want_in} -> {want_out}")


def check_config(model_dir: Path, c: ModelContract) -> None:
    cfg = model_dir / "config.pbtxt"
    want = render(c)
    if not cfg.exists():
        model_dir.mkdir(parents=True, exist_ok=True)
        cfg.write_text(want)  # first publish of this model: its config comes from the contract
    elif _without_instance_count(cfg.read_text()) != _without_instance_count(want):
        raise PublishError(
            f"{c.name}: {cfg} does not match the model's contract (regenerate it with genrec-publish --write-configs, or publish a run of the same config)"
        )


def _without_instance_count(text: str) -> str:
    """The instance count is a deployment knob (see bench/results/encoder_state_placement.json),
    not part of the contract: an operator may change it without a publish being refused. So are
    the queue bounds (GENREC_SERVING__MAX_QUEUE_SIZE, __QUEUE_TIMEOUT_MS), present or not."""
    text = re.sub(r"\n  default_queue_policy \{[^\n]*\}", "", text)
    text = re.sub(r"dynamic_batching \{\n\}\n?", "", text)  # a batcher that only carried the queue policy
    return re.sub(r"instance_group \[ \{ count: \d+", "instance_group [ { count: N", text)


@dataclass
class Published:
    model: str
    version: int
    path: Path


def publish_file(repository: Path, c: ModelContract, onnx_file: Path, manifest: dict, triton_url: str | None = None) -> Published:
    """Check ``onnx_file`` and move it into the next version of ``c.name``; load it if a server is given."""
    repository = Path(repository)
    model_dir = repository / c.name
    if manifest.get("parity") and not manifest["parity"]["ok"]:
        raise PublishError(f"{c.name}: parity {manifest['parity']['max_abs_err']:.3g} over the tolerance {manifest['parity']['tolerance']}")
    smoke_check(onnx_file, c)
    check_config(model_dir, c)
    staging = _side_dir(repository, "staging") / f"{c.name}-{os.getpid()}-{time.monotonic_ns()}"
    staging.mkdir()
    shutil.copy2(onnx_file, staging / "model.onnx")
    write_json(
        staging / "manifest.json", {**manifest, "model": c.name, "onnx_sha256": sha256(staging / "model.onnx"), "created": now_iso()}
    )
    return install_version(repository, c.name, staging, triton_url)


def install_version(repository: Path, model: str, staging: Path, triton_url: str | None) -> Published:
    """Rename a checked staging folder into the model's next free version; load it if a server is
    given, and retire it again if Triton cannot load it (the previous version keeps serving)."""
    model_dir = Path(repository) / model
    while True:
        n = 1 + max(version_numbers(model_dir) or [0])
        try:
            os.rename(staging, model_dir / str(n))  # fails if another publish took n
            break
        except OSError:
            if not (model_dir / str(n)).exists():
                raise
    if triton_url:
        try:
            load(triton_url, model)
        except PublishError:
            retire(repository, model, n)
            try:
                load(triton_url, model)
            except PublishError:
                pass
            raise
    return Published(model, n, model_dir / str(n))


RECOMMEND_SOURCE = Path(__file__).resolve().parent.parent / "ensemble" / "triton_models" / "recommend" / "model.py"


def publish_recommend(repository: Path, bundle, pinned: dict[str, int], manifest: dict, triton_url: str | None = None) -> Published:
    """Publish ``recommend``: the adapter, the run's catalogue and the graph versions it pins.

    Before it is moved into place, the staged version serves one request in process (the pinned
    graphs in onnxruntime, exact ANN) and must return a full top-k; otherwise nothing changes.
    """
    from genrec.contracts import recommend_contract
    from genrec.ensemble.catalogue import Catalogue
    from genrec.ensemble.serving_setup import build_pipeline, load_setup, write_serving_file
    from genrec.settings import deployed

    repository = Path(repository)
    c = recommend_contract(deployed(bundle.cfg))  # the queue bounds of this deployment, not of the training run
    check_config(repository / c.name, c)
    staging = _side_dir(repository, "staging") / f"{c.name}-{os.getpid()}-{time.monotonic_ns()}"
    staging.mkdir()
    try:
        shutil.copy2(RECOMMEND_SOURCE, staging / "model.py")
        Catalogue.from_bundle(bundle).save(staging)
        write_serving_file(staging, bundle.cfg, pinned, str(bundle.path))
        setup = load_setup(
            staging, environ={"GENREC_SERVING__ANN": "exact", "GENREC_SERVING__EXECUTION": "in_process"}, repository=repository
        )
        pipe = build_pipeline(setup)
        h = bundle.items.category[:0]  # an empty history is valid for every catalogue (cold start)
        rec = pipe.recommend(pipe.validate(h, h, h.astype(float), h, ctx_time=1_700_000_000))
        if len(rec.items) != bundle.cfg.pipeline.final_k:
            raise PublishError(f"recommend: the staged version returned {len(rec.items)} items, expected {bundle.cfg.pipeline.final_k}")
    except PublishError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except Exception as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise PublishError(f"recommend: the staged version failed its smoke request: {e}") from e
    write_json(staging / "manifest.json", {**manifest, "model": c.name, "pinned_versions": pinned, "created": now_iso()})
    return install_version(repository, c.name, staging, triton_url)


def publish_ensemble(repository: Path, c: ModelContract, triton_url: str | None = None) -> Published:
    """An ensemble (``c.steps``) has no files of its own: its generated config and the empty version
    folder ``1/`` Triton requires; loaded (after its composing models) if a server is given."""
    model_dir = Path(repository) / c.name
    check_config(model_dir, c)
    (model_dir / "1").mkdir(exist_ok=True)
    if triton_url:
        load(triton_url, c.name)
    return Published(c.name, 1, model_dir / "1")


def retire(repository: Path, model: str, version: int) -> Path:
    dst = _side_dir(repository, "retired") / model / f"{version}-{time.strftime('%Y%m%dT%H%M%S')}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.rename(Path(repository) / model / str(version), dst)
    return dst


def load(triton_url: str, model: str, timeout: float = 120) -> None:
    req = urllib.request.Request(f"http://{triton_url}/v2/repository/models/{model}/load", data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            if r.status != 200:
                raise PublishError(f"{model}: load returned HTTP {r.status}")
    except urllib.error.HTTPError as e:
        raise PublishError(f"{model}: Triton refused to load it: {e.read().decode(errors='replace')[:500]}") from e
    except urllib.error.URLError as e:
        raise PublishError(f"{model}: Triton at {triton_url} is not reachable: {e.reason}") from e


def rollback(repository: Path, model: str, triton_url: str | None = None) -> int:
    """Retire the newest version; returns the version that serves now."""
    versions_ = version_numbers(Path(repository) / model)
    if len(versions_) < 2:
        raise PublishError(f"{model}: {len(versions_)} version(s) in the repository; nothing to roll back to")
    retire(repository, model, versions_[-1])
    if triton_url:
        load(triton_url, model)
    return versions_[-2]


def export_run(run: Path, out_dir: Path, progress=print) -> dict[str, tuple[Path, dict]]:
    """Export every served model of a run into ``out_dir``; returns {model: (onnx, parity)}."""
    import torch

    from genrec.bundle import load_bundle
    from genrec.data.split import leave_last_out
    from genrec.evaluate import dataset_of
    from genrec.exporters.onnx_export import export_decoder, export_encoder, export_ranker
    from genrec.heldout import heldout_requests
    from genrec.reference import ReferencePipeline

    torch.set_num_threads(2)
    b = load_bundle(run)
    ds = dataset_of(b)
    split = leave_last_out(ds.events)
    reqs, _ = heldout_requests(ds, split, split.eligible_users[:8], b.cfg.pipeline)
    pipe = ReferencePipeline(b)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    progress("[export] ugt_encoder")
    results["ugt_encoder"] = (
        out_dir / "ugt_encoder.onnx",
        export_encoder(b, out_dir / "ugt_encoder.onnx", [r.history for r in reqs]).as_dict(),
    )
    progress("[export] decoder_cross_kv + decoder_step")
    e2 = pipe.encode(reqs[:2])
    e1 = pipe.encode(reqs[2:3])
    mems = [(e2.memory.numpy(), e2.memory_logw.numpy()), (e1.memory.numpy(), e1.memory_logw.numpy())]
    cross, step = export_decoder(b, out_dir / "decoder_cross_kv.onnx", out_dir / "decoder_step.onnx", mems)
    results["decoder_cross_kv"] = (out_dir / "decoder_cross_kv.onnx", cross.as_dict())
    results["decoder_step"] = (out_dir / "decoder_step.onnx", step.as_dict())
    progress("[export] ranker")
    enc2, traces = pipe.traces(reqs[:2])
    results["ranker"] = (out_dir / "ranker.onnx", export_ranker(b, out_dir / "ranker.onnx", traces[0].features).as_dict())
    if b.target_prerank is not None:  # a run trained before the target pre-ranker publishes the other graphs only
        from genrec.ensemble.cascade import prerank_features
        from genrec.exporters.onnx_export import export_target_prerank, target_prerank_cases

        progress("[export] target_prerank")
        real = []
        for row, tr in enumerate(traces):
            seen = torch.isfinite(enc2.memory_logw[row])
            c = tr.candidates
            real.append(
                (
                    enc2.memory[row][seen].numpy(),
                    enc2.memory_logw[row][seen].numpy(),
                    b.item_vectors[c.items],
                    prerank_features(c, b.items.log_popularity),
                )
            )
        parity = export_target_prerank(b, out_dir / "target_prerank.onnx", target_prerank_cases(b, real))
        results[TARGET_PRERANK] = (out_dir / "target_prerank.onnx", parity.as_dict())
    if has_ad_ctr(run):
        from genrec.exporters.onnx_export import export_ad_ctr

        progress("[export] ad_ctr")
        users = torch.cat([e2.user, e1.user]).numpy()
        parity = export_ad_ctr(b, out_dir / "ad_ctr.onnx", users, [r.history for r in reqs[:3]])
        results[AD_CTR] = (out_dir / "ad_ctr.onnx", parity.as_dict())
    return results


def has_ad_ctr(run: Path) -> bool:
    """The run trained a pCTR model (genrec.ad_ctr.save)."""
    return (Path(run) / "ad_ctr.json").exists()


def source_hashes(run: Path) -> dict[str, str]:
    return {
        p.name: sha256(p)
        for p in sorted(run.iterdir())
        if p.suffix in (".pt", ".txt", ".npz", ".json", ".npy") and p.name != "metrics.json"
    }


INT8_MODELS = ("ugt_encoder", "decoder_cross_kv", "decoder_step")
# int8 weights move outputs by ~0.05-0.25 on these graphs (measured: bench/results/exporters.json);
# the fp32 tolerance cannot hold, so an int8 publish is checked against the fp32 graph at this bound.
INT8_TOLERANCE = 0.5


def quantize_exported(cfg, exported: dict[str, tuple[Path, dict]], work: Path) -> dict[str, tuple[Path, dict]]:
    """Replace the encoder and decoder graphs by int8 dynamic-quantised ones, with parity vs fp32."""
    from genrec.exporters.onnx_export import session
    from genrec.exporters.summary import quantize_int8, representative_feeds

    feeds = representative_feeds(cfg)
    out = dict(exported)
    for model in INT8_MODELS:
        path, parity = exported[model]
        q = quantize_int8(path, work / f"{model}.int8.onnx")
        err = 0.0
        for f in feeds[model].values():
            for a, b in zip(session(path).run(None, f), session(q).run(None, f)):
                err = max(err, float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0)
        out[model] = (
            q,
            {
                **parity,
                "int8": True,
                "max_abs_err_vs_fp32": err,
                "max_abs_err": err,
                "max_rel_err": None,
                "tolerance": INT8_TOLERANCE,
                "ok": err <= INT8_TOLERANCE,
            },
        )
    return out


def publish_run(
    run: Path, repository: Path, triton_url: str | None = None, progress=print, results: Path | None = None, int8: bool = False
) -> list[Published]:
    from genrec.bundle import load_bundle

    run = Path(run).resolve()
    bundle = load_bundle(run)
    cfg = bundle.cfg
    contracts = {c.name: c for c in pinnable_contracts(cfg)}
    staging = _side_dir(Path(repository), "staging") / f"export-{os.getpid()}"
    try:
        exported = export_run(run, staging, progress)
        ad_ctr = exported.pop(AD_CTR, None)  # not a graph recommend pins: published on its own below
        if int8:
            progress("[export] int8 dynamic quantisation of " + ", ".join(INT8_MODELS))
            exported = quantize_exported(cfg, exported, staging)
        checked = {**exported, **({AD_CTR: ad_ctr} if ad_ctr else {})}
        failed = [f"{m} ({p['max_abs_err']:.3g} > {p['tolerance']})" for m, (_, p) in checked.items() if not p["ok"]]
        if failed:
            raise PublishError("parity over tolerance, nothing published: " + ", ".join(failed))
        if results is not None:
            from genrec.exporters.summary import print_table, summarize, write_summary

            progress("[summary] measuring onnxruntime latency and CPU levers")
            summary = summarize(cfg, exported, staging)
            summary["run"] = str(run)
            print_table(summary)
            write_summary(summary, results)
            progress(f"[summary] wrote {results}")
        hashes = source_hashes(run)

        def manifest(parity: dict) -> dict:
            return {"source_run": str(run), "source_config": cfg.name, "source_hashes": hashes, "parity": parity, "versions": versions()}

        out = []
        for name, (path, parity) in exported.items():
            out.append(publish_file(Path(repository), contracts[name], path, manifest(parity), triton_url))
            progress(f"[publish] {name} -> version {out[-1].version} (max abs err {parity['max_abs_err']:.2e})")
        # last: the new recommend version switches traffic to the new graphs and catalogue together
        pinned = {p.model: p.version for p in out}
        if ad_ctr:  # before recommend: a refused pCTR model leaves the whole run unserved
            from genrec.contracts import ad_ctr_contract

            path, parity = ad_ctr
            out.append(publish_file(Path(repository), ad_ctr_contract(cfg), path, manifest(parity), triton_url))
            progress(f"[publish] ad_ctr -> version {out[-1].version} (max abs err {parity['max_abs_err']:.2e})")
        rec_manifest: dict = {"source_run": str(run), "source_config": cfg.name, "versions": versions()}
        if ad_ctr:  # the pCTR model reads this version's user vector: the feed pairs them (feed/canary.py)
            rec_manifest["ad_ctr_version"] = out[-1].version
        out.append(publish_recommend(Path(repository), bundle, pinned, rec_manifest, triton_url))
        progress(f"[publish] recommend -> version {out[-1].version} (pins {pinned})")
        if ad_ctr:
            from genrec.contracts import feed_candidates_contract

            out.append(publish_ensemble(Path(repository), feed_candidates_contract(cfg), triton_url))
            progress("[publish] feed_candidates (ensemble: recommend -> ad_ctr)")
        return out
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_configs(repository: Path, config_name: str) -> None:
    from genrec.contracts import ad_ctr_contract, feed_candidates_contract, recommend_contract
    from genrec.settings import named_config

    cfg = named_config(config_name)
    for c in [*all_contracts(cfg), recommend_contract(cfg), ad_ctr_contract(cfg), feed_candidates_contract(cfg)]:
        (Path(repository) / c.name).mkdir(parents=True, exist_ok=True)
        (Path(repository) / c.name / "config.pbtxt").write_text(render(c))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="genrec-publish", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="trained run folder (default: latest run of $GENREC_CONFIG)")
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--triton-url", default=None, help="host:port of Triton's HTTP endpoint to load the new versions into")
    p.add_argument(
        "--results",
        type=Path,
        default=Path("bench/results/exporters.json"),
        help="exporter summary JSON (default bench/results/exporters.json)",
    )
    p.add_argument("--no-summary", action="store_true", help="skip the latency / CPU-lever measurements")
    p.add_argument("--int8", action="store_true", help="publish int8 dynamic-quantised encoder and decoder graphs (not the default)")
    p.add_argument("--write-configs", metavar="CONFIG", default=None, help="only (re)generate every config.pbtxt for a named config")
    a = p.parse_args(argv)
    if a.write_configs:
        write_configs(a.repository, a.write_configs)
        print(f"wrote configs for {a.write_configs} under {a.repository}")
        return 0
    from genrec.artifacts import latest_run
    from genrec.settings import named_config

    run = a.run or latest_run(name=named_config().name)
    try:
        published = publish_run(run, a.repository, a.triton_url, results=None if a.no_summary or a.int8 else a.results, int8=a.int8)
    except PublishError as e:
        print(f"[publish] refused: {e}", file=sys.stderr)
        return 1
    print("| model | version | path |\n|---|---|---|")
    for pub in published:
        print(f"| {pub.model} | {pub.version} | {pub.path} |")
    return 0


def rollback_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="genrec-rollback", description="Retire a model's newest version and serve the previous one.")
    p.add_argument("--model", required=True, action="append", help="model name (repeatable)")
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--triton-url", default=None, help="host:port of Triton's HTTP endpoint to reload")
    a = p.parse_args(argv)
    try:
        for m in a.model:
            print(f"[rollback] {m}: now serving version {rollback(a.repository, m, a.triton_url)}")
    except PublishError as e:
        print(f"[rollback] refused: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
