"""The `llmos` command line.

Service subcommands (`kernel`, `broker`, `scheduler`, `worker`), `model`,
`bench` and `up` live in other modules and are imported only when invoked, so `llmos
--help`, `llmos submit` and `llmos status` never import torch or a service.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from typing import Any

import click
from google.protobuf.json_format import MessageToJson

from llmos.client import BROKER_ADDRESS_ENV, Client, query_kernel
from llmos.config import env_var
from llmos.errors import LlmosError, LlmosTimeout
from llmos.security.client_keys import KEY_ENV, SERVER_KEY_ENV
from llmos.security.keyring import KeyringError
from llmos.wire import pb
from llmos.wire.constants import CLIENT_PORT, FINISH_REASON_NAMES, KERNEL_PORT, tcp

# name -> ("module:attribute", short help shown by `llmos --help` without importing it)
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("llmos.launcher:up", "Start kernel, scheduler, broker and workers on this machine."),
    "kernel": ("kernel_svc.main:command", "Run the kernel: worker registry, KV block ledger."),
    "broker": ("broker.main:command", "Run the broker: client front door, tiered queues."),
    "scheduler": ("scheduler_svc.main:command", "Run the scheduler: placement policy."),
    "policy": ("scheduler_svc.policy_cli:policy", "Show or switch the scheduler's policy at runtime."),
    "worker": ("workers.main:command", "Run a model worker that serves requests."),
    "model": ("llmos.model_cli:model", "Create and inspect models (e.g. the embedded tiny model)."),
    "embed": ("llmos.pooling_cli:embed", "Embed texts with an embedding model; print the vectors."),
    "classify": ("llmos.pooling_cli:classify", "Classify texts; print each one's top label."),
    "bench": ("llmos_bench:bench", "Benchmarks: the engine against transformers; the scheduling policies."),
    "keys": ("llmos.keys_cli:keys", "Make CurveZMQ keys and manage who may connect (the allowlist)."),
    "audit": ("llmos.audit_cli:audit", "Verify or show the broker's tamper-evident audit log."),
    "gateway": ("gateway.main:command", "Run an OpenAI-compatible HTTP gateway to the broker."),
}
# Commands that run models need an extra: `pip install llmos` alone is the client.
EXTRA_BY_COMMAND = {
    "up": "worker",
    "worker": "worker",
    "model": "worker",
    "bench": "bench",
    "gateway": "gateway",
}
MODULES_OF_EXTRA = {
    "worker": ("torch", "transformers"),
    "bench": ("torch", "transformers"),
    "gateway": ("fastapi", "uvicorn", "sse_starlette"),
}

EXIT_CLIENT_ERROR = 2  # the request itself was refused (INVALID_ARGUMENT, UNKNOWN_MODEL, ...)
EXIT_SERVICE_ERROR = 3  # the system could not serve it (QUEUE_FULL, WORKER_FAILED, ...)
EXIT_TIMEOUT = 4  # nothing arrived within --timeout-s
EXIT_INTERRUPTED = 130  # Ctrl-C (the request is cancelled first)

STATUS_TIMEOUT_S = 2.0
# The SDK's warnings (a lost broker, the requests resent) go to stderr beside the answer.
CLIENT_LOG_FORMAT = "llmos: %(message)s"


class LazyGroup(click.Group):
    """A click group whose LAZY_COMMANDS are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in LAZY_COMMANDS:
            return super().get_command(ctx, cmd_name)
        target, short_help = LAZY_COMMANDS[cmd_name]
        missing = missing_extra(cmd_name)
        if missing:
            return unavailable_command(cmd_name, short_help, missing)
        module_name, attribute = target.split(":")
        try:
            return getattr(importlib.import_module(module_name), attribute)
        except ImportError as exc:
            return unavailable_command(cmd_name, short_help, f"importing {target} failed: {exc}")

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's listing, but lazy commands show their static help instead of being imported."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in LAZY_COMMANDS:
                stand_in = click.Command(name, help=LAZY_COMMANDS[name][1])
                rows.append((name, stand_in.get_short_help_str(limit)))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def missing_extra(name: str) -> str:
    """Why subcommand `name` cannot run here ("" if it can): an extra it needs is not installed."""
    extra = EXTRA_BY_COMMAND.get(name)
    if extra is None:
        return ""
    absent = [m for m in MODULES_OF_EXTRA[extra] if importlib.util.find_spec(m) is None]
    if not absent:
        return ""
    return f"it needs {' and '.join(absent)}: pip install 'llmos[{extra}]'"


def unavailable_command(name: str, short_help: str, why: str) -> click.Command:
    """Stands in for a subcommand that cannot run here, and says why when run."""

    def fail(**_: object) -> None:
        raise click.ClickException(f"'llmos {name}' is unavailable: {why}")

    accept_anything = {"ignore_unknown_options": True, "allow_extra_args": True}
    return click.Command(
        name,
        callback=fail,
        help=f"{short_help} (unavailable: {why})",
        context_settings=accept_anything,
        add_help_option=False,
    )


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--key",
    type=click.Path(dir_okay=False),
    help="this client's secret key file (.key_secret) [env LLMOS_KEY; default: the keyring's admin key]",
)
@click.option(
    "--server-key",
    type=click.Path(dir_okay=False),
    help="the broker's public key file (.key) [env LLMOS_SERVER_KEY; default: the keyring's]",
)
def cli(key: str | None, server_key: str | None) -> None:
    """llmos: serve large language models with a broker, a kernel, a scheduler and workers.

    Start everything on this machine with `llmos up`, then `llmos submit PROMPT`.
    """
    # the SDK reads these (llmos.security.client_keys), in every subcommand alike
    if key:
        os.environ[KEY_ENV] = key
    if server_key:
        os.environ[SERVER_KEY_ENV] = server_key


def main() -> None:
    try:
        cli(prog_name="llmos")
    except KeyringError as exc:  # a key file missing or unreadable: one line, not a traceback
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)


# ---------------------------------------------------------------- submit

broker_address_option = click.option(
    "--broker-address",
    default=tcp(CLIENT_PORT),
    envvar=BROKER_ADDRESS_ENV,
    show_default=True,
    help="where the broker listens for clients",
)


@cli.command(
    epilog="Exit status: 0 done; 2 the request was refused (INVALID_ARGUMENT, "
    "UNKNOWN_MODEL, TOO_LARGE, ...); 3 the system could not serve it (QUEUE_FULL, "
    "QUOTA_EXCEEDED, WORKER_FAILED, UNAVAILABLE, ...); 4 nothing arrived within "
    "--timeout-s; 130 interrupted (the request is cancelled)."
)
@broker_address_option
@click.option("--model", default="", help="model to use (empty: the broker's default)")
@click.option("--tier", default="", help="queue tier (empty: the broker's default)")
@click.option("--tenant", default="", help="tenant for quotas (empty: default)")
@click.option("--max-tokens", type=int, default=0, help="tokens to generate (0: broker default)")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy")
@click.option("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
@click.option("--top-k", type=int, default=0, show_default=True, help="0 = off")
@click.option("--stop", multiple=True, help="stop string (repeatable)")
@click.option("--seed", type=int, default=None, help="sampling seed")
@click.option(
    "--deadline-ms",
    type=int,
    default=0,
    help="finish within this long or get DEADLINE_EXCEEDED (0: the tier's default)",
)
@click.option(
    "--timeout-s",
    type=float,
    default=60.0,
    show_default=True,
    help="give up when nothing arrives for this long",
)
@click.option("--no-stream", is_flag=True, help="print the text once, when it is complete")
@click.option("--json", "as_json", is_flag=True, help="print the GenerateResult as JSON")
@click.argument("prompt")
def submit(
    broker_address: str, timeout_s: float, no_stream: bool, as_json: bool, prompt: str, **sampling: Any
) -> None:  # each of click's values is its option's type
    """Send PROMPT to the broker and print the answer as it streams in
    (PROMPT '-' reads stdin). Usage goes to stderr."""
    if prompt == "-":
        prompt = sys.stdin.read()
    logging.basicConfig(level=logging.WARNING, format=CLIENT_LOG_FORMAT)
    sampling["stop"] = tuple(sampling["stop"])
    is_streaming = not (no_stream or as_json)
    with Client(broker_address, timeout_s=timeout_s) as client:
        request_id = ""
        is_mid_line = False
        try:
            request_id = client.submit(prompt, **sampling)
            if is_streaming:
                for chunk in client.stream(request_id):
                    click.echo(chunk.text, nl=False)
                    sys.stdout.flush()
                    is_mid_line = True
            result = client.result(request_id)
        except LlmosError as exc:
            if is_mid_line:
                click.echo()
            if isinstance(exc, LlmosTimeout) and request_id:
                client.cancel(request_id)  # we stop waiting, so the broker need not run it
            sys.exit(report_error(exc, broker_address, is_accepted=bool(request_id)))
        except KeyboardInterrupt:
            if request_id:
                client.cancel(request_id)
            sys.exit(EXIT_INTERRUPTED)
    if as_json:
        click.echo(MessageToJson(result, preserving_proto_field_name=True))
        return
    click.echo("" if is_streaming else result.text)
    click.echo(usage_line(result), err=True)


def report_error(exc: LlmosError, broker_address: str, is_accepted: bool) -> int:
    """Print `error: CODE_NAME: sentence` (plus a hint) to stderr; return the exit status."""
    click.echo(f"error: {exc.code_name}: {exc.message}", err=True)
    if isinstance(exc, LlmosTimeout):
        hint = (
            "the broker accepted the request; `llmos status` shows whether a worker serves it"
            if is_accepted
            else f"is a broker listening at {broker_address}? `llmos up` starts one"
        )
        click.echo(f"hint: {hint}", err=True)
        return EXIT_TIMEOUT
    if exc.retry_after_ms:
        click.echo(f"hint: retry after {exc.retry_after_ms} ms", err=True)
    return EXIT_CLIENT_ERROR if exc.is_client_error else EXIT_SERVICE_ERROR


def usage_line(result: pb.GenerateResult) -> str:
    usage = result.usage
    line = (
        f"usage: prompt_tokens={usage.prompt_tokens} generated_tokens={usage.generated_tokens} "
        f"finish={FINISH_REASON_NAMES.get(result.finish_reason, result.finish_reason)} "
        f"queue={usage.queue_time_s:.3f}s ttft={usage.time_to_first_token_s:.3f}s "
        f"total={usage.total_time_s:.3f}s model={result.model} worker={result.worker_id}"
    )
    if result.num_restarts:
        line += f" restarts={result.num_restarts}"
    return line


# ---------------------------------------------------------------- drain


@cli.command(
    epilog="Exit status: 0 the worker is draining; 3 the broker does not know the worker "
    "(UNKNOWN_WORKER) or could not be asked; 4 no answer within --timeout-s."
)
@broker_address_option
@click.option(
    "--timeout-s",
    type=float,
    default=STATUS_TIMEOUT_S,
    show_default=True,
    help="how long to wait for the broker's answer",
)
@click.argument("worker_id")
def drain(broker_address: str, timeout_s: float, worker_id: str) -> None:
    """Drain WORKER_ID: it finishes the requests it runs, takes no new one, then
    deregisters and exits (what SIGTERM to the worker does). Prints the broker's answer."""
    try:
        with Client(broker_address, timeout_s=timeout_s) as client:
            reply = client.drain_worker(worker_id)
    except LlmosError as exc:
        sys.exit(report_error(exc, broker_address, is_accepted=False))
    click.echo(f"worker {reply.worker_id} is draining: {plural(reply.num_running, 'request')} to finish")


# ---------------------------------------------------------------- status


@cli.command()
@broker_address_option
@click.option(
    "--kernel-address",
    default=tcp(KERNEL_PORT),
    envvar=env_var("kernel_address"),
    show_default=True,
    help="where the kernel answers resource queries",
)
@click.option(
    "--timeout-s",
    type=float,
    default=STATUS_TIMEOUT_S,
    show_default=True,
    help="how long to wait for each service",
)
@click.option("--watch", is_flag=True, help="refresh every second until Ctrl-C")
@click.option("--watch-count", type=int, default=0, hidden=True, help="--watch: stop after this many frames")
def status(broker_address: str, kernel_address: str, timeout_s: float, watch: bool, watch_count: int) -> None:
    """Show workers, queues and the scheduler, from the broker and the kernel.

    Exits 3 when neither the broker nor the kernel answers.
    """
    if not watch:
        text, num_answered = collect_status(broker_address, kernel_address, timeout_s)
        click.echo(text)
        sys.exit(0 if num_answered else EXIT_SERVICE_ERROR)
    from llmos.status_watch import watch_status  # imports rich: only when watching

    watch_status(lambda: collect_status_sections(broker_address, kernel_address, timeout_s)[0], watch_count)


# (the lines above the tables, then each table as (headers, rows)): `llmos status`
# prints them as text, `--watch` on a terminal as rich tables
StatusTable = tuple[list[str], list[list[str]]]
StatusSections = tuple[list[str], list[StatusTable]]


def collect_status(broker_address: str, kernel_address: str, timeout_s: float) -> tuple[str, int]:
    """(the status text, how many of broker and kernel answered)."""
    sections, num_answered = collect_status_sections(broker_address, kernel_address, timeout_s)
    return status_text(sections), num_answered


def collect_status_sections(
    broker_address: str, kernel_address: str, timeout_s: float
) -> tuple[StatusSections, int]:
    """(what `llmos status` shows, how many of broker and kernel answered)."""
    reply: pb.StatusReply | str
    view: pb.ResourceView | str
    try:
        with Client(broker_address, timeout_s=timeout_s) as client:
            reply = client.status()
    except LlmosError as exc:
        reply = f"unreachable ({exc.message})"
    try:
        view = query_kernel(kernel_address, timeout_s)
    except LlmosError as exc:
        view = f"unreachable ({exc.message})"
    num_answered = (not isinstance(reply, str)) + (not isinstance(view, str))
    return status_sections(broker_address, reply, kernel_address, view), num_answered


def format_status(
    broker_address: str, reply: pb.StatusReply | str, kernel_address: str, view: pb.ResourceView | str
) -> str:
    """The `llmos status` text; `reply`/`view` are a sentence when that service did not answer."""
    return status_text(status_sections(broker_address, reply, kernel_address, view))


def status_text(sections: StatusSections) -> str:
    lines, tables = sections
    blocks = ["\n".join(table(headers, rows)) for headers, rows in tables]
    return "\n".join([*lines, "", "\n\n".join(blocks)])


def status_sections(
    broker_address: str, reply: pb.StatusReply | str, kernel_address: str, view: pb.ResourceView | str
) -> StatusSections:
    if isinstance(reply, str):
        broker_line = reply
    else:
        policy = f" (policy {reply.scheduler_policy})" if reply.scheduler_policy else ""
        scheduler = (
            f"scheduler online{policy}"
            if reply.scheduler_online
            else "scheduler OFFLINE (broker decides locally)"
        )
        broker_line = (
            f"{scheduler}, running {reply.num_running}, "
            f"{reply.tokens_per_s:.1f} tokens/s, "
            f"completed {reply.num_completed}, rejected {reply.num_rejected}, "
            f"refused messages {reply.num_refused_messages}"
        )
    kernel_line = (
        view
        if isinstance(view, str)
        else (
            f"{plural(len(view.workers), 'worker')} registered, block size {view.block_size}, "
            f"KV blocks {sum(w.kv_blocks_used for w in view.workers)}/"
            f"{sum(w.kv_blocks_total for w in view.workers)} in use cluster-wide, "
            f"view version {view.version}"
        )
    )
    lines = [f"broker  {broker_address}  {broker_line}", f"kernel  {kernel_address}  {kernel_line}"]
    tables: list[StatusTable] = [
        (
            ["WORKER", "MODELS", "DEVICE", "RUNNING", "KV BLOCKS", "TOKENS/S", "PREFIXES"],
            worker_rows(reply, view),
        )
    ]
    if not isinstance(reply, str):
        tier_rows = [
            [
                tier.tier,
                f"{tier.depth}/{tier.max_depth}",
                str(tier.num_running),
                f"{tier.answer_fill:.0%} of {tier.num_answers}" if tier.num_answers else "-",
            ]
            for tier in reply.tiers
        ]
        tables.append((["TIER", "QUEUED", "RUNNING", "ANSWER FILL"], tier_rows))
    if not isinstance(view, str) and view.tenants:
        tenant_rows = [
            [t.tenant or "-", str(t.num_requests_holding_blocks), str(t.kv_blocks_used)] for t in view.tenants
        ]
        tables.append((["TENANT", "REQUESTS", "KV BLOCKS"], tenant_rows))
    return lines, tables


def worker_rows(reply: pb.StatusReply | str, view: pb.ResourceView | str) -> list[list[str]]:
    """One row per worker either service knows: slots from the broker, KV blocks and the
    cached prompt prefixes (in 64-character blocks of text) from the kernel."""
    by_broker = {} if isinstance(reply, str) else {w.worker_id: w for w in reply.workers}
    by_kernel = {} if isinstance(view, str) else {w.worker_id: w for w in view.workers}
    rows = []
    for worker_id in sorted({*by_broker, *by_kernel}):
        seen = by_broker.get(worker_id) or by_kernel[worker_id]
        resources = by_kernel.get(worker_id)
        kv_blocks = (
            f"{resources.kv_blocks_used}/{resources.kv_blocks_total}" if resources is not None else "?"
        )
        tokens_per_s = f"{by_broker[worker_id].tokens_per_s:.1f}" if worker_id in by_broker else "?"
        prefixes = str(len(resources.cached_prefix_hashes)) if resources is not None else "?"
        rows.append(
            [
                worker_id,
                ",".join(seen.models) or "-",
                seen.device or "-",
                running_cell(seen),
                kv_blocks,
                tokens_per_s,
                prefixes,
            ]
        )
    return rows


def running_cell(worker: pb.WorkerStatus | pb.WorkerResources) -> str:
    """Busy slots of all; "draining" where the broker says the worker is leaving."""
    cell = f"{worker.num_running}/{worker.max_num_seqs}"
    return f"{cell} draining" if isinstance(worker, pb.WorkerStatus) and worker.is_draining else cell


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return [f"{headers[0]}  (none)"]
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [headers, *rows]
    ]
