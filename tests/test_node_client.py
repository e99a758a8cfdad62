"""The Node.js client in clients/node, written from proto/ and docs/protocol.md alone,
against a real secure stack: it streams an answer over CURVE, reads the status, and
gets a coded error. Skipped where node or npm (or the npm registry) is missing."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from stack import Stack

pytestmark = pytest.mark.e2e

CLIENT_DIR = Path(__file__).resolve().parent.parent / "clients" / "node"
SIM_MODEL = "simulated"
NPM_INSTALL_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def node_client() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed")
    if not (CLIENT_DIR / "node_modules" / "zeromq").is_dir():
        try:
            installed = subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund", "--no-package-lock"],
                cwd=CLIENT_DIR,
                capture_output=True,
                text=True,
                timeout=NPM_INSTALL_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            pytest.skip(f"npm install took over {NPM_INSTALL_TIMEOUT_S} s (no registry here?)")
        if installed.returncode != 0:
            pytest.skip(f"npm install failed (no registry here?): {installed.stderr[-300:]}")
    return CLIENT_DIR


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    log_dir = tmp_path_factory.mktemp("node")
    with Stack(model_dir=log_dir, log_dir=log_dir, num_workers=0, is_secure=True) as stack:
        stack.start_sim_worker(SIM_MODEL)
        yield stack


def test_the_node_client_streams_over_curve_reads_status_and_gets_coded_errors(node_client, stack):
    keys = stack.keys_dir
    run = subprocess.run(
        [
            "node",
            "test.js",
            stack.broker_address,
            SIM_MODEL,
            str(keys / "admin.key_secret"),
            str(keys / "broker.key"),
        ],
        cwd=node_client,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen == {
        "generatedTokens": 8,
        "finishReason": "FINISH_REASON_LENGTH",
        "chunksMatchResult": True,
        "numWorkers": 1,
        "refused": "UNKNOWN_MODEL",
    }
