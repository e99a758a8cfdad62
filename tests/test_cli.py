"""The `llmos` command line: lazy subcommands, `submit` and `status` against a fake broker."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import pytest
import zmq
from click.testing import CliRunner
from fake_broker import INVALID_SENTENCE, QUEUE_FULL_SENTENCE, FakeBroker, status_reply

from llmos import cli as cli_module
from llmos import status_watch
from llmos.cli import cli, format_status
from llmos.wire import pb

ALL_SUBCOMMANDS = [
    "audit",
    "bench",
    "broker",
    "classify",
    "drain",
    "embed",
    "gateway",
    "kernel",
    "keys",
    "model",
    "policy",
    "scheduler",
    "status",
    "submit",
    "up",
    "worker",
]


@pytest.fixture
def broker():
    with FakeBroker() as fake:
        yield fake


@pytest.fixture
def silent_address():
    """A tcp address where nothing answers (bound, never read), so probes time out."""
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    try:
        yield f"tcp://127.0.0.1:{port}"
    finally:
        socket.close(linger=0)
        context.term()


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def commands_listed(help_text: str) -> list[str]:
    section = help_text.split("Commands:")[1]
    return sorted(line.split()[0] for line in section.splitlines() if line.strip())


def test_help_lists_every_subcommand():
    result = invoke("--help")
    assert result.exit_code == 0
    assert commands_listed(result.output) == ALL_SUBCOMMANDS


def test_help_and_submit_help_import_no_service_module_nor_torch():
    heavy = (
        "torch",
        "transformers",
        "broker",
        "kernel_svc",
        "scheduler_svc",
        "workers",
        "gateway",
        "fastapi",
        "llmos.launcher",
        "llmos.model_cli",
        "llmos.tiny_model",
        "llmos.demo_model",
    )
    probe = (
        "import sys; from click.testing import CliRunner; from llmos.cli import cli;"
        "assert CliRunner().invoke(cli, ['--help']).exit_code == 0;"
        "assert CliRunner().invoke(cli, ['submit', '--help']).exit_code == 0;"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r} or m in {heavy!r}))"
    )
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_a_lazy_subcommand_that_cannot_import_is_listed_and_fails_clearly(monkeypatch):
    monkeypatch.setitem(
        cli_module.LAZY_COMMANDS, "ghost", ("no_such_package.main:command", "Haunt the cluster.")
    )
    listed = invoke("--help")
    assert "ghost" in commands_listed(listed.output)
    result = invoke("ghost", "--some-flag")
    assert result.exit_code == 1
    assert "'llmos ghost' is unavailable" in result.output
    assert "no_such_package" in result.output


def test_submit_streams_the_text_and_prints_usage_to_stderr(broker):
    result = invoke(
        "submit",
        "--broker-address",
        broker.address,
        "--max-tokens",
        "4",
        "--stop",
        "\n",
        "--stop",
        "END",
        "--seed",
        "3",
        "the quick brown fox",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "the quick brown fox\n"
    assert "usage: prompt_tokens=4 generated_tokens=4 finish=length" in result.stderr
    _, sent = broker.received[0]
    assert list(sent.sampling.stop) == ["\n", "END"]
    assert (sent.sampling.max_tokens, sent.sampling.seed) == (4, 3)


def test_submit_no_stream_and_json(broker):
    plain = invoke("submit", "--broker-address", broker.address, "--no-stream", "hello world")
    as_json = invoke("submit", "--broker-address", broker.address, "--json", "hello world")
    assert plain.stdout == "hello world\n"
    document = json.loads(as_json.stdout)
    assert document["text"] == "hello world"
    assert document["finish_reason"] == "FINISH_REASON_LENGTH"


@pytest.mark.parametrize(
    ("prompt", "exit_code", "line"),
    [
        ("full", 3, f"error: QUEUE_FULL: {QUEUE_FULL_SENTENCE}"),
        ("bad", 2, f"error: INVALID_ARGUMENT: {INVALID_SENTENCE}"),
        ("fail-midway", 3, "error: WORKER_FAILED: tokenizer exploded"),
    ],
)
def test_submit_prints_the_broker_sentence_and_exits_non_zero(broker, prompt, exit_code, line):
    result = invoke("submit", "--broker-address", broker.address, prompt)
    assert result.exit_code == exit_code
    assert line in result.stderr.splitlines()


def test_submit_exits_4_on_timeout(broker):
    result = invoke("submit", "--broker-address", broker.address, "--timeout-s", "0.3", "silent")
    assert result.exit_code == 4
    assert result.stderr.startswith("error: TIMEOUT: ")


def test_submit_cancels_the_request_it_stops_waiting_for(broker):
    result = invoke("submit", "--broker-address", broker.address, "--timeout-s", "0.3", "accept-only")
    assert result.exit_code == 4
    _, generate = broker.received[0]
    assert wait_until(lambda: len(broker.received) == 2)
    assert broker.received[1] == ("cancel", pb.Cancel(request_id=generate.request_id))


def wait_until(condition, attempts: int = 200) -> bool:
    for _ in range(attempts):
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_status_shows_the_broker_and_says_the_kernel_is_unreachable(broker, silent_address):
    result = invoke(
        "status", "--broker-address", broker.address, "--kernel-address", silent_address, "--timeout-s", "0.3"
    )
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"broker  {broker.address}  scheduler online (policy priority)")
    assert lines[1].startswith(f"kernel  {silent_address}  unreachable")
    assert "worker-0  tiny    cpu     1/4      ?          0.0       ?" in lines
    assert "interactive  2/100   0        50% of 40" in lines


def test_status_exits_3_when_nothing_answers(silent_address):
    result = invoke(
        "status", "--broker-address", silent_address, "--kernel-address", silent_address, "--timeout-s", "0.2"
    )
    assert result.exit_code == 3
    assert result.stdout.count("unreachable") == 2


def test_status_watch_refreshes_until_ctrl_c(broker, silent_address, monkeypatch):
    def interrupt_after_one_frame(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(status_watch.time, "sleep", interrupt_after_one_frame)
    result = invoke(
        "status",
        "--watch",
        "--broker-address",
        broker.address,
        "--kernel-address",
        silent_address,
        "--timeout-s",
        "0.2",
    )
    assert result.exit_code == 0
    assert result.stdout.startswith("--- ")
    assert "worker-0  tiny    cpu     1/4      ?          0.0       ?" in result.stdout.splitlines()


def test_status_watch_count_stops_after_that_many_plain_frames(broker, silent_address, monkeypatch):
    monkeypatch.setattr(status_watch.time, "sleep", lambda seconds: None)
    result = invoke(
        "status",
        "--watch",
        "--watch-count",
        "2",
        "--broker-address",
        broker.address,
        "--kernel-address",
        silent_address,
        "--timeout-s",
        "0.2",
    )
    assert result.exit_code == 0
    assert sum(line.startswith("--- ") for line in result.stdout.splitlines()) == 2


def test_status_watch_on_a_terminal_draws_rich_tables_in_place(monkeypatch):
    from rich.console import Console

    monkeypatch.setattr(status_watch.time, "sleep", lambda seconds: None)
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    sections = (
        ["broker  tcp://b  unreachable", "kernel  tcp://k  unreachable"],
        [(["TIER", "QUEUED"], [["batch", "3/100"]])],
    )
    frames = []

    def collect():
        frames.append(len(frames))
        return sections

    status_watch.watch_status(collect, count=3, console=console)

    shown = console.file.getvalue()
    assert frames == [0, 1, 2]
    assert "\x1b[" in shown, "a terminal gets cursor moves: the frame is redrawn in place"
    assert "Ctrl-C to stop" in shown and "kernel  tcp://k  unreachable" in shown
    assert "batch" in shown and "3/100" in shown
    assert "---" not in shown


def test_status_watch_on_a_terminal_stops_cleanly_on_ctrl_c(monkeypatch):
    from rich.console import Console

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(status_watch.time, "sleep", interrupt)
    console = Console(file=io.StringIO(), force_terminal=True, width=120)

    status_watch.watch_status(lambda: (["broker  tcp://b  up"], []), console=console)

    assert "broker  tcp://b  up" in console.file.getvalue()
    assert not console.is_alt_screen


def test_format_status_joins_broker_slots_with_kernel_blocks():
    view = pb.ResourceView(
        version=9,
        block_size=16,
        workers=[
            pb.WorkerResources(
                worker_id="worker-0",
                models=["tiny"],
                device="cpu",
                kv_blocks_total=256,
                kv_blocks_used=12,
                num_running=1,
                max_num_seqs=4,
                cached_prefix_hashes=[11, 12, 13],
            ),
            pb.WorkerResources(
                worker_id="worker-1",
                models=["tiny"],
                device="cuda:0",
                kv_blocks_total=512,
                kv_blocks_used=0,
                max_num_seqs=8,
            ),
        ],
    )
    text = format_status("tcp://b", status_reply(), "tcp://k", view)
    assert text.splitlines()[1] == (
        "kernel  tcp://k  2 workers registered, block size 16, KV blocks 12/768 in use "
        "cluster-wide, view version 9"
    )
    assert "worker-0  tiny    cpu     1/4      12/256     0.0       3" in text.splitlines()
    assert "worker-1  tiny    cuda:0  0/8      0/512      ?         0" in text.splitlines()
    assert "TENANT" not in text  # no tenant holds blocks


def test_format_status_lists_tenants_holding_kv_blocks():
    view = pb.ResourceView(
        version=2,
        block_size=16,
        tenants=[pb.TenantUsage(tenant="alice", kv_blocks_used=40, num_requests_holding_blocks=3)],
    )
    lines = format_status("tcp://b", status_reply(), "tcp://k", view).splitlines()
    assert lines[-2:] == ["TENANT  REQUESTS  KV BLOCKS", "alice   3         40"]


def test_format_status_marks_a_draining_worker():
    reply = status_reply()
    reply.workers[0].is_draining = True
    text = format_status("tcp://b", reply, "tcp://k", "unreachable")
    assert "worker-0  tiny    cpu     1/4 draining  ?          0.0       ?" in text.splitlines()
