"""What a worker accepts from its broker and its kernel, checked before it costs
anything: the prompt's size before tokenizing, ids and lists within bounds, token
ids within the model's vocabulary (an id past it would fail the engine's whole
step), and a kernel reply that grants no more KV than the worker asked for.

Plain functions over wire messages; the service decides what to do with a refusal.
"""

from __future__ import annotations

from llmos.wire import pb
from workers.requests import Delta, error_delta

# A byte-level BPE token is rarely longer than 8 bytes, so a prompt of more bytes than
# max_model_len * 8 cannot fit the context; the broker applies the same bound.
MAX_BYTES_PER_TOKEN = 8
MAX_REQUEST_ID_BYTES = 256  # the broker's own bound
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_INPUTS = 4096  # embed / classify texts in one dispatch (the broker's default is 256)
MAX_BLOCK_SIZE = 4096  # tokens per KV block a kernel may choose


def max_prompt_bytes(max_model_len: int) -> int:
    return max_model_len * MAX_BYTES_PER_TOKEN


def is_longer_than(text: str, max_bytes: int) -> bool:
    """Is `text` more than `max_bytes` of UTF-8? Encodes only when its length cannot tell."""
    if len(text) > max_bytes:
        return True  # a character is at least one byte
    if 4 * len(text) <= max_bytes:
        return False  # and at most four
    return len(text.encode("utf-8", "surrogatepass")) > max_bytes


def is_valid_request_id(request_id: str) -> bool:
    return 0 < len(request_id) and not is_longer_than(request_id, MAX_REQUEST_ID_BYTES)


def check_generate_dispatch(dispatch: pb.Dispatch, max_model_len: int, vocab_size: int) -> Delta | None:
    """The error delta for a dispatch this worker refuses before tokenizing it, else None."""
    request_id, limit_bytes = dispatch.request_id, max_prompt_bytes(max_model_len)
    if is_longer_than(dispatch.prompt, limit_bytes):
        return error_delta(
            request_id,
            pb.TOO_LARGE,
            f"the prompt is over {limit_bytes} bytes: more than this model's "
            f"{max_model_len} tokens of context at {MAX_BYTES_PER_TOKEN} bytes a token",
        )
    generated = dispatch.generated_token_ids
    if len(generated) >= max_model_len:
        return error_delta(request_id, pb.TOO_LARGE, f"{len(generated)} generated tokens fill the context")
    if generated and not (0 <= min(generated) and max(generated) < vocab_size):
        return error_delta(
            request_id, pb.INVALID_ARGUMENT, f"a generated token id is outside 0..{vocab_size - 1}"
        )
    stop = dispatch.sampling.stop
    if len(stop) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_CHARS for s in stop):
        return error_delta(
            request_id,
            pb.INVALID_ARGUMENT,
            f"at most {MAX_STOP_STRINGS} stop strings of {MAX_STOP_CHARS} chars",
        )
    return None


def check_pooling_dispatch(dispatch: pb.Dispatch, max_model_len: int) -> Delta | None:
    """As check_generate_dispatch, for embed / classify: each input is bounded as a prompt is."""
    request_id, limit_bytes = dispatch.request_id, max_prompt_bytes(max_model_len)
    if len(dispatch.inputs) > MAX_INPUTS:
        return error_delta(request_id, pb.TOO_LARGE, f"{len(dispatch.inputs)} inputs; at most {MAX_INPUTS}")
    if any(is_longer_than(text, limit_bytes) for text in dispatch.inputs):
        return error_delta(request_id, pb.TOO_LARGE, f"an input is over {limit_bytes} bytes")
    return None


def kernel_geometry_problem(reply: pb.KernelReply, kv_capacity_tokens: int) -> str | None:
    """Why the answer to a KernelRegister cannot be adopted, else None: the kernel
    divides the capacity this worker registered, so it never grants more tokens."""
    if not 1 <= reply.block_size <= MAX_BLOCK_SIZE:
        return f"block size {reply.block_size} is not in 1..{MAX_BLOCK_SIZE}"
    if reply.kv_blocks_total * reply.block_size > kv_capacity_tokens:
        return (
            f"{reply.kv_blocks_total} blocks of {reply.block_size} tokens exceed the "
            f"{kv_capacity_tokens} tokens registered"
        )
    return None
