"""The settings of `llmos bench sched`: one dataclass, one `--flag` per field."""

from __future__ import annotations

from dataclasses import dataclass

import click

from llmos.config import option
from scheduler_svc.policy_base import PolicyName
from workers.sim import LatencyProfile

BASELINE = PolicyName.FCFS.value
TENANT_WEIGHTS = {"A": 1, "B": 3}


@dataclass
class SchedBenchConfig:
    duration_s: float = option(15.0, "(a) arrival window of each run, seconds")
    interactive_rate: float = option(8.0, "(a) interactive arrivals per second (Poisson)")
    batch_load: float = option(
        1.0,
        "(a) tokens the batch flood asks for, as a multiple of the "
        "workers' capacity (1: the flood alone saturates them; the "
        "interactive arrivals come on top); the batch rate follows",
    )
    batch_pareto_alpha: float = option(1.2, "(a) shape of the batch answers' bounded Pareto law")
    batch_min_tokens: int = option(8, "(a) shortest batch answer")
    batch_max_tokens: int = option(256, "(a) longest batch answer")
    batch_declared_max_tokens: int = option(
        0,
        "(a) every batch request's max_tokens, its answer "
        "ending before (eos); 0: each asks for its answer's "
        "exact length",
    )
    workers: int = option(4, "(a, b) simulated workers")
    slots: int = option(8, "requests each simulated worker runs at once (max_num_seqs)")
    step_base_ms: float = option(20.0, "simulated step time: fixed part, ms")
    step_per_seq_ms: float = option(0.5, "simulated step time: per running request, ms")
    profile_file: str = option(
        "",
        "a latency profile JSON instead of the two --step-* figures (`llmos bench engine --write-profile`)",
    )
    policies: str = option(
        "fcfs,priority,mlfq,fair", "(a) policies to compare; fcfs and the headline policy always run"
    )
    headline_policy: str = option(
        "priority", "(a) the policy the headline TTFT and throughput ratios are for"
    )
    fair_warmup_s: float = option(3.0, "(b) seconds before the counting window opens")
    fair_window_s: float = option(20.0, "(b) counting window, seconds")
    fair_max_tokens: int = option(32, "(b) answer length of every tenant request")
    scale_workers: int = option(200, "(c) simulated workers")
    scale_requests: int = option(50_000, "(c) requests, in total")
    scale_max_tokens: int = option(8, "(c) answer length")
    scale_in_flight: int = option(2400, "(c) requests in flight at once, across all load processes")
    scale_clients: int = option(2, "(c) load-generator processes")
    scale_sim_processes: int = option(2, "(c) processes the simulated workers are spread over")
    scale_policy: str = option("priority", "(c) scheduler policy")
    scale_brokers: int = option(
        1,
        "(c) brokers, each with a scheduler of its own, sharing the kernel; the simulated workers' "
        "processes and the load processes are dealt out among them (at least as many of each)",
    )
    scale_stream: bool = option(
        True, "(c) stream each answer as chunks; --no-scale-stream: clients read whole answers (no chunks)"
    )
    decision_pending: int = option(1000, "pending requests per batch for the decision-time figures")
    drain_timeout_s: float = option(60.0, "after the arrivals stop, wait this long for every answer")
    skip_chat: bool = option(False, "skip workload (a)")
    skip_fair: bool = option(False, "skip workload (b)")
    skip_scale: bool = option(False, "skip workload (c)")
    scale_broker_args: str = option(
        "", "(c) more broker flags, e.g. '--journal none --audit-log none' to leave out their cost"
    )
    scale_insecure_baseline: bool = option(
        True, "(c) also run it with --insecure first; curve_throughput_ratio = CURVE / plain"
    )
    seed: int = option(0, "seed of every workload")
    log_dir: str = option("", "keep the processes' logs here (empty: a temporary directory)")
    json_only: bool = option(False, "print only the JSON line")
    plot: str = option(
        "", "also draw PNG charts into this directory: (a)'s TTFT by tier and policy, (b)'s shares"
    )

    @property
    def policy_names(self) -> list[str]:
        """The policies (a) runs: fcfs first, the listed ones, and the headline policy."""
        names = [name.strip() for name in self.policies.split(",") if name.strip()]
        return list(dict.fromkeys([BASELINE, *names, self.headline_policy]))

    def check(self) -> None:
        for name in [*self.policy_names, self.headline_policy, self.scale_policy]:
            try:
                PolicyName.parse(name)
            except ValueError as exc:
                raise click.BadParameter(str(exc)) from None
        if self.workers < 1 or self.slots < 1 or self.scale_workers < 1:
            raise click.BadParameter("--workers, --slots and --scale-workers must be at least 1")
        if not 1 <= self.batch_min_tokens <= self.batch_max_tokens:
            raise click.BadParameter("need 1 <= --batch-min-tokens <= --batch-max-tokens")
        if 0 < self.batch_declared_max_tokens < self.batch_max_tokens:
            raise click.BadParameter("--batch-declared-max-tokens must be 0 or at least --batch-max-tokens")
        if self.scale_clients < 1 or self.scale_in_flight < self.scale_clients:
            raise click.BadParameter("need --scale-clients >= 1 and --scale-in-flight >= it")
        most_brokers = min(self.scale_clients, self.scale_sim_processes, self.scale_workers)
        if not 1 <= self.scale_brokers <= most_brokers:
            raise click.BadParameter(
                "need 1 <= --scale-brokers <= each of --scale-clients, --scale-sim-processes, --scale-workers"
            )

    @property
    def num_steps(self) -> int:
        """The progress lines a run prints: decision time, then each measured run."""
        chat = 0 if self.skip_chat else 1 + len(self.policy_names)
        scale = 0 if self.skip_scale else 1 + self.scale_insecure_baseline
        return 1 + chat + (not self.skip_fair) + scale

    def profile(self) -> LatencyProfile:
        """The simulated workers' step times: `--profile-file`, or a GPU-like step of
        `--step-base-ms` plus `--step-per-seq-ms` per running request (prefill and
        context costs as LatencyProfile's defaults)."""
        if self.profile_file:
            return LatencyProfile.load(self.profile_file)
        return LatencyProfile(
            base_ms=self.step_base_ms, per_seq_ms=self.step_per_seq_ms, source="llmos bench sched"
        )


def weights_spec() -> str:
    return ",".join(f"{tenant}={weight}" for tenant, weight in TENANT_WEIGHTS.items())
