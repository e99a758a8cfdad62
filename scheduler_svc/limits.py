"""What the scheduler accepts from a peer: sizes that bound one decision's cost.

A ScheduleRequest past a bound is refused INVALID_ARGUMENT before any policy
runs; the bounds sit far above what a broker sends (2,048 pending requests per
tier, one entry per worker and per running request). Lists that only guide
placement (prefix hashes) are cut in `scheduler_svc.convert` rather than refused.
"""

from __future__ import annotations

from llmos.wire import WireError, pb

MAX_PENDING = 65_536
MAX_WORKERS = 4_096
MAX_RUNNING = 262_144  # running and leaving, each
MAX_TIER_ANSWERS = 256
MAX_MODELS_PER_WORKER = 64
MAX_POLICY_NAME_CHARS = 64


def invalid(what: str) -> WireError:
    return WireError(pb.INVALID_ARGUMENT, what)


def check_schedule_request(request: pb.ScheduleRequest) -> None:
    """Refuse a batch whose lists are past their bounds (len() of a repeated field is O(1))."""
    for name, count, limit in (
        ("pending", len(request.pending), MAX_PENDING),
        ("workers", len(request.workers), MAX_WORKERS),
        ("running", len(request.running), MAX_RUNNING),
        ("leaving", len(request.leaving), MAX_RUNNING),
        ("tier_answers", len(request.tier_answers), MAX_TIER_ANSWERS),
    ):
        if count > limit:
            raise invalid(f"schedule_request lists {count} {name}; at most {limit}")
    if any(len(worker.models) > MAX_MODELS_PER_WORKER for worker in request.workers):
        raise invalid(f"a worker in schedule_request lists more than {MAX_MODELS_PER_WORKER} models")


def check_policy_name(name: str) -> None:
    """A name no policy could have is refused without echoing it back."""
    if len(name) > MAX_POLICY_NAME_CHARS or not name.isprintable():
        raise invalid(f"a policy name is at most {MAX_POLICY_NAME_CHARS} printable characters")
