"""config.pbtxt files are generated from the tensor contracts; the committed ones must agree."""

from pathlib import Path

import pytest
from genrec.exporters.pbtxt import render

from genrec.contracts import all_contracts
from genrec.settings import named_config

REPO = Path(__file__).resolve().parents[2] / "model_repository"


@pytest.mark.parametrize("contract", all_contracts(named_config("small", environ={})), ids=lambda c: c.name)
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
