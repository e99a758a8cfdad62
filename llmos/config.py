"""One dataclass config per service, mapped 1:1 to click options and LLMOS_* env vars.

    @dataclass
    class BrokerConfig:
        client_bind: str = option(bind_all(CLIENT_PORT), "where clients connect")

    @click.command()
    @options_from(BrokerConfig)
    def broker(**kwargs): run(BrokerConfig(**kwargs))

gives `--client-bind` with env var `LLMOS_CLIENT_BIND`, so the CLI, compose.yaml
and tests share one source of truth.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}

# Every service's two security fields (llmos.security.service_keys reads them).
INSECURE_HELP = "plain TCP with no CURVE and no authentication: any process that reaches a port may speak"
KEYS_DIR_HELP = (
    "keyring: this service's key pair, its peers' public keys, the allowlist (empty: $LLMOS_HOME/keys)"
)


def llmos_home() -> Path:
    """Where llmos keeps its state: $LLMOS_HOME, default ~/.cache/llmos."""
    return Path(os.environ.get("LLMOS_HOME") or "~/.cache/llmos").expanduser()


def option(default: Any, help: str) -> Any:  # noqa: A002 - mirrors click's name
    return dataclasses.field(default=default, metadata={"help": help})


def env_var(field_name: str) -> str:
    return f"LLMOS_{field_name.upper()}"


def flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def options_from(config_cls: type) -> Callable[[Callable], Callable]:
    """Decorate a click command with one option per field of `config_cls`."""

    def decorate(command: Callable) -> Callable:
        for field in reversed(dataclasses.fields(config_cls)):
            field_type = _TYPES[str(field.type).split("|")[0].strip()]
            name = flag(field.name)
            if field_type is bool:
                name = f"{name}/--no-{name[2:]}"
            command = click.option(
                name,
                field.name,
                type=None if field_type is bool else field_type,
                default=field.default,
                show_default=True,
                envvar=env_var(field.name),
                help=field.metadata.get("help"),
            )(command)
        return command

    return decorate


def to_args(config: Any) -> list[str]:
    """The command-line flags that reproduce `config` (used by `llmos up`)."""
    args: list[str] = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, bool):
            args.append(flag(field.name) if value else f"--no-{flag(field.name)[2:]}")
        else:
            args += [flag(field.name), str(value)]
    return args
