"""The eager baseline: the PyTorch reference pipeline on a run's ``.pt`` weights behind KServe
v2 HTTP, per request: whole-history encoding (no encoder-state cache), beam search without the
decoder KV cache, exact search in numpy, no ONNX, no batching.

    python -m bench.alternatives.eager --run artifacts/runs/tiny-002 --port 8100 [--threads 1]

``--threads``: torch's intra-op threads (0 = torch's default, one per core).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.alternatives.kserve_http import serve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.alternatives.eager", description=__doc__)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    a = p.parse_args(argv)
    import torch

    from genrec.bundle import load_bundle
    from genrec.reference import ReferencePipeline

    # encoder_cache=None: every request encodes its whole history; kv_cache=False: each decoder
    # step recomputes every beam's prefix (TorchUncachedStep)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    pipeline = ReferencePipeline(load_bundle(a.run), kv_cache=False, encoder_cache=None)
    serve(pipeline, "eager", a.host, a.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
