"""How much better than fcfs can any policy make the mean job completion time of
`llmos bench sched`'s workload (a)? An idealised model, not a benchmark.

The very jobs `llmos bench sched` submits (same seed, same generators), run on
a fluid model of its simulated workers: `slots` requests in all, one token per
request per step, a step of `step_base_ms + step_per_seq_ms * requests per
worker`, no prefill, no messages, free preemption and migration. Policies:
fcfs (arrival order), sjf (shortest job first, no preemption), srpt (shortest
remaining first, preemptive at every step; interactive first, as the tiers
order them) and las (least attained service first, likewise: an ideal mlfq,
about the best a policy blind to lengths does here). With `--llmos NAME`, also
the scheduler's own policy code, asked at every step as the broker would
(every answer fills its max_tokens, as the simulated workers' do, so the
broker would report an answer fill of 1; with `--declared-max-tokens` batch
jobs ask for more than they make). Prints the mean JCT of each and its gain
over fcfs, by class, at the given batch arrival rates.

    python scripts/jct_bound.py                     # the rates of --batch-load 0.9, 1 and 1.1
    python scripts/jct_bound.py --rate 53           # one rate
    python scripts/jct_bound.py --rate 53 --llmos mlfq --llmos fcfs
    python scripts/jct_bound.py --rate 54.7 --llmos mlfq --llmos fcfs \
        --prefill-token-ms 0.02 --cached-resumes   # as the stack runs

With prefills and cached resumes the model's llmos policies match the stack's
measured JCTs to within a few percent (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataclasses import dataclass, replace  # noqa: E402
from typing import Any  # noqa: E402

from llmos_bench.sched_config import SchedBenchConfig  # noqa: E402
from llmos_bench.sched_runs import BATCH_LENGTH_CLASSES, chat_workloads  # noqa: E402
from llmos_bench.workload import INTERACTIVE, BatchFlood, ChatWorkload  # noqa: E402
from scheduler_svc.data import PendingRequest, RunningRequest, WorkerSlots  # noqa: E402
from scheduler_svc.policies import make_policy  # noqa: E402

BENCH = SchedBenchConfig()  # the bench's defaults: workload (a) and the simulated workers
# interactive jobs, then the bench's batch length classes ("short (<=16)" -> "short")
CLASSES = {
    "interactive": lambda tier, tokens: tier == INTERACTIVE,
    **{
        label.split()[0]: (
            lambda tier, tokens, low=low, high=high: tier != INTERACTIVE and low <= tokens <= high
        )
        for label, (low, high) in BATCH_LENGTH_CLASSES.items()
    },
}


def simulate(policy: str, batch_rate: float, args: argparse.Namespace) -> list[tuple[float, str, int]]:
    """(JCT, tier, tokens) of every job."""
    chat = ChatWorkload(rate_per_s=args.interactive_rate, duration_s=args.duration).jobs(args.seed)
    flood = BatchFlood(
        burst=args.slots,
        rate_per_s=batch_rate,
        duration_s=args.duration,
        pareto_alpha=BENCH.batch_pareto_alpha,
        min_tokens=BENCH.batch_min_tokens,
        max_tokens=BENCH.batch_max_tokens,
    ).jobs(args.seed)
    arrivals = sorted(
        ((job.offset_s, job.max_tokens, job.tier, len(job.prompt)) for job in chat + flood),
        key=lambda a: a[0],
    )
    if policy.startswith("llmos-"):
        return simulate_llmos_policy(policy.removeprefix("llmos-"), arrivals, args)
    now_s, next_job = 0.0, 0
    waiting: list[list] = []  # [tokens left, arrival, tier, tokens]
    running: list[list] = []
    done: list[tuple[float, str, int]] = []
    while next_job < len(arrivals) or waiting or running:
        while next_job < len(arrivals) and arrivals[next_job][0] <= now_s:
            offset_s, tokens, tier, _ = arrivals[next_job]
            waiting.append([tokens, offset_s, tier, tokens])
            next_job += 1
        if not waiting and not running:
            now_s = arrivals[next_job][0]
            continue
        if policy == "fcfs":
            waiting.sort(key=lambda job: job[1])
        elif policy == "sjf":
            waiting.sort(key=lambda job: (job[2] != INTERACTIVE, job[0], job[1]))
        if policy in ("srpt", "las"):
            # srpt: fewest tokens left; las: fewest tokens made (blind to lengths)
            size = (lambda job: job[0]) if policy == "srpt" else (lambda job: job[3] - job[0])
            everyone = sorted(running + waiting, key=lambda job: (job[2] != INTERACTIVE, size(job), job[1]))
            running, waiting = everyone[: args.slots], everyone[args.slots :]
        else:
            while len(running) < args.slots and waiting:
                running.append(waiting.pop(0))
        now_s += step_s(len(running), args)
        for job in running:
            job[0] -= 1
        for job in [job for job in running if job[0] <= 0]:
            running.remove(job)
            done.append((now_s - job[1], job[2], job[3]))
    return done


def step_s(num_running: int, args: argparse.Namespace) -> float:
    return (args.step_base_ms + args.step_per_seq_ms * num_running / args.workers) / 1e3


@dataclass
class ModelJob:
    request_id: str
    arrival_s: float
    tier: str
    max_tokens: int
    prompt_chars: int
    arrival_seq: int
    generated_tokens: int = 0
    queued_at_s: float = 0.0  # since the last (re-)queueing
    worker_id: str = ""
    dispatched_at_s: float = 0.0
    tokens_at_dispatch: int = 0
    declared_max_tokens: int = 0  # what the policy is told (0: max_tokens, the answer's length)

    @property
    def bound(self) -> int:
        return self.declared_max_tokens or self.max_tokens


def simulate_llmos_policy(
    name: str, arrivals: list[tuple], args: argparse.Namespace
) -> list[tuple[float, str, int]]:
    """The scheduler's own policy code (`scheduler_svc`), asked at every step as the broker
    would, on the same fluid machine: `args.workers` workers of `args.slots / args.workers`
    slots, free preemption (a preempted job keeps its tokens and waits again)."""
    policy = make_policy(name)
    slots_per_worker = args.slots // args.workers
    worker_ids = [f"w{index}" for index in range(args.workers)]
    tier_rank = {INTERACTIVE: 0, "standard": 1, "batch": 2}
    now_s, next_job = 0.0, 0
    waiting: dict[str, ModelJob] = {}
    running: dict[str, ModelJob] = {}
    done: list[tuple[float, str, int]] = []
    while next_job < len(arrivals) or waiting or running:
        while next_job < len(arrivals) and arrivals[next_job][0] <= now_s:
            offset_s, tokens, tier, prompt_chars = arrivals[next_job]
            declared = args.declared_max_tokens if tier != INTERACTIVE else 0
            job = ModelJob(
                f"r{next_job}",
                offset_s,
                tier,
                tokens,
                prompt_chars,
                next_job,
                queued_at_s=offset_s,
                declared_max_tokens=declared,
            )
            waiting[job.request_id] = job
            next_job += 1
        if not waiting and not running:
            now_s = arrivals[next_job][0]
            continue
        started = set(running)
        if waiting:
            decide(policy, waiting, running, worker_ids, slots_per_worker, tier_rank, now_s)
        # a job (re)started this step prefills its prompt and the tokens it made before
        # (with --cached-resumes a resume finds its tokens cached and prefills nothing)
        prefill_tokens = sum(
            job.prompt_chars // 4 + job.generated_tokens
            for request_id, job in running.items()
            if request_id not in started and not (args.cached_resumes and job.generated_tokens)
        )
        now_s += step_s(len(running), args) + (args.prefill_token_ms * prefill_tokens / args.workers / 1e3)
        for job in list(running.values()):
            job.generated_tokens += 1
            if job.generated_tokens >= job.max_tokens:
                del running[job.request_id]
                done.append((now_s - job.arrival_s, job.tier, job.max_tokens))
    return done


def decide(
    policy: Any,
    waiting: dict[str, ModelJob],
    running: dict[str, ModelJob],
    worker_ids: list[str],
    slots_per_worker: int,
    tier_rank: dict[str, int],
    now_s: float,
) -> None:
    """One ScheduleRequest as the broker builds it, and its decision applied."""
    per_worker = {worker_id: 0 for worker_id in worker_ids}
    for job in running.values():
        per_worker[job.worker_id] += 1
    pending = [
        PendingRequest(
            j.request_id,
            tier_rank=tier_rank[j.tier],
            model="m",
            prompt_chars=j.prompt_chars,
            max_tokens=j.bound,
            arrival_seq=j.arrival_seq,
            generated_tokens=j.generated_tokens,
            waited_s=now_s - j.queued_at_s,
            tier=j.tier,
            answer_fill=answer_fill(j),
        )
        for j in waiting.values()
    ]
    live = [
        RunningRequest(
            j.request_id,
            j.worker_id,
            tier_rank=tier_rank[j.tier],
            prompt_chars=j.prompt_chars,
            generated_tokens=j.generated_tokens,
            max_tokens=j.bound,
            arrival_seq=j.arrival_seq,
            running_s=now_s - j.dispatched_at_s,
            tier=j.tier,
            tokens_since_dispatch=j.generated_tokens - j.tokens_at_dispatch,
            answer_fill=answer_fill(j),
        )
        for j in running.values()
    ]
    workers = [
        WorkerSlots(worker_id, ("m",), count, slots_per_worker) for worker_id, count in per_worker.items()
    ]
    decision = policy.schedule(pending, live, workers, None)
    for preemption in decision.preemptions:
        job = running.pop(preemption.request_id)
        per_worker[job.worker_id] -= 1
        job.queued_at_s = now_s
        waiting[job.request_id] = job
    for placement in decision.placements:
        job = waiting.get(placement.request_id)
        if job is None or per_worker[placement.worker_id] >= slots_per_worker:
            continue
        del waiting[job.request_id]
        job.worker_id, job.dispatched_at_s = placement.worker_id, now_s
        job.tokens_at_dispatch = job.generated_tokens
        per_worker[placement.worker_id] += 1
        running[job.request_id] = job


def answer_fill(job: ModelJob) -> float:
    """What the broker would report for the job's tier: answers fill an exact bound (1);
    under a declared one, they fill about the mean answer's share of it (low)."""
    return 1.0 if not job.declared_max_tokens else 0.1


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rate",
        type=float,
        action="append",
        help="batch arrivals per second (repeatable); default: the bench's "
        "rates at --batch-load 1, 0.9 and 1.1",
    )
    parser.add_argument("--interactive-rate", type=float, default=BENCH.interactive_rate)
    parser.add_argument("--duration", type=float, default=BENCH.duration_s)
    parser.add_argument("--workers", type=int, default=BENCH.workers)
    parser.add_argument(
        "--slots", type=int, default=BENCH.workers * BENCH.slots, help="slots in all (workers x slots)"
    )
    parser.add_argument("--step-base-ms", type=float, default=BENCH.step_base_ms)
    parser.add_argument("--step-per-seq-ms", type=float, default=BENCH.step_per_seq_ms)
    parser.add_argument("--seed", type=int, default=BENCH.seed)
    parser.add_argument(
        "--prefill-token-ms",
        type=float,
        default=0.0,
        help="llmos policies only: step time per prefilled token (the simulated "
        "workers' default is 0.02), so preemption by recompute costs",
    )
    parser.add_argument(
        "--declared-max-tokens",
        type=int,
        default=0,
        help="llmos policies only: every batch job tells the policy this "
        "max_tokens (its answer ends before); 0: its answer's length",
    )
    parser.add_argument(
        "--cached-resumes",
        action="store_true",
        help="with --prefill-token-ms: a resumed job prefills nothing (its worker "
        "kept its tokens), only a first start pays",
    )
    parser.add_argument(
        "--llmos",
        action="append",
        default=[],
        help="also run this llmos scheduler policy (repeatable: mlfq, fcfs, ...)",
    )
    args = parser.parse_args()
    default_rates = [
        chat_workloads(replace(BENCH, batch_load=load))[1].rate_per_s for load in (1.0, 0.9, 1.1)
    ]
    for rate in args.rate or default_rates:
        fcfs_mean = None
        for policy in ("fcfs", "sjf", "srpt", "las", *(f"llmos-{name}" for name in args.llmos)):
            done = simulate(policy, rate, args)
            jct = mean([d[0] for d in done])
            fcfs_mean = fcfs_mean or jct
            by_class = "  ".join(
                f"{name} {mean([d[0] for d in done if test(d[1], d[2])]):.2f}"
                for name, test in CLASSES.items()
            )
            print(
                f"batch rate {rate:5.1f}/s  {policy:4s}  mean JCT {jct:.2f} s  "
                f"gain vs fcfs {fcfs_mean / jct:.2f}x  ({by_class})"
            )


if __name__ == "__main__":
    main()
