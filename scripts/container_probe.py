"""The host side of scripts/container_check.sh: talk to the compose stack as a user would.

Waits until both worker containers have registered, sends requests through the
ZeroMQ SDK and asks the gateway, then starts a long request, kills the worker
container running it (`podman kill`) and waits for the answer from the other
worker. Prints one JSON line; exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

from llmos.client import Client
from llmos.errors import LlmosError

NUM_WORKERS = 2
READY_TIMEOUT_S = 600.0  # two containers make and load the embedded model
LONG_MAX_TOKENS = 1500
GATEWAY_URL = "http://127.0.0.1:8000"


def wait_for_workers(client: Client, deadline_s: float) -> list[str]:
    while True:
        try:
            worker_ids = sorted(worker.worker_id for worker in client.status().workers)
            if len(worker_ids) >= NUM_WORKERS:
                return worker_ids
        except LlmosError:
            pass  # the broker is not up yet
        if time.monotonic() > deadline_s:
            sys.exit(f"container check: {NUM_WORKERS} workers did not register within {READY_TIMEOUT_S:g} s")
        time.sleep(1)


def gateway_ready() -> int:
    try:
        with urllib.request.urlopen(f"{GATEWAY_URL}/ready", timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as refused:
        return refused.code
    except OSError:
        return 0


def container_of(worker_id: str, project: str) -> str:
    """The worker container whose hostname (its short id) the worker id holds
    (`worker-<hostname>-<pid>`, workers.config.default_worker_id)."""
    listing = subprocess.run(
        ["podman", "ps", "--filter", f"name={project}_worker", "--format", "{{.ID}} {{.Names}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    for line in filter(None, listing):
        container_id, name = line.split()
        if container_id[:12] in worker_id:
            return name
    sys.exit(f"container check: no container runs worker {worker_id}: {listing}")


def kill_mid_request(client: Client, project: str) -> dict[str, object]:
    """A long request; kill its worker's container once it streams; its answer must still come."""
    request_id = client.submit("tell me a long story", max_tokens=LONG_MAX_TOKENS)
    next(iter(client.stream(request_id)))  # running now
    running = [worker.worker_id for worker in client.status().workers if worker.num_running > 0]
    if len(running) != 1:
        sys.exit(f"container check: expected one worker running the request, got {running}")
    victim = container_of(running[0], project)
    subprocess.run(["podman", "kill", victim], check=True, capture_output=True)
    result = client.result(request_id)
    return {
        "killed_container": victim,
        "killed_worker": running[0],
        "finished_on": result.worker_id,
        "num_restarts": result.num_restarts,
        "tokens": result.usage.generated_tokens,
        "finish_reason": result.finish_reason,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--project", required=True)
    parser.add_argument("--up-start", type=float, required=True, help="epoch seconds of `compose up`")
    parser.add_argument("--build-s", type=float, required=True)
    args = parser.parse_args()
    with Client(timeout_s=120) as client:
        worker_ids = wait_for_workers(client, time.monotonic() + READY_TIMEOUT_S)
        answer = client.generate("Hello! How can I help you today?", max_tokens=8)
        first_answer_s = time.time() - args.up_start
        answers = [client.generate(f"request {index}", max_tokens=8) for index in range(3)]
        gateway_status = gateway_ready()
        killed = kill_mid_request(client, args.project)
    summary = {
        "build_s": args.build_s,
        "first_answer_after_up_s": round(first_answer_s, 1),
        "workers": worker_ids,
        "answers": 1 + len(answers),
        "first_answer_tokens": answer.usage.generated_tokens,
        "gateway_ready_status": gateway_status,
        **killed,
    }
    print(json.dumps(summary))
    moved = killed["finished_on"] != killed["killed_worker"] and killed["num_restarts"] >= 1
    if gateway_status != 200 or not moved:
        sys.exit("container check: failed (see the JSON line)")


if __name__ == "__main__":
    main()
