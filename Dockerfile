# One image for every llmos process; compose.yaml picks the service with `command:`.
#   docker build -t llmos .                      # CPU torch (the default)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 -t llmos:gpu .
#                                                # CUDA torch, for GPU workers
# BASE_IMAGE: any Debian-like image with python3 (3.11+) and python3-venv; where no
# registry is reachable, scripts/container_check.sh makes one with debootstrap.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# A virtual environment: Debian's own python3 refuses system-wide pip installs.
RUN python3 -m venv /opt/venv

# torch goes in first, in its own layer, from TORCH_INDEX_URL: PyTorch's CPU wheels by
# default (about 200 MB; PyPI's default torch bundles CUDA, several GB). Empty: PyPI's.
# TORCH_SPEC pins a version (torch==2.5.1). WHEELS_DIR: a folder of wheels pip may
# take from (mount it with `podman build -v DIR:DIR:ro`); PIP_CA_FILE: a CA bundle
# for a TLS-intercepting proxy.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC=torch
ARG WHEELS_DIR=
ARG PIP_CA_FILE=
RUN if [ -n "$WHEELS_DIR" ]; then export PIP_FIND_LINKS="$WHEELS_DIR"; fi; \
    if [ -n "$PIP_CA_FILE" ]; then export PIP_CERT="$PIP_CA_FILE"; fi; \
    if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"; \
    else \
        pip install --no-cache-dir "$TORCH_SPEC"; \
    fi

WORKDIR /opt/llmos
COPY . .
# the worker extra (transformers) and the gateway extra: compose.yaml runs every service from this image
RUN if [ -n "$WHEELS_DIR" ]; then export PIP_FIND_LINKS="$WHEELS_DIR"; fi; \
    if [ -n "$PIP_CA_FILE" ]; then export PIP_CERT="$PIP_CA_FILE"; fi; \
    pip install --no-cache-dir ".[worker,gateway]" \
    && useradd --create-home --shell /usr/sbin/nologin llmos \
    && install -d -o llmos /journal \
    && install -d -m 700 -o llmos /keys

# The services need no root; model directories are mounted read-only at /models
# (see compose.yaml), so the image holds no weights. /journal is the broker's journal
# volume and /keys the keyring's: a new named volume takes the owner of the image's directory.
USER llmos
WORKDIR /home/llmos

CMD ["llmos", "--help"]
