# The vae-tune image that docker-compose.yml runs as `worker` and `dashboard` (and
# deploy/kubernetes/ as every vae-tune container): the project, its PostgreSQL driver and the
# gRPC storage proxy, nothing secret (the database password comes from the environment).
#
# CPU torch by default. For NVIDIA GPUs build with a CUDA wheel index, e.g.
#   docker compose -f docker-compose.yml -f docker-compose.gpu.yml build
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    VAE_TUNE_ARTIFACTS=/artifacts

# torch first and from its own index: a bare `torch` requirement would pull the CUDA build
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /opt/vae-tune
COPY pyproject.toml README.md ./
COPY vae_tune ./vae_tune
# postgres: the driver; grpc: Optuna's gRPC storage proxy and its client (grpc:// storage URLs)
RUN pip install ".[postgres]" ".[grpc]"

# an unprivileged user; /artifacts becomes the shared named volume (it inherits this owner)
RUN useradd --create-home --uid 1000 tuner \
    && mkdir -p /artifacts /work \
    && chown tuner /artifacts /work
USER tuner
WORKDIR /work
# the dashboard and the storage proxy (vae-tune storage-proxy); workers listen on nothing
EXPOSE 8080 13000
CMD ["vae-tune", "--help"]
