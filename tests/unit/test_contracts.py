"""config.pbtxt files are generated from the tensor contracts; the committed ones must agree."""

from pathlib import Path

import pytest

from genrec.contracts import ad_ctr_contract, all_contracts, feed_candidates_contract, recommend_contract
from genrec.exporters.pbtxt import render
from genrec.settings import named_config

REPO = Path(__file__).resolve().parents[2] / "model_repository"


SMALL = named_config("small", environ={})


@pytest.mark.parametrize(
    "contract",
    [*all_contracts(SMALL), recommend_contract(SMALL), ad_ctr_contract(SMALL), feed_candidates_contract(SMALL)],
    ids=lambda c: c.name,
)
def test_committed_configs_match_the_contracts(contract):
    assert (REPO / contract.name / "config.pbtxt").read_text() == render(contract), "run: genrec-publish --write-configs small"


def test_rendered_config_carries_triton_features():
    for c in all_contracts(named_config("tiny", environ={})):
        text = render(c)
        assert 'platform: "onnxruntime_onnx"' in text and "model_warmup" in text and "version_policy" in text and "instance_group" in text
        for t in (*c.inputs, *c.outputs):
            assert f'name: "{t.name}"' in text
        if c.max_batch_size:
            assert "dynamic_batching" in text and "max_queue_delay_microseconds" in text
        assert "# cap:" in text or not c.caps


def test_recommend_config_is_a_python_model_with_optional_inputs_and_documented_parameters():
    c = recommend_contract(named_config("tiny", environ={}))
    text = render(c)
    assert 'backend: "python"' in text and "model_warmup" not in text  # no warmup before the graphs load
    for t in c.inputs:
        block = text[text.index(f'name: "{t.name}"') :].split("}", 1)[0]
        assert ("optional: true" in block) == t.optional
    for name in ("beam_width", "ann_candidates", "max_candidates", "top_k", "excluded_items"):
        assert f"# request parameter {name}:" in text
    assert "num_versions: 2" in text, "the previous recommend version keeps serving the canary's control group"


def test_feed_candidates_is_an_ensemble_whose_steps_compose():
    cfg = named_config("tiny", environ={})
    c, rec, ctr = feed_candidates_contract(cfg), recommend_contract(cfg), ad_ctr_contract(cfg)
    text = render(c)
    assert 'platform: "ensemble"' in text and "instance_group" not in text and "model_warmup" not in text
    produced = {t.name for t in c.inputs}
    for step, model in zip(c.steps, (rec, ctr)):
        assert set(step.inputs) == {t.name for t in model.inputs} and set(step.inputs.values()) <= produced
        produced |= set(step.outputs.values())
    assert {t.name for t in c.outputs} <= produced
    # recommend (unbatched) hands ad_ctr (batched) a batch of one
    user = next(t for t in rec.outputs if t.name == "user_vector")
    assert user.dims == (1, *ctr.inputs[0].dims) and ctr.max_batch_size > 0 and rec.max_batch_size == 0
    assert ctr.caps["ads"] == cfg.ads.max_candidates


def test_publish_accepts_an_operator_chosen_instance_count_but_not_a_changed_tensor(tmp_path):
    from genrec.exporters.publish import PublishError, check_config

    c = recommend_contract(named_config("tiny", environ={}))
    (tmp_path / c.name).mkdir()
    cfg = tmp_path / c.name / "config.pbtxt"
    cfg.write_text(render(c).replace("instance_group [ { count: 1,", "instance_group [ { count: 2,"))
    check_config(tmp_path / c.name, c)
    cfg.write_text(render(c).replace('name: "history_items"', 'name: "items_history"'))
    with pytest.raises(PublishError):
        check_config(tmp_path / c.name, c)


def test_every_graph_call_is_checked_against_its_contract():
    import json

    import numpy as np

    from genrec.contracts import decoder_step_contract, ranker_contract
    from genrec.errors import InvalidValueError

    cfg = named_config("tiny", environ={})
    step = decoder_step_contract(cfg)
    dc = cfg.decoder
    dh = dc.d_model // dc.n_heads

    def feeds(beams: int, memory: int = 5) -> dict:
        past = np.zeros((dc.n_layers, 1, beams, dc.n_heads, 1, dh), np.float32)
        cross = np.zeros((dc.n_layers, 1, dc.n_heads, memory, dh), np.float32)
        return {
            "step": [1],
            "codes": np.zeros((1, beams), np.int32),  # cast to the contract's INT64
            "parents": np.zeros((1, beams), np.int64),
            "past_k": past,
            "past_v": past,
            "cross_k": cross,
            "cross_v": cross,
            "cross_bias": np.zeros((1, memory), np.float32),
        }

    ok = step.check_feeds(feeds(8))
    assert ok["codes"].dtype == np.int64 and ok["step"].dtype == np.int64
    cap = cfg.pipeline.max_beam_width
    with pytest.raises(InvalidValueError, match=f"codes: beams = {cap + 1}, over the cap of {cap}"):
        step.check_feeds(feeds(cap + 1))
    with pytest.raises(InvalidValueError, match="missing"):
        step.check_feeds({k: v for k, v in feeds(8).items() if k != "parents"})
    with pytest.raises(InvalidValueError, match="unknown"):
        step.check_feeds({**feeds(8), "past": np.zeros(1)})
    with pytest.raises(InvalidValueError, match="cross_bias: expected 2 dims"):
        step.check_feeds({**feeds(8), "cross_bias": np.zeros(5, np.float32)})
    ranker = ranker_contract(cfg)
    with pytest.raises(InvalidValueError, match="features: expected shape"):
        ranker.check_feeds({"features": np.zeros((3, 13), np.float32)})
    # the caps a server enforces on direct calls are the same numbers, per input axis
    assert json.loads(step.caps_parameter())["codes"] == {"0": 64, "1": cap}


def test_every_dynamic_dim_has_a_cap():
    from genrec.contracts import ModelContract, TensorSpec

    with pytest.raises(ValueError, match="no cap"):
        ModelContract("m", inputs=(TensorSpec("x", "FP32", ("rows",)),), outputs=())
