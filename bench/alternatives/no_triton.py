"""``recommend`` without Triton: a published version's ONNX graphs and ``ServingPipeline``, built
by ``serving_setup.build_pipeline`` exactly as the Triton model builds them (in-process
onnxruntime sessions, per-user encoder-state cache, KV-cached beam search, milvus-lite), behind
KServe v2 HTTP in one Python process. ``GENREC_SERVING__*`` applies as in Triton.

    python -m bench.alternatives.no_triton --version-dir model_repository/recommend/1 --port 8101
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.alternatives.kserve_http import serve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.alternatives.no_triton", description=__doc__)
    p.add_argument("--version-dir", type=Path, required=True, help="a published recommend version folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args(argv)
    from genrec.ensemble.serving_setup import build_pipeline, load_setup

    pipeline = build_pipeline(load_setup(a.version_dir), instance="no-triton")
    serve(pipeline, f"no-triton-{a.version_dir.name}", a.host, a.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
