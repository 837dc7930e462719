"""What a team would build instead of Triton, served for bench/throughput_vs_eager.py.

Both speak the KServe v2 HTTP protocol of Triton's ``recommend`` (``kserve_http.py``), so the
same client (``AsyncRecommendClient(url, "http")``) and the same users drive all three:

- ``eager``: the PyTorch reference pipeline (``genrec.reference``) on the run's ``.pt`` weights,
  whole-history encoding and beam search without KV cache, per request;
- ``no_triton``: the ONNX graphs and ``ServingPipeline`` of a published ``recommend`` version
  (built by ``serving_setup.build_pipeline``, as the Triton model builds it) in one web process.
"""
