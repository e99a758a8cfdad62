"""The broker's events, as lines of the tamper-evident audit log (llmos.audit).

A line names the request, tenant and key and carries lengths and a keyed hash
of the text (the same prompt hashes the same under one broker's hash key, so
an operator can match requests without reading them); never the text itself.
"""

from __future__ import annotations

import logging
from pathlib import Path

from broker.access import Caller
from broker.requests import Request
from llmos.audit import AuditLog, keyed_hash, load_or_create_hash_key
from llmos.security.authenticator import KeyChanges
from llmos.wire import WireError, pb

log = logging.getLogger(__name__)


class AuditTrail:
    """Appends the broker's events; `AuditTrail(None)` records nothing (--audit-log none)."""

    def __init__(self, path: Path | None, fsync: str = "interval") -> None:
        self.log: AuditLog | None = None
        self.hash_key = b""
        if path is not None:
            # buffered: the broker flushes once per batch of messages, before it answers them
            self.log = AuditLog(path, fsync=fsync, is_buffered=True)
            self.hash_key = load_or_create_hash_key(path.with_name(path.name + ".hashkey"))

    def fingerprint(self, text: str) -> str:
        return keyed_hash(self.hash_key, text) if self.log is not None else ""

    def append(self, kind: str, **fields: object) -> None:
        if self.log is None:
            return
        try:
            self.log.append(kind, **fields)
        except OSError as exc:  # a full disk must not stop the service; it is loud instead
            log.error("audit log append failed (%s): %s", kind, exc)

    def flush(self) -> None:
        if self.log is None:
            return
        try:
            self.log.flush()
        except OSError as exc:
            log.error("audit log flush failed: %s", exc)

    def start(self, is_secure: bool) -> None:
        self.append("start", secure=is_secure)

    def admission(self, request: Request, caller: Caller) -> None:
        admitted = request.admitted
        texts = [admitted.prompt] if admitted.kind == pb.TASK_KIND_GENERATE else admitted.inputs
        self.append(
            "admission",
            request_id=request.request_id,
            client_request_id=admitted.request_id,
            tenant=admitted.tenant,
            key=caller.name,
            task=pb.TaskKind.Name(admitted.kind),
            model=admitted.model,
            tier=admitted.tier,
            prompt_chars=sum(len(text) for text in texts),
            prompt_hash=self.fingerprint("\x00".join(texts)),
        )

    def refusal(self, error: WireError, caller: Caller | None, tenant: str = "") -> None:
        self.append(
            "refusal",
            code=pb.ErrorCode.Name(error.code),
            client_request_id=error.request_id[:128],
            tenant=tenant[:128],
            key=caller.name if caller is not None else "",
            reason=error.message[:200],
        )

    def cancel(self, request: Request, why: str) -> None:
        self.append("cancel", request_id=request.request_id, tenant=request.admitted.tenant, why=why)

    def completion(self, request: Request, is_delivered: bool) -> None:
        self.append(
            "completion",
            request_id=request.request_id,
            tenant=request.admitted.tenant,
            generated_tokens=len(request.generated_token_ids),
            worker=request.worker_id or "",
            delivered=is_delivered,
        )

    def auth_failure(self, domain: str, public_key: str, reason: str) -> None:
        self.append("auth_failure", domain=domain, key=public_key[:12], reason=reason[:200])

    def key_change(self, changes: KeyChanges) -> None:
        for what, entries in (
            ("added", changes.added),
            ("revoked", changes.revoked),
            ("removed", changes.removed),
        ):
            for entry in entries:
                self.append("key_change", change=what, key=entry.name, role=entry.role, tenant=entry.tenant)

    def admin_action(self, caller: Caller, action: str, target: str) -> None:
        self.append("admin_action", key=caller.name, action=action, target=target)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
