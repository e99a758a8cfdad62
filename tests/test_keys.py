"""Keys and the allowlist: `llmos keys` as a user runs it, and the ZAP handler on
real CURVE sockets admitting keys by role, refusing strangers and revoked keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from llmos.security.authenticator import CLIENTS_DOMAIN, WORKERS_DOMAIN, AllowlistWatch, Authenticator
from llmos.security.curve import CurveClient, CurveServer, user_id_of
from llmos.security.keyring import (
    Allowlist,
    KeyEntry,
    KeyringError,
    ensure_keyring,
    load_key_pair,
    load_public_key,
    make_key_pair,
)

POLL_MS = 1500  # a refused handshake shows as silence; an admitted one answers well within this


def keys_cli(keys_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMOS_KEYS_DIR": str(keys_dir)}
    return subprocess.run(
        [sys.executable, "-m", "llmos", "keys", *args], env=env, capture_output=True, text=True
    )


# ---------------------------------------------------------------- the CLI


def test_init_makes_a_private_keyring_once(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    assert keys_cli(keys_dir, "init").returncode == 0
    assert keys_dir.stat().st_mode & 0o777 == 0o700
    secrets = sorted(path.name for path in keys_dir.glob("*.key_secret"))
    assert secrets == [f"{n}.key_secret" for n in ("admin", "broker", "kernel", "scheduler", "worker")]
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in keys_dir.glob("*.key_secret"))
    before = {path.name: path.read_bytes() for path in keys_dir.iterdir()}
    assert keys_cli(keys_dir, "init").returncode == 0
    assert {path.name: path.read_bytes() for path in keys_dir.iterdir() if path.name in before} == before
    roles = {entry.name: entry.role for entry in Allowlist.load(keys_dir / "allowlist.json").entries()}
    assert roles == {
        "broker": "service",
        "kernel": "service",
        "scheduler": "service",
        "admin": "admin",
        "worker": "worker",
    }


def test_gen_add_list_revoke(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    assert keys_cli(keys_dir, "gen", "alice", "--out", str(tmp_path)).returncode == 0
    refused = keys_cli(keys_dir, "gen", "alice", "--out", str(tmp_path))
    assert refused.returncode == 1 and "exists" in refused.stderr
    added = keys_cli(
        keys_dir, "add", "--role", "client", "--tenant", "acme", "--tier-max", "standard",
        "--tokens-per-minute", "600", str(tmp_path / "alice.key"),
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    (row,) = [json.loads(line) for line in keys_cli(keys_dir, "list", "--json").stdout.splitlines()]
    assert (row["name"], row["role"], row["tenant"], row["tier_max"], row["tokens_per_minute"]) == (
        "alice", "client", "acme", "standard", 600,
    )  # fmt: skip
    assert "alice" in keys_cli(keys_dir, "list").stdout
    assert keys_cli(keys_dir, "revoke", "alice").returncode == 0
    allowlist = Allowlist.load(keys_dir / "allowlist.json")
    assert allowlist.entry(load_public_key(tmp_path / "alice.key")) is None
    assert keys_cli(keys_dir, "revoke", "alice").returncode == 1  # nothing live by that name


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--role", "root", "--tenant", "t"], "root"),
        (["--role", "client", "--tenant", "t"], "cannot read a CurveZMQ key"),
    ],
    ids=["bad role", "not a key file"],
)
def test_add_refuses_with_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    not_a_key = tmp_path / "notes.txt"
    not_a_key.write_text("hello\n")
    result = keys_cli(tmp_path / "keys", "add", *args, str(not_a_key))
    assert result.returncode != 0 and says in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- the allowlist


def test_a_bad_allowlist_is_named(tmp_path: Path) -> None:
    path = tmp_path / "allowlist.json"
    path.write_text('{"keys": [{"name": "x"}]}')
    with pytest.raises(KeyringError, match=r"allowlist.json, entry 0"):
        Allowlist.load(path)


def test_a_watch_reports_changes_and_keeps_the_old_list_on_a_bad_file(tmp_path: Path) -> None:
    keyring = ensure_keyring(tmp_path / "keys")
    watch = AllowlistWatch(keyring.allowlist_path)
    assert watch.reload_if_changed() is None
    allowlist = Allowlist.load(keyring.allowlist_path)
    allowlist.revoke("worker")
    allowlist.save(keyring.allowlist_path)
    changes = watch.reload_if_changed()
    assert changes is not None and [entry.name for entry in changes.revoked] == ["worker"]
    keyring.allowlist_path.write_text("not json")
    assert watch.reload_if_changed() is None
    assert watch.current.entry(load_public_key(keyring.public_key_file("admin"))) is not None


# ---------------------------------------------------------------- the ZAP handler on real sockets


Denied = list[tuple[str, str, str]]


@pytest.fixture
def keyring_and_context(tmp_path: Path) -> Iterator[tuple[Path, zmq.Context, Authenticator, Denied]]:
    keyring = ensure_keyring(tmp_path / "keys")
    context = zmq.Context()
    denied: Denied = []
    authenticator = Authenticator(
        context, AllowlistWatch(keyring.allowlist_path), lambda *d: denied.append(d)
    )
    authenticator.start()
    yield keyring.keys_dir, context, authenticator, denied
    authenticator.stop()
    context.destroy(linger=0)


def bound_router(context: zmq.Context, keys_dir: Path, domain: str) -> tuple[zmq.Socket, str]:
    public, secret = load_key_pair(keys_dir / "broker.key_secret")
    router = context.socket(zmq.ROUTER)
    CurveServer(public, secret, domain).apply(router)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    return router, f"tcp://127.0.0.1:{port}"


def arrives(context: zmq.Context, router: zmq.Socket, address: str, curve: CurveClient | None) -> str | None:
    """Send one message from a new DEALER; the User-Id it arrived with, None if it did not."""
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.SNDTIMEO, POLL_MS)  # no connection takes it while the handshake fails
    if curve is not None:
        curve.apply(dealer)
    dealer.connect(address)
    try:
        dealer.send(b"hello")
        if not router.poll(POLL_MS):
            return None
        frames = router.recv_multipart(copy=False)
        return user_id_of(frames[-1])
    except zmq.Again:
        return None
    finally:
        dealer.close()


def client_of(keys_dir: Path, secret_file: Path) -> CurveClient:
    public, secret = load_key_pair(secret_file)
    return CurveClient(public, secret, load_public_key(keys_dir / "broker.key"))


def test_the_zap_handler_admits_by_role_and_names_the_key(keyring_and_context) -> None:
    keys_dir, context, _, denied = keyring_and_context
    clients, clients_address = bound_router(context, keys_dir, CLIENTS_DOMAIN)
    workers, workers_address = bound_router(context, keys_dir, WORKERS_DOMAIN)
    admin = client_of(keys_dir, keys_dir / "admin.key_secret")
    worker = client_of(keys_dir, keys_dir / "worker.key_secret")
    assert arrives(context, clients, clients_address, admin) == admin.public_key.decode()
    assert arrives(context, workers, workers_address, worker) == worker.public_key.decode()
    assert arrives(context, clients, clients_address, worker) is None  # a worker key at the client port
    assert [(domain, reason) for domain, _, reason in denied] == [
        (CLIENTS_DOMAIN, "a worker key may not connect here")
    ]


def test_strangers_and_revoked_keys_get_nothing_through(keyring_and_context, tmp_path: Path) -> None:
    keys_dir, context, authenticator, _ = keyring_and_context
    clients, address = bound_router(context, keys_dir, CLIENTS_DOMAIN)
    _, stranger_secret = make_key_pair(tmp_path, "stranger")
    assert arrives(context, clients, address, client_of(keys_dir, stranger_secret)) is None
    assert arrives(context, clients, address, None) is None  # no CURVE at all
    allowlist = Allowlist.load(keys_dir / "allowlist.json")
    public = load_public_key(tmp_path / "stranger.key").decode()
    allowlist.add(KeyEntry(public_key=public, name="stranger", role="client", tenant="t"))
    allowlist.save(keys_dir / "allowlist.json")
    authenticator.watch.reload_if_changed()
    assert arrives(context, clients, address, client_of(keys_dir, stranger_secret)) == public
    allowlist.revoke("stranger")
    allowlist.save(keys_dir / "allowlist.json")
    authenticator.watch.reload_if_changed()
    assert arrives(context, clients, address, client_of(keys_dir, stranger_secret)) is None
    assert authenticator.num_denied == 2  # the plain peer never reaches ZAP: its mechanism is refused first
