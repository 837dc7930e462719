import json

import pytest

from genrec.settings import NAMED_CONFIGS, config_from_dict, env_overrides, named_config, with_overrides


def test_named_configs_build_and_roundtrip():
    for name in NAMED_CONFIGS:
        cfg = named_config(name, environ={})
        assert cfg.name == name
        assert config_from_dict(cfg.to_dict()) == cfg


def test_full_has_the_design_sizes():
    cfg = named_config("full", environ={})
    assert cfg.semantic_id.codebook_sizes == (1024, 4096, 16384)
    assert cfg.encoder.n_layers == 12
    assert (cfg.decoder.n_experts, cfg.decoder.top_k) == (16, 4)


def test_env_overrides_are_typed():
    env = {
        "GENREC_CONFIG": "tiny",
        "GENREC_ENCODER__N_LAYERS": "3",
        "GENREC_ENCODER__COMPRESSION": "off",
        "GENREC_PIPELINE__BEAM_WIDTHS": "4,8,16",
    }
    cfg = named_config(environ=env)
    assert cfg.name == "tiny"
    assert cfg.encoder.n_layers == 3
    assert cfg.encoder.compression is False
    assert cfg.pipeline.beam_widths == (4, 8, 16)
    assert env_overrides(env) == {"encoder.n_layers": "3", "encoder.compression": "off", "pipeline.beam_widths": "4,8,16"}


def test_unknown_setting_and_config_fail_clearly():
    with pytest.raises(KeyError, match="unknown setting"):
        with_overrides(named_config("tiny", environ={}), {"encoder.nope": "1"})
    with pytest.raises(KeyError, match="unknown config"):
        named_config("huge", environ={})
    with pytest.raises(ValueError, match="not a boolean"):
        with_overrides(named_config("tiny", environ={}), {"encoder.compression": "maybe"})


def test_serving_modes_are_enums_checked_once_in_settings():
    from genrec.settings import AnnBackend, Execution, StateStore

    cfg = named_config("tiny", environ={"GENREC_SERVING__EXECUTION": "bls", "GENREC_SERVING__STATE_STORE": "redis"})
    assert cfg.serving.execution is Execution.BLS and cfg.serving.state_store is StateStore.REDIS
    assert cfg.serving.ann is AnnBackend.MILVUS
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))).serving == cfg.serving  # round-trips through JSON
    with pytest.raises(ValueError, match="serving.execution='gpu': expected one of 'in_process', 'bls'"):
        named_config("tiny", environ={"GENREC_SERVING__EXECUTION": "gpu"})
    with pytest.raises(ValueError, match="serving.state_store"):
        named_config("tiny", environ={"GENREC_SERVING__STATE_STORE": "memcached"})


def test_a_published_version_serves_with_this_deployments_serving_settings(tmp_path):
    """serving.json keeps the training run's Config; its serving section must not come back at
    load time (an old run would bring back an old default): defaults + GENREC_SERVING__* now."""
    from dataclasses import replace

    from genrec.ensemble.serving_setup import load_setup, write_serving_file
    from genrec.settings import ServingConfig, named_config

    trained = named_config("tiny", environ={})
    trained = replace(
        trained, serving=replace(trained.serving, max_queue_size=64, ann_concurrent=False), pipeline=replace(trained.pipeline, final_k=7)
    )
    write_serving_file(tmp_path, trained, {}, "runs/tiny-001")
    assert load_setup(tmp_path, environ={}).cfg.serving == ServingConfig()
    now = load_setup(tmp_path, environ={"GENREC_SERVING__MAX_QUEUE_SIZE": "32"}).cfg
    assert now.serving.max_queue_size == 32 and now.serving.ann_concurrent and now.pipeline.final_k == 7
