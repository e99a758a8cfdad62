"""How much better than fcfs can any policy make the mean job completion time of
`llmos bench sched`'s workload (a)? An idealised model, not a benchmark.

The very jobs `llmos bench sched` submits (same seed, same generators), run on
a fluid model of its simulated workers: `slots` requests in all, one token per
request per step, a step of `step_base_ms + step_per_seq_ms * requests per
worker`, no prefill, no messages, free preemption and migration. Policies:
fcfs (arrival order), sjf (shortest job first, no preemption) and srpt
(shortest remaining first, preemptive at every step; interactive first, as the
tiers order them). Prints the mean JCT of each and its gain over fcfs, by
class, at the given batch arrival rates.

    python scripts/jct_bound.py                     # nominal rate and a few others
    python scripts/jct_bound.py --rate 53           # one rate

The stack's own fcfs is slower than this model's at the same rate (messages,
prefills, idle slots between requests); matching the model's fcfs JCT to the
measured one gives the rate the stack effectively runs at (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmos.bench.workload import INTERACTIVE, BatchFlood, ChatWorkload  # noqa: E402

CLASSES = {"interactive": lambda tier, tokens: tier == INTERACTIVE,
           "short": lambda tier, tokens: tier != INTERACTIVE and tokens <= 16,
           "medium": lambda tier, tokens: tier != INTERACTIVE and 16 < tokens <= 64,
           "long": lambda tier, tokens: tier != INTERACTIVE and tokens > 64}


def simulate(policy: str, batch_rate: float, args: argparse.Namespace) -> list[tuple[float, str, int]]:
    """(JCT, tier, tokens) of every job."""
    chat = ChatWorkload(rate_per_s=args.interactive_rate, duration_s=args.duration).jobs(args.seed)
    flood = BatchFlood(burst=args.slots, rate_per_s=batch_rate, duration_s=args.duration,
                       pareto_alpha=1.2, min_tokens=8, max_tokens=256).jobs(args.seed)
    arrivals = sorted((job.offset_s, job.max_tokens, job.tier) for job in chat + flood)
    now_s, next_job = 0.0, 0
    waiting: list[list] = []   # [tokens left, arrival, tier, tokens]
    running: list[list] = []
    done: list[tuple[float, str, int]] = []
    while next_job < len(arrivals) or waiting or running:
        while next_job < len(arrivals) and arrivals[next_job][0] <= now_s:
            offset_s, tokens, tier = arrivals[next_job]
            waiting.append([tokens, offset_s, tier, tokens])
            next_job += 1
        if not waiting and not running:
            now_s = arrivals[next_job][0]
            continue
        if policy == "fcfs":
            waiting.sort(key=lambda job: job[1])
        elif policy == "sjf":
            waiting.sort(key=lambda job: (job[2] != INTERACTIVE, job[0], job[1]))
        if policy == "srpt":
            everyone = sorted(running + waiting, key=lambda job: (job[2] != INTERACTIVE, job[0], job[1]))
            running, waiting = everyone[:args.slots], everyone[args.slots:]
        else:
            while len(running) < args.slots and waiting:
                running.append(waiting.pop(0))
        now_s += (args.step_base_ms + args.step_per_seq_ms * len(running) / args.workers) / 1e3
        for job in running:
            job[0] -= 1
        for job in [job for job in running if job[0] <= 0]:
            running.remove(job)
            done.append((now_s - job[1], job[2], job[3]))
    return done


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, action="append",
                        help="batch arrivals per second (repeatable); default: 48.1 40 53 60")
    parser.add_argument("--interactive-rate", type=float, default=8.0)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--slots", type=int, default=32, help="slots in all (workers x slots)")
    parser.add_argument("--step-base-ms", type=float, default=20.0)
    parser.add_argument("--step-per-seq-ms", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for rate in args.rate or [48.1, 40.0, 53.0, 60.0]:
        fcfs_mean = None
        for policy in ("fcfs", "sjf", "srpt"):
            done = simulate(policy, rate, args)
            jct = mean([d[0] for d in done])
            fcfs_mean = fcfs_mean or jct
            by_class = "  ".join(f"{name} {mean([d[0] for d in done if test(d[1], d[2])]):.2f}"
                                 for name, test in CLASSES.items())
            print(f"batch rate {rate:5.1f}/s  {policy:4s}  mean JCT {jct:.2f} s  "
                  f"gain vs fcfs {fcfs_mean / jct:.2f}x  ({by_class})")


if __name__ == "__main__":
    main()
