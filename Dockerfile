# Triton serving image for the genrec model repository.
#
# Base: nvcr.io/nvidia/tritonserver:24.10-py3 ships Triton 2.51.0, the same server version as
# the nvidia-pytriton 0.7.0 wheel the CPU machines use, so one model repository (same
# config.pbtxt, platform "onnxruntime_onnx" / "tensorrt_plan") is tested on the pip runtime and
# served here by the container's native C++ onnxruntime / TensorRT backends. Its Python is 3.10,
# the oldest the project supports (requires-python >=3.10; the test command runs vermin so that
# no code needs a newer one, and mypy with python_version 3.10).
#
# Build from a checkout with published versions:  genrec-publish --run artifacts/runs/small-001
#   docker build -t genrec-triton .   &&   docker run -p 8000-8002:8000-8002 genrec-triton
FROM nvcr.io/nvidia/tritonserver:24.10-py3

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/genrec

# Dependencies first (cached layer); the server itself is the container's, not the wheel's.
COPY requirements.txt ./
# Left out: the pip Triton server and the test/lint tooling.
RUN grep -v -e '^nvidia-pytriton' -e '^pytest' -e '^hypothesis' -e '^schemathesis' \
        -e '^ruff' -e '^mypy' -e '^vermin' -e '^hadolint' -e '^pre-commit' requirements.txt > /tmp/req.txt \
    && python3 -m pip install -r /tmp/req.txt \
    && rm /tmp/req.txt

# Every folder pyproject.toml's [tool.setuptools.package-dir] maps (tests/unit/test_dockerfile.py
# replays these COPY lines and installs the result, so a missing one fails the test command).
COPY pyproject.toml README.md ./
COPY genrec ./genrec
COPY ensemble ./ensemble
COPY exporters ./exporters
COPY client ./client
COPY runtime ./runtime
COPY feed ./feed
COPY ads ./ads
COPY model_repository ./model_repository
RUN python3 -m pip install --no-deps . \
    && useradd --create-home --uid 10001 triton-user \
    && chown -R triton-user /opt/genrec

USER 10001
EXPOSE 8000 8001 8002

HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["curl", "-fsS", "http://localhost:8000/v2/health/ready"]

# tritonserver is on PATH here, so the launcher uses it with the native backends.
ENTRYPOINT ["genrec-triton", "--repository", "/opt/genrec/model_repository"]
