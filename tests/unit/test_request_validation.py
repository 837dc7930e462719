import numpy as np
import pytest

from genrec.ensemble.request_validation import validate_excluded, validate_history, validate_options
from genrec.errors import GenrecError, HistoryTooLongError, InvalidValueError, UnknownItemError
from genrec.settings import PipelineConfig

CFG = PipelineConfig(max_history_events=5, max_excluded_items=3)


def ok(n=3):
    return dict(item=np.arange(n), action=np.zeros(n, np.int64), timestamp=np.arange(n) + 1_700_000_000, device=np.zeros(n, np.int64))


def test_valid_history_passes():
    h = validate_history(**ok(), n_items=10, n_devices=3, cfg=CFG)
    assert len(h) == 3
    assert len(validate_history(**ok(0), n_items=10, n_devices=3, cfg=CFG)) == 0  # empty is cold start, not an error


@pytest.mark.parametrize(
    "patch, error, match",
    [
        ({"item": np.array([0, 1, 99])}, UnknownItemError, "99"),
        ({"item": np.array([0, -1, 2])}, UnknownItemError, "-1"),
        ({"timestamp": np.array([1.0, np.nan, 3.0])}, InvalidValueError, "NaN"),
        ({"timestamp": np.array([3, 2, 1])}, InvalidValueError, "oldest first"),
        ({"timestamp": np.array([1, 2, 10**12])}, InvalidValueError, "unix seconds"),
        ({"action": np.array([0, 7, 0])}, InvalidValueError, "action"),
        ({"device": np.array([0, 0])}, InvalidValueError, "has 2 values"),
        ({"item": np.array(["a", "b", "c"])}, InvalidValueError, "dtype"),
        ({"item": np.zeros((3, 1), np.int64)}, InvalidValueError, "1-D"),
        ({"item": np.array([0.5, 1.0, 2.0])}, InvalidValueError, "integers"),
    ],
)
def test_bad_history_gets_a_typed_error_naming_the_field(patch, error, match):
    with pytest.raises(error, match=match):
        validate_history(**{**ok(), **patch}, n_items=10, n_devices=3, cfg=CFG)


def test_oversized_history():
    with pytest.raises(HistoryTooLongError, match="cap of 5"):
        validate_history(**ok(6), n_items=10, n_devices=3, cfg=CFG)


def test_excluded_and_options():
    assert validate_excluded([1, 2], 10, CFG).tolist() == [1, 2]
    assert validate_excluded(None, 10, CFG).size == 0
    with pytest.raises(UnknownItemError):
        validate_excluded([11], 10, CFG)
    with pytest.raises(InvalidValueError, match="cap of 3"):
        validate_excluded([1, 2, 3, 4], 10, CFG)
    assert validate_options(CFG).beam_widths == CFG.beam_widths
    assert validate_options(CFG, beam_widths=[4, 8, 16]).beam_widths == (4, 8, 16)
    for bad in ([0, 1, 2], [-5], [10**6], [1, 2]):
        with pytest.raises(InvalidValueError, match="beam_width"):
            validate_options(CFG, beam_widths=bad)
    with pytest.raises(InvalidValueError, match="top_k"):
        validate_options(CFG, final_k=0)
    assert issubclass(InvalidValueError, GenrecError) and issubclass(GenrecError, ValueError)


def test_ranker_features_must_be_finite_and_shaped():
    from genrec.ensemble.ranking_features import N_FEATURES
    from genrec.ranker import check_features

    good = np.zeros((3, N_FEATURES), np.float32)
    assert check_features(good) is good
    bad = good.copy()
    bad[1, 3] = np.nan
    with pytest.raises(InvalidValueError, match="ann_sim of candidate 1"):
        check_features(bad)
    with pytest.raises(InvalidValueError, match="shape"):
        check_features(np.zeros((3, N_FEATURES - 1), np.float32))


def test_options_arrive_as_request_parameter_strings():
    from genrec.ensemble.request_validation import validate_options

    cfg = PipelineConfig()
    o = validate_options(cfg, beam_widths="8,16,64", ann_candidates="100", final_k="5")
    assert o.beam_widths == (8, 16, 64) and o.ann_candidates == 100 and o.final_k == 5
    assert validate_options(cfg, beam_widths=4).beam_widths == (4, 4, 4)
    for bad in ({"beam_widths": "x"}, {"beam_widths": "1,2"}, {"beam_widths": 0}, {"max_candidates": 10}, {"ann_candidates": -1}):
        with pytest.raises(InvalidValueError):
            validate_options(cfg, **bad)


def test_kserve_tensors_and_parameters_become_validate_request_arguments():
    from genrec.ensemble.request_validation import kserve_request_args, validate_request

    inputs = {
        "history_items": np.array([3, 4]),
        "history_actions": np.array([0, 1]),
        "history_timestamps": np.array([1.7e9, 1.7e9 + 5]),
        "history_devices": np.array([0, 0]),
        "user_id": np.array([b"u-7"], dtype=object),
        "segment": None,
        "ctx_device": np.array([1]),
        "request_time": None,
        "excluded_items": np.array([9]),
    }
    args, kw = kserve_request_args(inputs, {"top_k": 5, "beam_width": "4,8,16", "excluded_items": "11, 12", "other": 1})
    req = validate_request(*args, n_items=100, n_devices=3, n_segments=2, cfg=PipelineConfig(), **kw)
    assert req.user_id == "u-7" and req.segment == 0 and req.ctx_device == 1
    assert req.excluded.tolist() == [9, 11, 12] and req.options.final_k == 5 and req.options.beam_widths == (4, 8, 16)
    _, kw = kserve_request_args({**inputs, "excluded_items": None}, {"excluded_items": ""})
    assert kw["excluded"] is None
    with pytest.raises(InvalidValueError, match="excluded_items"):
        kserve_request_args(inputs, {"excluded_items": "1,x"})


def test_user_id_is_checked_in_bytes_and_must_be_utf8():
    from genrec.ensemble.request_validation import validate_user_id

    cap = PipelineConfig().max_user_id_bytes

    assert validate_user_id(b"u-7", cap) == validate_user_id("u-7", cap) == "u-7"
    assert validate_user_id(None, cap) is None
    # two different invalid byte strings must not collapse onto one key (a lossy decode would)
    for raw in (b"\xff\xfe", b"\xff\xfd"):
        with pytest.raises(InvalidValueError, match="UTF-8"):
            validate_user_id(raw, cap)
    # the cap is in bytes: 100 three-byte characters are 300 bytes
    with pytest.raises(InvalidValueError, match="bytes"):
        validate_user_id("€" * 100, cap)
    assert validate_user_id("€" * (cap // 3), cap) is not None
    with pytest.raises(InvalidValueError, match="bytes"):
        validate_user_id(b"", cap)


def test_kserve_user_id_with_several_values_is_refused():
    from genrec.ensemble.request_validation import kserve_request_args

    with pytest.raises(InvalidValueError, match="user_id"):
        kserve_request_args({"user_id": np.array([b"a", b"b"], dtype=object)}, {})
