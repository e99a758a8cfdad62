"""What the engines read off a loaded `transformers` model: its context length, the
token ids that end an answer, and whether its attention is plain full attention."""

from __future__ import annotations

from typing import Any


def model_context_length(model: Any) -> int:
    return int(model.config.get_text_config().max_position_embeddings)


def model_eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """The ids `generate` stops at: the generation config's, else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}


def has_full_attention(model: Any, max_model_len: int) -> bool:
    """Plain full attention everywhere, for contexts up to `max_model_len`: what prefix
    caching needs (a cached block's keys and values are then the same whatever follows)
    and mixed steps compute. Sliding-window layers keep only part of the context, so no."""
    config = model.config.get_text_config()
    layer_types = getattr(config, "layer_types", None) or []
    if any(layer_type != "full_attention" for layer_type in layer_types):
        return False
    window = getattr(config, "sliding_window", None)
    uses_window = getattr(config, "use_sliding_window", window is not None)
    return not (uses_window and window is not None and window < max_model_len)


def model_vocab_size(model: Any) -> int:
    """Token ids the model can embed: an id at or past it would fail the forward."""
    return int(model.get_input_embeddings().num_embeddings)
