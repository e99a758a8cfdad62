# One image for every llmos process; compose.yaml picks the service with `command:`.
#   docker build -t llmos .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch goes in first, in its own layer: pyproject only asks for torch>=2.4, and
# left to resolve that itself pip fetches the default build, which bundles CUDA
# (several GB). For a CPU-only image pass the CPU wheel index of your torch
# mirror as a build argument, e.g.
#   docker build --build-arg PIP_EXTRA_INDEX_URL=<cpu wheel index> -t llmos .
# and pin a version with --build-arg TORCH_SPEC=torch==<version>.
ARG TORCH_SPEC=torch
# Read by pip from the environment of the RUN steps below; empty = no extra index.
ARG PIP_EXTRA_INDEX_URL=
RUN pip install --no-cache-dir "${TORCH_SPEC}"

WORKDIR /opt/llmos
COPY . .
# the gateway extra: compose.yaml runs `llmos gateway` from this image too
RUN pip install --no-cache-dir ".[gateway]" \
    && useradd --create-home --shell /usr/sbin/nologin llmos \
    && install -d -o llmos /journal \
    && install -d -m 700 -o llmos /keys

# The services need no root; model directories are mounted read-only at /models
# (see compose.yaml), so the image holds no weights. /journal is the broker's journal
# volume and /keys the keyring's: a new named volume takes the owner of the image's directory.
USER llmos
WORKDIR /home/llmos

CMD ["llmos", "--help"]
