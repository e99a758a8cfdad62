"""The GGUF files llama.cpp runs for `llmos bench engine --peer llama.cpp`: the bench's
own model, converted by llama.cpp's `convert_hf_to_gguf.py`, and cached.

A `dummy:<preset>` model is built again in float32 (the same seeded weights, whatever
the bench runs: int8, bfloat16) and saved (`save_pretrained`, with its tokenizer) to a
temporary directory first; a model directory is converted as it is. Files live
under `<cache dir>/<model key>/<outtype>.gguf`, the key naming the model and the
dummy weights' seed, so a second run converts nothing.

`python -m llmos_bench.peer_gguf LLAMA_CPP_DIR CONVERTER_ARGS...` runs the
converter with two patches (`patch_pre_tokenizer`, `patch_sentencepiece_lookup`), in a process of its own: the
converter puts its own gguf-py on sys.path and configures logging as a script.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers.dummy import SEED as DUMMY_SEED
from workers.dummy import build_dummy_model, dummy_preset_name

CONVERTER = "convert_hf_to_gguf.py"
OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # what the converter writes itself


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmos" / "peer-gguf"


def model_key(model: str) -> str:
    """The cache directory's name: the preset and its weights' seed, or a directory's
    name and a hash of its path."""
    if dummy_preset_name(model) is not None:
        return f"{model.replace(':', '-')}-seed{DUMMY_SEED}"
    path = str(Path(model).expanduser().resolve())
    safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(path).name)
    return f"{safe_name}-{hashlib.sha256(path.encode()).hexdigest()[:12]}"


def ensure_gguf_files(
    model: str,
    tokenizer: Any,
    outtypes: list[str],
    cache_dir: Path,
    llama_cpp_dir: str,
    echo: Callable[[str], None],
) -> dict[str, Path]:
    """{outtype: GGUF path}, converting (once) the ones not in the cache yet."""
    directory = cache_dir / model_key(model)
    paths = {outtype: directory / f"{outtype}.gguf" for outtype in outtypes}
    missing = [outtype for outtype, path in paths.items() if not path.is_file()]
    if not missing:
        return paths
    converter = find_converter(llama_cpp_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llmos-peer-hf-") as saved:
        source = Path(model).expanduser().resolve()
        preset = dummy_preset_name(model)
        if preset is not None:  # random weights exist only in memory: the same seeded ones, float32
            # (the bench's own copy may be quantized or bfloat16; every GGUF type starts from float32)
            build_dummy_model(preset).save_pretrained(saved)
            tokenizer.save_pretrained(saved)
            source = Path(saved)
        for outtype in missing:
            echo(f"converting {model} to GGUF ({outtype}) with {converter} ...")
            convert(converter, source, outtype, paths[outtype])
    return paths


def find_converter(llama_cpp_dir: str) -> Path:
    converter = Path(llama_cpp_dir).expanduser() / CONVERTER if llama_cpp_dir else None
    if converter is None or not converter.is_file():
        raise SystemExit(
            f"llmos bench engine --peer llama.cpp: {CONVERTER} not found"
            + (f" in {llama_cpp_dir}" if llama_cpp_dir else "")
            + "; point --peer-llama-cpp-dir at a llama.cpp source tree (the llama-cpp-python "
            "sdist carries one in vendor/llama.cpp), or fill the cache with GGUF files"
        )
    return converter


def convert(converter: Path, source: Path, outtype: str, out_path: Path) -> None:
    """One conversion, written beside `out_path` and renamed onto it when whole."""
    partial = out_path.with_suffix(f".partial-{os.getpid()}")
    command = [sys.executable, "-m", "llmos_bench.peer_gguf", str(converter.parent)]
    command += [str(source), "--outtype", outtype, "--outfile", str(partial)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise SystemExit(f"GGUF conversion ({outtype}) failed:\n{done.stderr[-4000:]}")
    partial.replace(out_path)


def is_gpt2_byte_level(tokenizer: Any) -> bool:
    """Whether the tokenizer splits text as GPT-2 does: a ByteLevel pre-tokenizer with
    GPT-2's regex (use_regex), alone."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.pre_tokenizer is None:
        return False
    pre = json.loads(backend.to_str())["pre_tokenizer"]
    return bool(pre.get("type") == "ByteLevel" and pre.get("use_regex", True))


def patch_pre_tokenizer(text_model_cls: Any) -> None:
    """llama.cpp names a BPE tokenizer's pre-tokenizer from a hash of the ids it gives a
    fixed text, listed per published model; a tokenizer trained here (dummy models use
    the llmos-tiny BPE) hashes to nothing listed and the converter stops. Where the
    hash is unknown and the tokenizer is a plain GPT-2 byte-level one, the name is
    'gpt-2': llama.cpp then splits text with GPT-2's regex, as this tokenizer does.
    Every listed tokenizer still gets the converter's own answer."""
    original = text_model_cls.get_vocab_base_pre

    def get_vocab_base_pre(self: Any, tokenizer: Any) -> str:
        try:
            return str(original(self, tokenizer))
        except NotImplementedError:
            if is_gpt2_byte_level(tokenizer):
                return "gpt-2"
            raise

    text_model_cls.get_vocab_base_pre = get_vocab_base_pre


def patch_sentencepiece_lookup(text_model_cls: Any) -> None:
    """The converter tries a SentencePiece vocabulary first and falls back to the others
    on FileNotFoundError, but imports sentencepiece before it looks for tokenizer.model:
    a model without that file (a byte-level BPE) would need sentencepiece installed only
    to be told it has none. The file is looked for first here; a model that has one
    still goes through the converter's own code (and needs sentencepiece)."""
    original = text_model_cls._create_vocab_sentencepiece

    def create_vocab_sentencepiece(self: Any) -> Any:
        if not (Path(self.dir_model) / "tokenizer.model").is_file():
            raise FileNotFoundError(f"no tokenizer.model in {self.dir_model}")
        return original(self)

    text_model_cls._create_vocab_sentencepiece = create_vocab_sentencepiece


def run_converter(llama_cpp_dir: str, converter_args: list[str]) -> None:
    sys.path.insert(0, llama_cpp_dir)
    sys.argv = [str(Path(llama_cpp_dir) / CONVERTER), *converter_args]
    import convert_hf_to_gguf  # type: ignore[import-not-found]  # puts its gguf-py on sys.path
    from conversion.base import TextModel  # type: ignore[import-not-found]

    patch_pre_tokenizer(TextModel)
    patch_sentencepiece_lookup(TextModel)
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    run_converter(sys.argv[1], sys.argv[2:])
