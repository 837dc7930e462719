import pytest

from genrec.exporters.tensorrt_plans import gpu_available, main


def test_tensorrt_path_skips_plainly_without_a_gpu(tmp_path, capsys):
    ok, why = gpu_available()
    if ok:
        pytest.skip("a GPU is present: the plan build is exercised by the GPU run, not this test")
    assert main(["--onnx-dir", str(tmp_path)]) == 0
    assert f"skipped: {why}" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())  # nothing was built
