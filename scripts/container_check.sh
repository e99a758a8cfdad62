#!/usr/bin/env bash
# Build the llmos image and run the compose stack with podman, as a user would on a
# Debian machine with no Docker engine and no registry for base images; then send
# requests from the host, kill a worker container mid-request, see the request
# complete on the other worker, and tear everything down.
#
#   sudo scripts/container_check.sh            # or: make container-test
#
# Idempotent: each step is skipped when its result is already there. What it does:
#  1. installs podman, podman-compose, debootstrap and runc from apt if missing;
#  2. uses a containers.conf of its own (CONTAINERS_CONF): runc, since crun refuses
#     hybrid cgroups, and ulimits root may not raise in some sandboxes;
#  3. makes the base image localhost/llmos-base:bookworm with debootstrap from the
#     Debian mirror apt uses (python3, python3-venv, python3-pip, this host's CA
#     certificates) and `podman import`s it;
#  4. builds llmos:latest on it (the host's torch wheels folder mounted, when there);
#  5. starts the compose stack (2 workers), checks it from the host, kills one
#     worker container mid-request, and takes it all down again.
# Needs root. Prints one JSON line last.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${LLMOS_CONTAINER_WORK:-/var/tmp/llmos-container}
BASE_IMAGE=localhost/llmos-base:bookworm
PROJECT=${LLMOS_CONTAINER_PROJECT:-llmoscheck}
WHEELS_DIR=${LLMOS_WHEELS_DIR:-/opt/wheels}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
MIRROR=${LLMOS_DEBIAN_MIRROR:-$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?' /etc/apt/sources.list /etc/apt/sources.list.d 2>/dev/null | head -1 | awk '{print $2}' || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

say() { printf '[container-check %s] %s\n' "$(date +%T)" "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "container_check.sh: needs root (podman, debootstrap)" >&2; exit 2; }
mkdir -p "$WORK"

# 1. tools
missing=()
for tool in podman podman-compose debootstrap runc; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman podman-compose debootstrap runc >&2
fi

# 2. podman settings of our own
export CONTAINERS_CONF=$WORK/containers.conf
cat > "$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
EOF

# 3. base image
if ! podman image exists "$BASE_IMAGE"; then
    rootfs=$WORK/rootfs
    if [ ! -x "$rootfs/usr/bin/python3" ]; then
        say "debootstrap bookworm from $MIRROR"
        rm -rf "$rootfs"
        debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
            bookworm "$rootfs" "$MIRROR" >&2
    fi
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
        chroot "$rootfs" update-ca-certificates >&2
    fi
    say "importing $BASE_IMAGE"
    tar -C "$rootfs" -c . | podman import - "$BASE_IMAGE" >&2
fi

# 4. the llmos image
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "PIP_CA_FILE=/etc/ssl/certs/ca-certificates.crt")
if [ -d "$WHEELS_DIR" ] && compgen -G "$WHEELS_DIR/torch-*.whl" >/dev/null; then
    torch_version=$(basename "$(ls "$WHEELS_DIR"/torch-*.whl | head -1)" | cut -d- -f2 | cut -d+ -f1)
    build_args+=(-v "$WHEELS_DIR:$WHEELS_DIR:ro" --build-arg "WHEELS_DIR=$WHEELS_DIR"
                 --build-arg "TORCH_INDEX_URL=" --build-arg "TORCH_SPEC=torch==$torch_version")
fi
say "building llmos:latest"
build_start=$(date +%s)
podman build --network host "${build_args[@]}" -t llmos:latest "$ROOT" >&2
build_s=$(( $(date +%s) - build_start ))

# 5. the stack
compose() { (cd "$ROOT" && LLMOS_WORKERS=2 LLMOS_BASE_IMAGE=$BASE_IMAGE podman-compose -p "$PROJECT" "$@"); }
teardown() {
    say "tearing down"
    compose down -v >/dev/null 2>&1 || true
}
trap teardown EXIT
compose down -v >/dev/null 2>&1 || true  # what a killed run left behind
mkdir -p "$ROOT/models"  # compose mounts ${LLMOS_MODELS:-./models}
say "starting the stack with 2 workers"
up_start=$(date +%s)
# podman-compose 1.0.3 ignores profiles: name the services (not worker-gpu, Prometheus, Grafana)
compose up -d kernel scheduler broker worker gateway >&2

keys=$WORK/keys
for _ in $(seq 60); do  # the first service to start makes the keyring
    if podman cp "${PROJECT}_broker_1:/keys/." "$keys" 2>/dev/null && [ -f "$keys/broker.key" ]; then break; fi
    sleep 2
done
[ -f "$keys/broker.key" ] || { echo "no keyring in the broker container" >&2; exit 1; }

say "checking it from the host"
LLMOS_KEYS_DIR=$keys LLMOS_INSECURE=0 "$PYTHON" "$ROOT/scripts/container_probe.py" \
    --project "$PROJECT" --up-start "$up_start" --build-s "$build_s"
