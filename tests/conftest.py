from pathlib import Path

import pytest

from llmos.tiny_model import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded llmos-tiny model, made once per test session."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "llmos-tiny")
