"""Gateway configuration: one field per `llmos gateway` flag and LLMOS_* variable."""

from __future__ import annotations

from dataclasses import dataclass

from llmos.client import DEFAULT_TIMEOUT_S, default_broker_address
from llmos.config import INSECURE_HELP, option

GATEWAY_PORT = 8000


@dataclass
class GatewayConfig:
    host: str = option("127.0.0.1", "HTTP address to listen on (0.0.0.0: every interface)")
    port: int = option(GATEWAY_PORT, "HTTP port to listen on")
    broker_address: str = option(
        default_broker_address(),
        "the broker's client ROUTER; several brokers comma-separated (each new request goes to the next "
        "one that holds a worker)",
    )
    timeout_s: float = option(DEFAULT_TIMEOUT_S, "longest wait for the broker's next message on a request")
    model_name: str = option("", "model /v1/models lists while the broker reports none (empty: none)")
    tokenizer: str = option(
        "", "tokenizer folder whose chat template renders chat messages (empty: the plain template)"
    )
    api_keys: str = option(
        "",
        'JSON file {"<api key>": {"tenant": ..., "tier_max": ...}}; empty: no auth at the gateway',
    )
    key_file: str = option("", "the gateway's own secret key file for the broker (empty: the SDK's default)")
    server_key_file: str = option("", "the broker's public key file (empty: the SDK's default)")
    max_body_bytes: int = option(
        8 * 1024 * 1024, "largest request body read (bytes); a larger one is refused with 413 unread"
    )
    access_log: bool = option(False, "log every HTTP request (uvicorn's access log; costs CPU per request)")
    insecure: bool = option(False, INSECURE_HELP)
