"""Parse a `llmos <subcommand> ...` command line the way the CLI would, without
running it. compose.yaml's and the Kubernetes manifests' tests share it, so both
check their commands against the real click options and config dataclasses."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import click
import pytest

TCP_ADDRESS = re.compile(r"^tcp://(?P<host>[^:/]+):(?P<port>\d+)$")
# A service that connects with the key's field reaches the socket that another
# service binds with the value's field (docs/architecture.md, shared flag names).
BIND_FOR_ADDRESS = {
    "broker_address": "client_bind",
    "broker_worker_address": "worker_bind",
    "kernel_address": "kernel_bind",
    "kernel_pub_address": "kernel_pub_bind",
    "scheduler_address": "scheduler_bind",
}


def config_class(subcommand: str) -> type:
    """The config dataclass whose fields are `llmos <subcommand>`'s flags."""
    from broker.config import BrokerConfig
    from gateway.config import GatewayConfig
    from kernel_svc.config import KernelConfig
    from scheduler_svc.config import SchedulerConfig
    from workers.config import WorkerConfig

    classes: dict[str, type] = {
        "kernel": KernelConfig,
        "scheduler": SchedulerConfig,
        "broker": BrokerConfig,
        "worker": WorkerConfig,
        "gateway": GatewayConfig,
    }
    return classes[subcommand]


def config_env_vars(subcommand: str) -> set[str]:
    """The LLMOS_* variables `llmos <subcommand>` reads as option defaults."""
    from llmos.config import env_var

    return {env_var(field.name) for field in dataclasses.fields(config_class(subcommand))}


def parse_llmos_command(name: str, command: list[str], environment: dict[str, str]) -> dict[str, Any]:
    """Parse `command` (`llmos <subcommand> ...`) with only `environment`'s LLMOS_*
    variables set; return every option's value, defaults included. `name` says
    whose command it is in failure messages."""
    from llmos.cli import cli

    program, subcommand, *args = command
    assert program == "llmos", f"{name}: command must start with llmos, got {program!r}"

    group_context = click.Context(cli, info_name="llmos")
    command_obj = cli.get_command(group_context, subcommand)
    assert command_obj is not None, (
        f"{name}: 'llmos {subcommand}' is not a subcommand; known: {cli.list_commands(group_context)}"
    )
    with pytest.MonkeyPatch.context() as env:
        # Only the given environment counts: click reads LLMOS_* variables as
        # option defaults, so their values must parse too, and the developer's
        # own LLMOS_* must not.
        for env_name in [env_name for env_name in os.environ if env_name.startswith("LLMOS_")]:
            env.delenv(env_name)
        for env_name, value in environment.items():
            env.setenv(env_name, value)
        try:
            # make_context parses and type-checks every option without running the command.
            context = command_obj.make_context(subcommand, list(args), parent=group_context)
        except click.ClickException as exc:
            pytest.fail(
                f"{name}: 'llmos {subcommand} {' '.join(args)}' does not parse: {exc.format_message()}"
            )
    return dict(context.params)
