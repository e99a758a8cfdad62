"""`llmos policy [NAME]`: show the scheduler's policy, or switch it without restarting anything."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import cast

import click
import zmq

from llmos.cli import EXIT_CLIENT_ERROR, EXIT_SERVICE_ERROR, EXIT_TIMEOUT
from llmos.config import env_var
from llmos.security.client_keys import client_curve
from llmos.wire import WireError, pack, pb, unpack
from llmos.wire.constants import ERROR_NAMES, SCHEDULER_PORT, tcp
from llmos.wire.sockets import connect_dealer

_REPLIES = frozenset({"policy_status", "error"})


class NoReply(Exception):
    pass


def ask_scheduler(
    address: str,
    request: pb.SetPolicy,
    timeout_s: float,
    keys_dir: Path | None = None,
    is_insecure: bool = False,
) -> pb.PolicyStatus | pb.Error:
    """One SetPolicy, one reply, on a fresh socket (a late reply can never answer a later question).
    Keys: the admin key of `keys_dir`'s keyring, else as every client finds them (client_curve)."""
    curve = client_curve(
        keys_dir / "admin.key_secret" if keys_dir else None,
        keys_dir / "scheduler.key" if keys_dir else None,
        server="scheduler",
        is_insecure=is_insecure,
    )
    context = zmq.Context()
    socket = connect_dealer(context, address, curve=curve)
    try:
        socket.send(pack(request))
        if not socket.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise NoReply(f"no reply from the scheduler at {address} within {timeout_s:g} s")
        _, reply = unpack(socket.recv_multipart()[-1], _REPLIES)
        return cast(pb.PolicyStatus | pb.Error, reply)  # unpack lets only _REPLIES through
    finally:
        socket.close(linger=0)
        context.term()


@click.command("policy")
@click.argument("name", required=False, default="")
@click.option(
    "--scheduler-address",
    default=tcp(SCHEDULER_PORT),
    show_default=True,
    envvar=env_var("scheduler_address"),
    help="where the scheduler listens",
)
@click.option(
    "--timeout-s", type=float, default=2.0, show_default=True, help="how long to wait for the scheduler"
)
def policy(name: str, scheduler_address: str, timeout_s: float) -> None:
    """Show the scheduler's policy, or switch it to NAME now (fcfs, priority,
    mlfq, fair); the broker and running requests carry on.

    Exits 2 when the scheduler does not know NAME, 4 when it does not answer.
    """
    try:
        reply = ask_scheduler(scheduler_address, pb.SetPolicy(policy=name), timeout_s)
    except NoReply as exc:
        click.echo(f"error: {exc}", err=True)
        click.echo("hint: is a scheduler running? `llmos up` starts one", err=True)
        sys.exit(EXIT_TIMEOUT)
    except WireError as exc:
        click.echo(f"error: the scheduler sent {exc.message}", err=True)
        sys.exit(EXIT_SERVICE_ERROR)
    if isinstance(reply, pb.Error):
        click.echo(f"error: {ERROR_NAMES.get(reply.code, reply.code)}: {reply.message}", err=True)
        sys.exit(EXIT_CLIENT_ERROR if reply.code == pb.INVALID_ARGUMENT else EXIT_SERVICE_ERROR)
    click.echo(f"policy {reply.policy} (available: {', '.join(reply.available)})")
