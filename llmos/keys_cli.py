"""`llmos keys ...`: make CurveZMQ key pairs and manage the allowlist of who may connect.

The services read the allowlist again within a second of a change (and at once
on SIGHUP), so `add` and `revoke` take effect on a running stack.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from llmos.security.keyring import (
    ROLES,
    Allowlist,
    KeyEntry,
    KeyringError,
    default_keys_dir,
    load_public_key,
    make_key_pair,
)
from llmos.security.service_keys import open_keyring

keys_dir_option = click.option(
    "--keys-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="the keyring (default: $LLMOS_KEYS_DIR, else $LLMOS_HOME/keys)",
)


def keys_dir_or_default(keys_dir: Path | None) -> Path:
    return keys_dir or default_keys_dir()


class KeysGroup(click.Group):
    """Every KeyringError becomes one line on stderr and exit 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyringError as exc:
            raise click.ClickException(str(exc)) from None


@click.group("keys", cls=KeysGroup)
def keys() -> None:
    """Make CurveZMQ keys and manage who may connect (the allowlist)."""


@keys.command()
@keys_dir_option
def init(keys_dir: Path | None) -> None:
    """Make the keyring `llmos up` uses (idempotent): service, admin and worker keys."""
    keyring = open_keyring(keys_dir_or_default(keys_dir))
    names = sorted(path.stem for path in keyring.keys_dir.glob("*.key_secret"))
    click.echo(f"keyring {keyring.keys_dir}: {', '.join(names)}; allowlist {keyring.allowlist_path}")


@keys.command()
@click.argument("name")
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="directory (default: the keyring)"
)
@keys_dir_option
def gen(name: str, out: Path | None, keys_dir: Path | None) -> None:
    """Make a key pair NAME.key (public: give it to the operator) and NAME.key_secret."""
    public_file, secret_file = make_key_pair(out or keys_dir_or_default(keys_dir), name)
    click.echo(f"public key {public_file}\nsecret key {secret_file} (keep it private)")


@keys.command()
@click.argument("public_key_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--role", type=click.Choice(ROLES), required=True, help="what the key may do")
@click.option("--tenant", required=True, help="the tenant its requests run as")
@click.option("--name", default="", help="a name for the entry (default: the file's stem)")
@click.option("--tier-max", default="", help="the highest tier its requests may use (default: any)")
@click.option("--max-live-requests", type=click.IntRange(min=0), default=0, help="0: no limit of its own")
@click.option("--tokens-per-minute", type=click.IntRange(min=0), default=0, help="0: no limit")
@keys_dir_option
def add(
    public_key_file: Path,
    role: str,
    tenant: str,
    name: str,
    tier_max: str,
    max_live_requests: int,
    tokens_per_minute: int,
    keys_dir: Path | None,
) -> None:
    """Admit the key in PUBLIC_KEY_FILE (a NAME.key) with a role and a tenant."""
    path = keys_dir_or_default(keys_dir) / "allowlist.json"
    allowlist = Allowlist.load(path)
    entry = KeyEntry(
        public_key=load_public_key(public_key_file).decode(),
        name=name or public_key_file.name.split(".")[0],
        role=role,
        tenant=tenant,
        tier_max=tier_max,
        max_live_requests=max_live_requests,
        tokens_per_minute=tokens_per_minute,
    )
    allowlist.add(entry)
    allowlist.save(path)
    click.echo(f"added {entry.name}: role {role}, tenant {tenant} ({path})")


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per entry")
@keys_dir_option
def list_keys(as_json: bool, keys_dir: Path | None) -> None:
    """Show the allowlist."""
    allowlist = Allowlist.load(keys_dir_or_default(keys_dir) / "allowlist.json")
    if as_json:
        for entry in allowlist.entries():
            click.echo(json.dumps(asdict(entry)))
        return
    rows = [("NAME", "ROLE", "TENANT", "TIER MAX", "LIVE", "TOKENS/MIN", "REVOKED", "KEY")]
    for entry in allowlist.entries():
        rows.append(
            (
                entry.name,
                entry.role,
                entry.tenant,
                entry.tier_max or "-",
                str(entry.max_live_requests or "-"),
                str(entry.tokens_per_minute or "-"),
                "yes" if entry.is_revoked else "",
                entry.public_key[:12],
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@keys.command()
@click.argument("name_or_key")
@keys_dir_option
def revoke(name_or_key: str, keys_dir: Path | None) -> None:
    """Revoke a key by entry name or public key: running services drop it within a second."""
    path = keys_dir_or_default(keys_dir) / "allowlist.json"
    allowlist = Allowlist.load(path)
    revoked = allowlist.revoke(name_or_key)
    allowlist.save(path)
    for entry in revoked:
        click.echo(f"revoked {entry.name} ({entry.role}, tenant {entry.tenant})")
