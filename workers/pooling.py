"""The pooling engine: sentence embeddings and sequence classification, batched.

A request is a list of texts and ends in one final delta holding one result
per text, in input order. Each `step()` is schedule -> execute -> postprocess:
it takes waiting inputs in arrival order, across requests (a request's inputs
may span several steps), up to `max_batch_inputs` texts and `max_batch_tokens`
padded tokens; runs the model once on the right-padded batch; and finishes the
requests whose last input is done.

    embed:    AutoModel -> mean of the last hidden states over the attention
              mask -> L2-normalized (what sentence-transformers computes for
              all-MiniLM-L6-v2)
    classify: AutoModelForSequenceClassification -> softmax over the labels
              (sigmoid for a multi-label model), labels from config.id2label

Inputs longer than `max_length` tokens are truncated, as sentence-transformers
does; `prompt_tokens` counts the tokens the model saw. Nothing is cached
between steps, so there is no KV cache to size or to ask the kernel for.

Same interface as `workers.reference_engine.ReferenceEngine`, so `workers.engine_thread` drives
either; no sockets, no threads here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from llmos.wire import pb
from workers.requests import Delta, error_delta
from workers.tasks import TASK_NAMES

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_INPUTS = 64
DEFAULT_MAX_BATCH_TOKENS = 16384  # padded: inputs x the longest input in the batch
POOLING_TASKS = frozenset({pb.TASK_KIND_EMBED, pb.TASK_KIND_CLASSIFY})
MULTI_LABEL = "multi_label_classification"


@dataclass
class PoolingRequest:
    request_id: str
    kind: int  # pb.TASK_KIND_EMBED or pb.TASK_KIND_CLASSIFY
    inputs: list[str]


@dataclass
class PoolingSequence:
    """A request being worked on: its inputs' token ids and the results so far."""

    request: PoolingRequest
    input_token_ids: list[list[int]]
    results: list[list[float]] = field(default_factory=list)  # one row per finished input

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_done(self) -> int:
        return len(self.results)

    @property
    def is_done(self) -> bool:
        return self.num_done == len(self.input_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(token_ids) for token_ids in self.input_token_ids)


class PoolingEngine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        task: int,
        *,
        max_length: int,
        max_batch_inputs: int = DEFAULT_MAX_BATCH_INPUTS,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        worker_id: str = "",
    ) -> None:
        assert task in POOLING_TASKS, f"not a pooling task: {task}"
        assert max_length > 0 and max_batch_inputs > 0
        self.model = model
        self.tokenizer = tokenizer
        self.task = task
        self.max_length = max_length
        self.max_batch_inputs = max_batch_inputs
        self.max_batch_tokens = max_batch_tokens
        self.worker_id = worker_id
        config = model.config
        # The padding must be the id the model looks for: a causal-LM classifier
        # scores the last token that is not config.pad_token_id.
        self.pad_token_id = next(
            (i for i in (config.pad_token_id, tokenizer.pad_token_id) if i is not None), 0
        )
        if task == pb.TASK_KIND_CLASSIFY and config.pad_token_id is None:
            # without a pad id such a model cannot find each row's last token
            log.warning("worker %s: the model has no pad_token_id; classifying one input per step", worker_id)
            self.max_batch_inputs = 1
        self.labels = (
            [str(config.id2label[i]) for i in range(config.num_labels)]
            if task == pb.TASK_KIND_CLASSIFY
            else []
        )
        self.sequences: dict[str, PoolingSequence] = {}  # arrival order
        self.pending_deltas: list[Delta] = []

    # ---------------------------------------------------------------- requests in

    def add_request(self, request: PoolingRequest) -> None:
        """Tokenize and queue a request; one that cannot run gets an error delta at the next step."""
        assert request.request_id not in self.sequences, f"duplicate request {request.request_id}"
        problem = self.check_request(request)
        if problem is None:
            try:
                input_token_ids = self.tokenizer(
                    list(request.inputs), truncation=True, max_length=self.max_length
                )["input_ids"]
            except Exception as exc:  # a tokenizer bug must cost one request, not the worker
                log.exception("worker %s request %s: tokenizer failed", self.worker_id, request.request_id)
                problem = error_delta(request.request_id, pb.WORKER_FAILED, f"tokenizer failed: {exc}")
        if problem is not None:
            log.warning(
                "worker %s request %s refused: %s", self.worker_id, request.request_id, problem.error_message
            )
            self.pending_deltas.append(problem)
            return
        self.sequences[request.request_id] = PoolingSequence(request, input_token_ids)

    def check_request(self, request: PoolingRequest) -> Delta | None:
        """The error delta for a request this engine can never run, else None."""
        message = None
        if request.kind != self.task:
            message = (
                f"this worker serves {TASK_NAMES[self.task]} requests, "
                f"not {TASK_NAMES.get(request.kind, request.kind)}"
            )
        elif not request.inputs:
            message = "inputs is empty"
        elif (empty := next((i for i, text in enumerate(request.inputs) if not text), None)) is not None:
            message = f"input {empty} is an empty string"
        return None if message is None else error_delta(request.request_id, pb.INVALID_ARGUMENT, message)

    def cancel(self, request_id: str) -> bool:
        """Forget a request; False if it is not here."""
        return self.sequences.pop(request_id, None) is not None

    def drop_all(self) -> list[str]:
        """Forget every request (their broker re-queued them); return their ids."""
        request_ids = list(self.sequences)
        self.sequences.clear()
        self.pending_deltas.clear()
        return request_ids

    def fail_all(self, message: str) -> list[Delta]:
        """Error deltas for every request (after a failure that is not one request's)."""
        return [error_delta(request_id, pb.WORKER_FAILED, message) for request_id in self.drop_all()]

    # ---------------------------------------------------------------- state

    @property
    def has_work(self) -> bool:
        return bool(self.sequences or self.pending_deltas)

    @property
    def num_running(self) -> int:
        return len(self.sequences)

    @property
    def num_cached_tokens(self) -> int:
        return 0  # nothing is kept between steps

    # ---------------------------------------------------------------- the step

    def step(self) -> list[Delta]:
        """Run one batch of waiting inputs; return the errors and the finished requests."""
        deltas, self.pending_deltas = self.pending_deltas, []
        batch = self.schedule()
        if not batch:
            return deltas
        try:
            rows = self.execute([sequence.input_token_ids[index] for sequence, index in batch])
        except Exception as exc:  # a failed batch costs its requests, not the others
            log.exception("worker %s: the model failed on a batch of %d inputs", self.worker_id, len(batch))
            failed = dict.fromkeys(sequence.request_id for sequence, _ in batch)
            for request_id in failed:
                self.cancel(request_id)
            return deltas + [
                error_delta(request_id, pb.WORKER_FAILED, f"the model failed on this request: {exc}")
                for request_id in failed
            ]
        return deltas + self.postprocess(batch, rows)

    def schedule(self) -> list[tuple[PoolingSequence, int]]:
        """(sequence, input index) pairs in arrival order, within the batch limits; at least one."""
        batch: list[tuple[PoolingSequence, int]] = []
        longest = 0
        for sequence in self.sequences.values():
            for index in range(sequence.num_done, len(sequence.input_token_ids)):
                length = max(longest, len(sequence.input_token_ids[index]))
                if batch and (
                    len(batch) == self.max_batch_inputs or (len(batch) + 1) * length > self.max_batch_tokens
                ):
                    return batch
                batch.append((sequence, index))
                longest = length
        return batch

    def execute(self, token_ids: list[list[int]]) -> list[list[float]]:
        """One forward over the right-padded batch: an embedding or the label scores per row."""
        device = self.model.device
        input_ids, attention_mask = pad_right(token_ids, self.pad_token_id)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        with torch.inference_mode():
            output = self.model(input_ids=input_ids, attention_mask=attention_mask)
            if self.task == pb.TASK_KIND_EMBED:
                rows = mean_pool_normalized(output.last_hidden_state, attention_mask)
            else:
                rows = label_scores(output.logits, self.model.config.problem_type)
        return rows.cpu().tolist()

    def postprocess(self, batch: list[tuple[PoolingSequence, int]], rows: list[list[float]]) -> list[Delta]:
        deltas = []
        for (sequence, index), row in zip(batch, rows, strict=True):
            assert index == sequence.num_done, "inputs finish in order"
            sequence.results.append(row)
            if sequence.is_done:
                del self.sequences[sequence.request_id]
                deltas.append(self.final_delta(sequence))
        return deltas

    def final_delta(self, sequence: PoolingSequence) -> Delta:
        delta = Delta(
            request_id=sequence.request_id,
            prompt_tokens=sequence.num_prompt_tokens,
            is_finished=True,
            finish_reason=pb.FINISH_REASON_LENGTH,
        )
        if self.task == pb.TASK_KIND_EMBED:
            delta.embeddings = sequence.results
        else:
            delta.classifications = [list(zip(self.labels, row, strict=True)) for row in sequence.results]
        return delta


def pad_right(token_ids: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each [rows, longest]."""
    longest = max(len(ids) for ids in token_ids)
    input_ids = torch.full((len(token_ids), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(token_ids), longest), dtype=torch.long)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def mean_pool_normalized(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of each row's unmasked hidden states, L2-normalized, in float32."""
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    summed = (hidden_states.to(torch.float32) * mask).sum(dim=1)
    mean = summed / mask.sum(dim=1).clamp(min=1e-9)
    return F.normalize(mean, p=2, dim=1)


def label_scores(logits: torch.Tensor, problem_type: str | None) -> torch.Tensor:
    """Each label's probability: softmax, or independent sigmoids for a multi-label model."""
    logits = logits.to(torch.float32)
    return torch.sigmoid(logits) if problem_type == MULTI_LABEL else torch.softmax(logits, dim=-1)
