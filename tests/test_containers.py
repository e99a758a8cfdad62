"""The image built and the compose stack run with podman, for real (`make container-test`).

Runs scripts/container_check.sh: it makes a base image with debootstrap where no
registry is reachable, builds llmos:latest, starts kernel, scheduler, broker, two
workers and the gateway with podman-compose, checks them from the host, kills the
worker container running a request and sees the request finish on the other.
Minutes of work and package downloads, so only with `pytest --containers`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "container_check.sh"
TIMEOUT_S = 1800


def test_the_compose_stack_runs_in_podman_and_survives_a_killed_worker(
    request: pytest.FixtureRequest,
) -> None:
    if not request.config.getoption("--containers"):
        pytest.skip("builds and runs containers (minutes): make container-test, or pytest --containers")
    if os.geteuid() != 0:
        pytest.skip("podman and debootstrap need root here")
    finished = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert finished.returncode == 0, finished.stderr[-6000:]
    summary = json.loads(finished.stdout.strip().splitlines()[-1])
    assert summary["answers"] == 4 and len(summary["workers"]) == 2
    assert summary["gateway_ready_status"] == 200
    assert summary["finished_on"] != summary["killed_worker"] and summary["num_restarts"] >= 1
