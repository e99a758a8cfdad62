"""Which keys a client (the SDK, the CLI, a benchmark driver) speaks CURVE with.

In order: the key files it is given; LLMOS_KEY (its own `.key_secret`) and
LLMOS_SERVER_KEY (the broker's `.key`); else the keyring `llmos up` made
(LLMOS_KEYS_DIR, default $LLMOS_HOME/keys): its admin key and the server's
public key. Without any, or with LLMOS_INSECURE=1, the client speaks plain TCP,
which a secure stack refuses at the handshake.
"""

from __future__ import annotations

import os
from pathlib import Path

from llmos.security.curve import CurveClient
from llmos.security.keyring import KeyringError, default_keys_dir, load_key_pair, load_public_key

KEY_ENV = "LLMOS_KEY"
SERVER_KEY_ENV = "LLMOS_SERVER_KEY"
INSECURE_ENV = "LLMOS_INSECURE"
KEYS_DIR_ENV = "LLMOS_KEYS_DIR"  # also every service's --keys-dir
CLIENT_KEY_NAME = "admin"  # the key `llmos up` makes for its own CLI
_TRUE = frozenset({"1", "true", "yes", "on"})


def is_insecure_env() -> bool:
    return os.environ.get(INSECURE_ENV, "").strip().lower() in _TRUE


def client_curve(
    key_file: str | Path | None = None,
    server_key_file: str | Path | None = None,
    server: str = "broker",
    is_insecure: bool = False,
) -> CurveClient | None:
    """The CURVE options to reach `server` (broker, kernel or scheduler), or None for plain TCP.
    LLMOS_SERVER_KEY names the broker's key only; the others come from the keyring."""
    if is_insecure or (key_file is None and server_key_file is None and is_insecure_env()):
        return None
    keys_dir = default_keys_dir()
    key_file = key_file or os.environ.get(KEY_ENV) or _existing(keys_dir / f"{CLIENT_KEY_NAME}.key_secret")
    if server_key_file is None and server == "broker":
        server_key_file = os.environ.get(SERVER_KEY_ENV)
    server_key_file = server_key_file or _existing(keys_dir / f"{server}.key")
    if not key_file and not server_key_file:
        return None
    if not key_file or not server_key_file:
        missing = "its own key (--key, LLMOS_KEY)" if not key_file else f"the {server}'s public key"
        raise KeyringError(f"a CURVE client needs {missing}; or set {INSECURE_ENV}=1 for a plain stack")
    public_key, secret_key = load_key_pair(Path(key_file))
    return CurveClient(
        public_key=public_key, secret_key=secret_key, server_key=load_public_key(Path(server_key_file))
    )


def _existing(path: Path) -> str:
    return str(path) if path.is_file() else ""
