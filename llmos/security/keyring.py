"""CurveZMQ keys on disk and the allowlist of who may connect.

A keyring is a directory: key pairs in ZeroMQ's certificate format
(`zmq.auth.create_certificates`: NAME.key holds the public key, NAME.key_secret
both), and `allowlist.json`, one entry per admitted public key with its role,
tenant and limits. `llmos up` makes one on first use (`ensure_keyring`): server
keys for the broker, kernel and scheduler, an admin key for the CLI, a worker
key for its own workers.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

from llmos.config import llmos_home

ROLES = ("client", "worker", "service", "admin")
SERVICE_NAMES = ("broker", "kernel", "scheduler")
ALLOWLIST_FILE = "allowlist.json"
ALLOWLIST_VERSION = 1
MAX_NAME_BYTES = 128
Z85_KEY_CHARS = 40
# the keys `ensure_keyring` makes: name -> (role, tenant)
DEFAULT_KEYS = {
    "broker": ("service", "system"),
    "kernel": ("service", "system"),
    "scheduler": ("service", "system"),
    "admin": ("admin", "admin"),
    "worker": ("worker", "system"),
}


class KeyringError(Exception):
    """A key file or the allowlist is missing, unreadable or invalid; the message says which."""


@dataclass(frozen=True)
class KeyEntry:
    public_key: str  # Z85, 40 characters
    name: str
    role: str
    tenant: str
    tier_max: str = ""  # the highest tier its requests may use; "" = any
    max_live_requests: int = 0  # 0 = the broker's own limits only
    tokens_per_minute: int = 0  # 0 = no limit
    is_revoked: bool = False
    added_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def check_entry(entry: KeyEntry) -> None:
    """KeyringError naming what is wrong with `entry`, if anything."""
    if entry.role not in ROLES:
        raise KeyringError(f"role {entry.role!r} is not one of {', '.join(ROLES)}")
    if not is_z85_key(entry.public_key):
        raise KeyringError(f"public key {entry.public_key[:48]!r} is not a 40-character Z85 CurveZMQ key")
    for what, text in (("name", entry.name), ("tenant", entry.tenant), ("tier_max", entry.tier_max)):
        if len(text.encode()) > MAX_NAME_BYTES or not text.isprintable():
            raise KeyringError(f"{what} {text[:48]!r} must be printable and at most {MAX_NAME_BYTES} bytes")
    if not entry.name or not entry.tenant:
        raise KeyringError("an entry needs a name and a tenant")
    if entry.max_live_requests < 0 or entry.tokens_per_minute < 0:
        raise KeyringError("limits must be 0 (none) or positive")


def is_z85_key(text: str) -> bool:
    if len(text) != Z85_KEY_CHARS:
        return False
    try:
        return len(z85.decode(text.encode("ascii"))) == 32
    except (ValueError, UnicodeEncodeError, KeyError):
        return False


class Allowlist:
    """The entries by public key. A revoked entry stays in the file (it says who was
    revoked) but `entry` no longer finds it."""

    def __init__(self, entries: list[KeyEntry] | None = None) -> None:
        self._by_key: dict[str, KeyEntry] = {}
        for entry in entries or []:
            self.add(entry)

    @classmethod
    def load(cls, path: Path) -> Allowlist:
        """The allowlist in `path`; empty if there is no such file."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise KeyringError(f"cannot read the allowlist {path}: {exc}") from None
        try:
            document = json.loads(text)
            raw_entries = document["keys"]
            assert isinstance(raw_entries, list)
        except (ValueError, KeyError, TypeError, AssertionError):
            raise KeyringError(f"the allowlist {path} is not JSON of the form {{'keys': [...]}}") from None
        entries = []
        for index, raw in enumerate(raw_entries):
            try:
                entry = KeyEntry(
                    public_key=str(raw["public_key"]),
                    name=str(raw["name"]),
                    role=str(raw["role"]),
                    tenant=str(raw["tenant"]),
                    tier_max=str(raw.get("tier_max", "")),
                    max_live_requests=int(raw.get("max_live_requests", 0)),
                    tokens_per_minute=int(raw.get("tokens_per_minute", 0)),
                    is_revoked=bool(raw.get("revoked", False)),
                    added_at=str(raw.get("added_at", "")),
                )
                check_entry(entry)
            except (KeyError, TypeError, ValueError, KeyringError) as exc:
                raise KeyringError(f"the allowlist {path}, entry {index}: {exc}") from None
            entries.append(entry)
        return cls(entries)

    def save(self, path: Path) -> None:
        """Write atomically (a reader sees the old file or the new one, never half)."""
        rows = []
        for entry in self._by_key.values():
            row = asdict(entry)
            row["revoked"] = row.pop("is_revoked")
            rows.append(row)
        text = json.dumps({"version": ALLOWLIST_VERSION, "keys": rows}, indent=2) + "\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".allowlist-")
        try:
            with os.fdopen(fd, "w") as tmp:
                tmp.write(text)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.chmod(tmp_name, 0o600)
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def entry(self, public_key: str | bytes) -> KeyEntry | None:
        """The live entry of a Z85 public key (ZMQ's User-Id); None if absent or revoked."""
        key = public_key.decode("ascii", "replace") if isinstance(public_key, bytes) else public_key
        entry = self._by_key.get(key)
        return None if entry is None or entry.is_revoked else entry

    def add(self, entry: KeyEntry) -> None:
        check_entry(entry)
        self._by_key[entry.public_key] = entry

    def revoke(self, name_or_key: str) -> list[KeyEntry]:
        """Mark every live entry with this name or public key revoked; the entries revoked."""
        matches = [
            entry
            for entry in self._by_key.values()
            if name_or_key in (entry.name, entry.public_key) and not entry.is_revoked
        ]
        if not matches:
            raise KeyringError(f"no live key named {name_or_key!r} in the allowlist")
        for entry in matches:
            self._by_key[entry.public_key] = replace(entry, is_revoked=True)
        return matches

    def entries(self) -> list[KeyEntry]:
        return list(self._by_key.values())


# ---------------------------------------------------------------- key files


def load_public_key(path: Path) -> bytes:
    """The Z85 public key in a `.key` or `.key_secret` file."""
    public_key, _ = _load_certificate(path)
    return public_key


def load_key_pair(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a `.key_secret` file."""
    public_key, secret_key = _load_certificate(path)
    if secret_key is None:
        raise KeyringError(f"{path} holds no secret key (use the .key_secret file)")
    return public_key, secret_key


def _load_certificate(path: Path) -> tuple[bytes, bytes | None]:
    try:
        public_key, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyringError(f"cannot read a CurveZMQ key from {path}: {exc}") from None
    if not public_key or not is_z85_key(public_key.decode("ascii", "replace")):
        raise KeyringError(f"{path} holds no CurveZMQ public key")
    return public_key, secret_key


def make_key_pair(keys_dir: Path, name: str) -> tuple[Path, Path]:
    """NAME.key and NAME.key_secret in `keys_dir`; KeyringError if they exist."""
    public_file, secret_file = keys_dir / f"{name}.key", keys_dir / f"{name}.key_secret"
    if public_file.exists() or secret_file.exists():
        raise KeyringError(f"a key named {name!r} exists in {keys_dir}; pick another name")
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    made_public, made_secret = zmq.auth.create_certificates(keys_dir, name)
    os.chmod(made_secret, 0o600)
    return Path(made_public), Path(made_secret)


# ---------------------------------------------------------------- the keyring


@dataclass(frozen=True)
class Keyring:
    keys_dir: Path

    @property
    def allowlist_path(self) -> Path:
        return self.keys_dir / ALLOWLIST_FILE

    def public_key_file(self, name: str) -> Path:
        return self.keys_dir / f"{name}.key"

    def secret_key_file(self, name: str) -> Path:
        return self.keys_dir / f"{name}.key_secret"

    def server_public_key(self, service: str) -> bytes:
        return load_public_key(self.public_key_file(service))

    def key_pair(self, name: str) -> tuple[bytes, bytes]:
        return load_key_pair(self.secret_key_file(name))


def default_keys_dir() -> Path:
    return Path(os.environ.get("LLMOS_KEYS_DIR") or llmos_home() / "keys").expanduser()


def ensure_keyring(keys_dir: Path) -> Keyring:
    """The keyring in `keys_dir`, with every DEFAULT_KEYS pair and its allowlist entry
    made where missing. Never overwrites a key; callers that may race hold a lock."""
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keyring = Keyring(keys_dir)
    allowlist = Allowlist.load(keyring.allowlist_path)
    is_changed = False
    for name, (role, tenant) in DEFAULT_KEYS.items():
        if not keyring.secret_key_file(name).exists():
            keyring.public_key_file(name).unlink(missing_ok=True)  # half a pair is no pair
            make_key_pair(keys_dir, name)
        public_key = load_public_key(keyring.public_key_file(name)).decode()
        if public_key not in {entry.public_key for entry in allowlist.entries()}:
            allowlist.add(KeyEntry(public_key=public_key, name=name, role=role, tenant=tenant))
            is_changed = True
    if is_changed or not keyring.allowlist_path.exists():
        allowlist.save(keyring.allowlist_path)
    return keyring
