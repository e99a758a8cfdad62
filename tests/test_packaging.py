"""`pip install llmos` is the client: the wire code, the SDK and the CLI's client
commands, without torch. Built as a user builds it (a wheel), installed into a
fresh venv that holds only its three dependencies, and used against a real stack."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from stack import Stack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
CLIENT_DEPENDENCIES = (
    "zmq",
    "pyzmq.libs",
    "pyzmq-*.dist-info",
    "google",
    "protobuf-*.dist-info",
    "click",
    "click-*.dist-info",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the tracked files: setuptools writes build/ and *.egg-info
    beside the source, which must not land in the checkout."""
    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("source") / "llmos"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for name in tracked.decode().split("\0"):
        if name:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name, follow_symlinks=False)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        check=True,
    )
    (built,) = out.glob("llmos-*.whl")
    return built


@pytest.fixture(scope="module")
def client_venv(wheel, tmp_path_factory) -> Path:
    """A venv with the wheel and, offline, this venv's copies of pyzmq, protobuf and click
    (linked in through a .pth file): nothing else, torch least of all."""
    home = tmp_path_factory.mktemp("client-venv")
    venv.EnvBuilder(with_pip=True).create(home)
    python = home / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)], check=True
    )
    shared = home / "client-dependencies"
    shared.mkdir()
    site_packages = Path(next(p for p in sys.path if p.endswith("site-packages")))
    for pattern in CLIENT_DEPENDENCIES:
        for path in site_packages.glob(pattern):
            (shared / path.name).symlink_to(path)
    (venv_site_packages(python) / "client-dependencies.pth").write_text(f"{shared}\n")
    return home


def venv_site_packages(python: Path) -> Path:
    printed = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return Path(printed.strip())


def test_the_wheel_needs_only_pyzmq_protobuf_click_rich_and_prometheus_client_and_carries_the_proto(wheel):
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith("/METADATA")))
        names = archive.namelist()
        proto = archive.read("llmos/wire/llmos.proto").decode()
    requires = Parser().parsestr(metadata.decode()).get_all("Requires-Dist")
    unconditional = sorted(r.split(">")[0].split("<")[0] for r in requires if "extra ==" not in r)
    # prometheus_client: the services' /metrics; rich: progress and `llmos status --watch`
    assert unconditional == ["click", "prometheus_client", "protobuf", "pyzmq", "rich"]
    assert any(r.startswith("torch") and 'extra == "worker"' in r for r in requires)
    assert proto == (ROOT / "proto/llmos/v1/llmos.proto").read_text()
    assert "llmos/py.typed" in names
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        name.removeprefix("llmos/models/llmos-demo/") for name in names if name.startswith("llmos/models/")
    }  # the embedded default model ships in the wheel


def test_the_client_venv_has_no_torch_and_imports_the_sdk(client_venv):
    python = client_venv / "bin" / "python"
    script = (
        "import importlib.util, llmos.client, llmos.aio, llmos.wire;"
        "print(importlib.util.find_spec('torch'), importlib.util.find_spec('transformers'))"
    )
    printed = subprocess.run([str(python), "-c", script], check=True, capture_output=True, text=True)
    assert printed.stdout.split() == ["None", "None"]


def test_llmos_submit_from_the_client_venv_gets_an_answer_from_a_real_stack(
    client_venv, tiny_model_dir, tmp_path
):
    with Stack(tiny_model_dir, tmp_path, num_workers=1) as stack:
        answered = subprocess.run(
            [
                str(client_venv / "bin" / "llmos"),
                "submit",
                "--broker-address",
                stack.broker_address,
                "--max-tokens",
                "4",
                "--no-stream",
                "--json",
                "Hello",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert answered.returncode == 0, answered.stderr
    assert '"finishReason"' in answered.stdout or '"finish_reason"' in answered.stdout


def test_a_worker_command_in_the_client_venv_says_what_to_install(client_venv):
    answered = subprocess.run(
        [str(client_venv / "bin" / "llmos"), "worker", "--model", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert answered.returncode != 0
    assert "llmos[worker]" in answered.stdout + answered.stderr
