# Serving image. The Triton runtime, launcher and HEALTHCHECK arrive with issue #3; for now the
# image installs the project on the NVIDIA Triton base so the same code runs in the container.
# 24.10 ships Triton 2.51.0, the server version inside nvidia-pytriton 0.7.0 that the pip
# runtime uses on CPU machines, so both runtimes serve the same model repository.
FROM nvcr.io/nvidia/tritonserver:24.10-py3

WORKDIR /opt/genrec
COPY requirements.txt pyproject.toml README.md ./
COPY genrec ./genrec
COPY ensemble ./ensemble
RUN python3 -m pip install --no-cache-dir -r requirements.txt && python3 -m pip install --no-cache-dir --no-deps .
