"""A worker that may not read its model says so in one line, not a traceback (as a
container's user meets a mounted folder it does not own). Runs the real CLI as
`nobody`; needs root to switch user, skipped elsewhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from llmos.processes import llmos_command

NOBODY = "65534"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv to run as nobody"
)


def run_worker_as_nobody(model: Path, home: Path) -> subprocess.CompletedProcess[str]:
    argv = llmos_command(
        "worker", "--model", str(model), "--device", "cpu",
        "--broker-worker-address", "tcp://127.0.0.1:9", "--kernel-address", "tcp://127.0.0.1:9",
    )  # fmt: skip
    return subprocess.run(
        ["setpriv", "--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(home), "LLMOS_HOME": str(home)},
        cwd=home,
    )


def test_an_unreadable_model_folder_is_one_clear_line(tiny_model_dir: Path) -> None:
    private = Path(tempfile.mkdtemp(prefix="llmos-private-"))  # 0700, root's
    home = Path(tempfile.mkdtemp(prefix="llmos-nobody-home-"))
    try:
        shutil.copytree(tiny_model_dir, private / "model")
        os.chmod(home, 0o777)
        finished = run_worker_as_nobody(private / "model", home)
    finally:
        shutil.rmtree(private)
        shutil.rmtree(home)
    assert finished.returncode == 1, finished.stderr
    assert "Traceback" not in finished.stderr, finished.stderr
    assert f"permission denied reading the model at {private / 'model'} as uid {NOBODY}" in finished.stderr
