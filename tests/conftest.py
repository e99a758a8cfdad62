import os
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmos.tiny_model import make_tiny_model

# The tests' stacks run --insecure (ServiceStack's default) and so do the SDK clients
# they make: a keyring in $LLMOS_HOME (from `make run`) must not turn those to CURVE.
# tests/test_security.py runs secure stacks, with the keys given explicitly.
os.environ["LLMOS_INSECURE"] = "1"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        help="run the long variants (tests/test_fuzz_wire.py: 100,000 frames per socket)",
    )
    parser.addoption(
        "--containers",
        action="store_true",
        help="build the image and run the compose stack with podman (tests/test_containers.py; minutes)",
    )


@pytest.fixture(scope="session", autouse=True)
def cpu_kernels_built() -> bool:
    """The CPU kernels, built once before any test: the workers the tests start then load
    them from the cache instead of each compiling them (`workers.cpu_kernels`)."""
    from workers import cpu_kernels

    return cpu_kernels.has_kernels()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded llmos-tiny model, made once per test session."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "llmos-tiny")


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    """llmos-tiny on CPU, for the tests that drive an engine directly."""
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)
