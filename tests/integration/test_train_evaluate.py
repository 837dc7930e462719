"""A `tiny` run trains and evaluates end to end, and its artefact folder is complete."""

import json
import subprocess
import sys

import pytest

from genrec.artifacts import new_run, runs
from genrec.bundle import load_bundle
from genrec.evaluate import METHODS, evaluate
from genrec.evaluate import main as evaluate_main

pytestmark = pytest.mark.integration


def test_run_folder_is_complete_and_versioned(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {
        "config.json",
        "manifest.json",
        "metrics.json",
        "encoder.pt",
        "decoder.pt",
        "sasrec.pt",
        "ranker.txt",
        "semantic_ids.npz",
        "rqvae.pt",
    } <= names
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert manifest["data_hash"] and manifest["train_seconds"]["total"] > 0
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["semantic_ids"]["unique_ids"] == manifest["n_items"]
    # a second run never overwrites the first
    with new_run("tiny", tiny_run.parent) as r:
        (r.staging / "manifest.json").write_text("{}")
    assert r.final is not None and r.final != tiny_run and tiny_run.exists()
    assert len(runs(tiny_run.parent, "tiny")) == 2


def test_evaluate_writes_the_quality_table(tiny_run, tmp_path):
    out = tmp_path / "quality.json"
    assert evaluate_main(["--run", str(tiny_run), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == set(METHODS)
    for r in rows.values():
        assert 0.0 <= r["ndcg@10"] <= r["recall@10"] <= 1.0
    assert result["config"] == "tiny" and result["versions"]["torch"]
    # the trained cascade must beat recommending the most popular items
    assert rows["cascade"]["recall@10"] > rows["popularity"]["recall@10"]


def test_training_is_reproducible(tiny_run, tiny_cfg, tmp_path):
    """Same seed, same data: a second training run gives the same IDs, weights and ranker."""
    import torch

    from genrec.train import train

    again = train(tiny_cfg, None, tmp_path, skip_sasrec=True)
    a, b = load_bundle(tiny_run), load_bundle(again)
    assert a.manifest["data_hash"] == b.manifest["data_hash"]
    assert (a.semantic_ids.codes == b.semantic_ids.codes).all()
    for model_a, model_b in ((a.encoder, b.encoder), (a.decoder, b.decoder)):
        for (name, p), q in zip(model_a.state_dict().items(), model_b.state_dict().values()):
            assert torch.equal(p, q), name  # bit-identical: training runs with deterministic algorithms
    assert a.ranker.model_to_string() == b.ranker.model_to_string()
    assert a.prerank_weight == b.prerank_weight
    x = evaluate(a, max_users=30, progress=lambda m: None)
    y = evaluate(b, max_users=30, progress=lambda m: None)
    assert [r["recall@10"] for r in x["rows"] if r["method"] != "sasrec"] == [r["recall@10"] for r in y["rows"]]


@pytest.mark.parametrize("cmd", ["genrec.train", "genrec.evaluate", "genrec.model_card"])
def test_every_command_has_help(cmd):
    out = subprocess.run([sys.executable, "-m", cmd, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage:" in out.stdout


def test_evaluate_trains_and_scores_a_movielens_file(tmp_path):
    """The same command on a MovieLens-format file, written here from the rating-shaped preset
    (each item once per user, sittings of equal timestamps); seen items are excluded by default."""
    from genrec.data.synthetic import generate
    from genrec.settings import DataConfig

    cfg = DataConfig(n_items=400, n_users=150, n_categories=8, n_authors=40, n_text_tokens=40, history_median=15, preset="realistic")
    ev = generate(cfg).events
    rating = {0: 2, 1: 3, 2: 4, 3: 5}  # the loader's action of each rating (1-2 view, 3 click, 4 like, 5 purchase)
    lines = [f"{u + 1}\t{i + 1}\t{rating[int(a)]}\t{t}" for u, i, a, t in zip(ev.user, ev.item, ev.action, ev.timestamp)]
    path = tmp_path / "u.data"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "quality.json"
    assert evaluate_main(["--movielens", str(path), "--config", "tiny", "--artifacts", str(tmp_path / "runs"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["dataset"] == "movielens:u.data" and {r["method"] for r in result["rows"]} == set(METHODS)
    assert result["exclude_seen"] is True and set(result["stage_shares"]) == {"candidates", "prerank", "final"}
