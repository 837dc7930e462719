"""config.pbtxt files are generated from the tensor contracts; the committed ones must agree."""

from pathlib import Path

import pytest

from genrec.contracts import all_contracts, recommend_contract
from genrec.exporters.pbtxt import render
from genrec.settings import named_config

REPO = Path(__file__).resolve().parents[2] / "model_repository"


SMALL = named_config("small", environ={})


@pytest.mark.parametrize("contract", [*all_contracts(SMALL), recommend_contract(SMALL)], ids=lambda c: c.name)
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
    assert "num_versions: 1" in text


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
