"""A secure stack (CURVE on every socket, as `llmos up` runs by default) against
strangers and insiders who overstep: each is refused or detected, and the stack
keeps serving the legitimate clients.

The stack: kernel, scheduler, broker and one simulated worker, with a keyring of
its own; test keys are made and allowlisted with the `llmos keys` CLI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from service_process import free_up_base_port, wait_until
from stack import Stack

from llmos.client import Client
from llmos.errors import LlmosError, LlmosTimeout, PermissionDenied, QuotaExceeded
from llmos.security.curve import CurveClient
from llmos.security.keyring import load_key_pair, load_public_key
from llmos.wire import pack, pb, unpack
from llmos.wire.sockets import connect_dealer
from scheduler_svc.policy_cli import ask_scheduler

pytestmark = pytest.mark.e2e

SIM_MODEL = "simulated"
SECRET_PROMPT = "my account number is 4242-SECRET-7777"
STRANGER_TIMEOUT_S = 2.0  # a refused handshake shows as silence: how long a stranger waits


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    log_dir = tmp_path_factory.mktemp("secure")
    stack = Stack(model_dir=log_dir, log_dir=log_dir, num_workers=0, is_secure=True)
    with stack:
        stack.start_sim_worker(SIM_MODEL)
        yield stack
        stack.check_alive()  # every service outlived every test


def keys_cli(stack: Stack, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMOS_KEYS_DIR": str(stack.keys_dir)}
    return subprocess.run(
        [sys.executable, "-m", "llmos", "keys", *args], env=env, capture_output=True, text=True, check=check
    )


def make_key(stack: Stack, name: str, role: str = "client", tenant: str = "", *extra: str) -> Path:
    """A new key pair `name`, allowlisted unless role is empty; its secret key file."""
    out_dir = stack.log_dir / "client-keys"
    keys_cli(stack, "gen", name, "--out", str(out_dir))
    if role:
        add_key(stack, out_dir / f"{name}.key", role, tenant or name, *extra)
    return out_dir / f"{name}.key_secret"


def add_key(stack: Stack, public_key_file: Path, role: str, tenant: str, *extra: str) -> None:
    name = public_key_file.name.split(".")[0]
    keys_cli(stack, "add", "--role", role, "--tenant", tenant, "--name", name, *extra, str(public_key_file))
    wait_for_key_change(stack, "added", name)


def wait_for_key_change(stack: Stack, change: str, name: str) -> None:
    """Until the broker has read the allowlist again (it audits each change): a handshake
    before that is refused, and what the client queued for it is lost with it."""
    wait_until(
        lambda: f'"change":"{change}","key":"{name}"' in audit_lines(stack),
        f"the broker sees {name} {change}",
    )


def client_with(stack: Stack, secret_key_file: Path, timeout_s: float = 30.0) -> Client:
    return Client(
        stack.broker_address,
        timeout_s=timeout_s,
        key_file=secret_key_file,
        server_key_file=stack.keys_dir / "broker.key",
    )


def audit_lines(stack: Stack) -> str:
    return stack.audit_log_path.read_text()


def honest_answer(stack: Stack) -> int:
    with stack.client() as client:
        return client.generate("an honest prompt", max_tokens=8, model=SIM_MODEL).usage.generated_tokens


# ---------------------------------------------------------------- strangers


def test_a_client_without_curve_gets_nothing_through(stack):
    with Client(stack.broker_address, timeout_s=STRANGER_TIMEOUT_S, insecure=True) as client:
        with pytest.raises(LlmosTimeout):
            client.status()
    assert honest_answer(stack) == 8


def test_a_key_not_in_the_allowlist_is_refused_at_the_handshake_and_audited(stack):
    secret = make_key(stack, "mallory", role="")
    with client_with(stack, secret, timeout_s=STRANGER_TIMEOUT_S) as client, pytest.raises(LlmosTimeout):
        client.status()
    public = load_public_key(secret.with_suffix(".key")).decode()
    wait_until(lambda: f'"key":"{public[:12]}"' in audit_lines(stack), "the refusal is audited")
    assert honest_answer(stack) == 8


def test_a_fake_worker_never_registers_nor_receives_a_prompt(stack):
    """Built from the .proto alone: plain TCP, then a client key; neither gets a frame back."""
    client_key = make_key(stack, "eve", tenant="eve")
    public, secret = load_key_pair(client_key)
    curves = {
        "plain": None,
        "client key": CurveClient(public, secret, load_public_key(stack.keys_dir / "broker.key")),
    }
    context = zmq.Context()
    try:
        for name, curve in curves.items():
            fake = connect_dealer(context, stack.ports.worker_address, identity=f"fake-{name}", curve=curve)
            fake.send(pack(pb.WorkerRegister(worker_id=f"fake-{name}", models=[SIM_MODEL], max_num_seqs=8)))
            with stack.client() as client:
                result = client.generate(SECRET_PROMPT, max_tokens=4, model=SIM_MODEL)
            assert result.worker_id == "sim"
            assert not fake.poll(500), f"the {name} fake worker got a frame"
            fake.close(linger=0)
    finally:
        context.term()
    assert sorted(w.worker_id for w in stack.status().workers) == ["sim"]


# ---------------------------------------------------------------- insiders overstepping


def test_a_client_cannot_name_another_tenant(stack):
    secret = make_key(stack, "alice", tenant="alice")
    with client_with(stack, secret) as client:
        with pytest.raises(PermissionDenied) as refused:
            client.generate("spend bob's quota", max_tokens=4, model=SIM_MODEL, tenant="bob")
        assert "alice" in refused.value.message
        served = client.generate("my own", max_tokens=4, model=SIM_MODEL)
        assert served.usage.generated_tokens == 4
    admission = [line for line in audit_lines(stack).splitlines() if '"kind":"admission"' in line][-1]
    assert '"tenant":"alice"' in admission and '"key":"alice"' in admission


def test_a_client_cannot_cancel_another_tenants_request(stack):
    with (
        client_with(stack, make_key(stack, "bob", tenant="bob")) as bob,
        client_with(stack, make_key(stack, "carol", tenant="carol")) as carol,
    ):
        request_id = bob.submit("bob's long answer", max_tokens=64, model=SIM_MODEL, request_id="bob-1")
        carol._socket.send(pack(pb.Cancel(request_id=request_id)))  # what a hand-made client would send
        assert carol._socket.poll(10_000)
        name, error = unpack(carol._socket.recv_multipart()[-1], {"error"})
        assert (name, error.code) == ("error", pb.UNKNOWN_REQUEST)
        assert bob.result(request_id).usage.generated_tokens == 64


def test_only_an_admin_may_drain_a_worker_or_switch_the_policy(stack):
    client_key = make_key(stack, "dave", tenant="dave")
    with client_with(stack, client_key) as client, pytest.raises(PermissionDenied):
        client.drain_worker("sim")
    public, secret = load_key_pair(client_key)
    context = zmq.Context()
    try:  # a client key cannot even reach the scheduler: its handshake is refused
        curve = CurveClient(public, secret, load_public_key(stack.keys_dir / "scheduler.key"))
        socket = connect_dealer(context, stack.scheduler_address, curve=curve)
        socket.send(pack(pb.SetPolicy(policy="fcfs")))
        assert not socket.poll(int(STRANGER_TIMEOUT_S * 1000))
        socket.close(linger=0)
    finally:
        context.term()
    admin = ask_scheduler(
        stack.scheduler_address, pb.SetPolicy(policy=""), timeout_s=10, keys_dir=stack.keys_dir
    )
    assert isinstance(admin, pb.PolicyStatus) and admin.policy == "priority"
    assert [w.worker_id for w in stack.status().workers] == ["sim"]


def test_a_keys_tier_max_and_live_request_quota_hold(stack):
    secret = make_key(stack, "erin", "client", "erin", "--tier-max", "standard", "--max-live-requests", "1")
    with client_with(stack, secret) as client:
        with pytest.raises(PermissionDenied):
            client.submit("jump the queue", max_tokens=4, model=SIM_MODEL, tier="interactive")
        first = client.submit("one at a time", max_tokens=64, model=SIM_MODEL, tier="batch")
        with pytest.raises(QuotaExceeded) as refused:
            client.submit("and another", max_tokens=4, model=SIM_MODEL)
        assert refused.value.retry_after_ms > 0
        assert client.result(first).usage.generated_tokens == 64


def test_a_tokens_per_minute_limit_refuses_with_a_retry_hint(stack):
    secret = make_key(stack, "frank", "client", "frank", "--tokens-per-minute", "16")
    with client_with(stack, secret) as client:
        assert (
            client.generate("use the minute up", max_tokens=16, model=SIM_MODEL).usage.generated_tokens == 16
        )
        with pytest.raises(QuotaExceeded) as refused:
            client.generate("one more", max_tokens=4, model=SIM_MODEL)
    assert 0 < refused.value.retry_after_ms <= 60_000


# ---------------------------------------------------------------- revocation and reload


def test_a_revoked_key_loses_its_request_mid_stream_and_cannot_come_back(stack):
    secret = make_key(stack, "grace", tenant="grace")
    with client_with(stack, secret, timeout_s=20) as client:
        request_id = client.submit("a long answer", max_tokens=4000, model=SIM_MODEL)
        stream = client.stream(request_id)
        next(stream)  # it runs
        keys_cli(stack, "revoke", "grace")
        with pytest.raises(PermissionDenied):
            for _ in stream:
                pass
    with client_with(stack, secret, timeout_s=STRANGER_TIMEOUT_S) as again, pytest.raises(LlmosError):
        again.status()
    assert '"change":"revoked"' in audit_lines(stack)
    assert honest_answer(stack) == 8


def test_sighup_reloads_the_allowlist(stack):
    stack.processes["broker"].send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP: reading the allowlist" in broker_log(stack), "the broker reloads on SIGHUP")
    assert honest_answer(stack) == 8


def broker_log(stack: Stack) -> str:
    return (stack.log_dir / "broker.log").read_text()


# ---------------------------------------------------------------- privacy and the audit log


def test_no_prompt_text_reaches_the_logs_or_the_audit_log(stack):
    with stack.client() as client:
        client.generate(SECRET_PROMPT, max_tokens=4, model=SIM_MODEL)
    for name in ("broker", "kernel", "scheduler", "sim"):
        assert "SECRET" not in (stack.log_dir / f"{name}.log").read_text(), name
    assert "SECRET" not in audit_lines(stack)
    assert '"prompt_hash":"' in audit_lines(stack)


def test_the_brokers_audit_log_verifies_and_an_edit_is_caught(stack, tmp_path):
    honest_answer(stack)
    verify = [sys.executable, "-m", "llmos", "audit", "verify"]
    assert subprocess.run([*verify, str(stack.audit_log_path)], capture_output=True).returncode == 0
    lines = audit_lines(stack).splitlines(keepends=True)
    tampered = tmp_path / "audit.jsonl"
    assert len(lines) >= 3
    tampered.write_text("".join([lines[0], lines[1].replace('"ts":', '"ts":1', 1), *lines[2:]]))
    result = subprocess.run([*verify, str(tampered)], capture_output=True, text=True)
    assert result.returncode == 1 and "line 2" in result.stderr


# ---------------------------------------------------------------- llmos up, secure by default


def test_llmos_up_makes_a_keyring_and_runs_secure_by_default(tmp_path):
    """As a new user runs it: no flags, a fresh $LLMOS_HOME. The CLI finds the keyring
    `up` made; a plain client gets nothing."""
    home = tmp_path / "home"
    env = {name: value for name, value in os.environ.items() if not name.startswith("LLMOS_")}
    env["LLMOS_HOME"] = str(home)
    base_port = free_up_base_port(num_workers=0)
    broker, kernel = f"tcp://127.0.0.1:{base_port}", f"tcp://127.0.0.1:{base_port + 2}"
    up = subprocess.Popen(
        [sys.executable, "-m", "llmos", "up", "--workers", "0", "--model", "unused"]
        + ["--base-port", str(base_port), "--log-dir", str(tmp_path / "logs"), "--ready-timeout-s", "60"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        first, _, ready = up.stdout.readline(), up.stdout.readline(), up.stdout.readline()
        assert first.startswith(f"llmos keys: {home / 'keys'}") and ready.startswith("llmos is up"), first
        status = [
            sys.executable,
            "-m",
            "llmos",
            "status",
            "--broker-address",
            broker,
            "--kernel-address",
            kernel,
        ]
        assert subprocess.run(status, env=env, capture_output=True, timeout=60).returncode == 0
        plain = subprocess.run(status, env={**env, "LLMOS_INSECURE": "1"}, capture_output=True, timeout=60)
        assert plain.returncode != 0 and b"within 2 s" in plain.stdout  # silence: the handshake was refused
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
        up.stdout.close()
    assert (home / "keys" / "admin.key_secret").stat().st_mode & 0o777 == 0o600
    for name in ("broker", "kernel", "scheduler"):
        assert "--insecure" not in (tmp_path / "logs" / f"{name}.log").read_text()
        assert "speaks CURVE" in (tmp_path / "logs" / f"{name}.log").read_text()
