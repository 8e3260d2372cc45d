"""Alert notifications: webhooks (signed JSON), Slack-compatible webhooks, email, the log.

Rules of this module:
- A notify target is one of `{"webhook": URL, "secret": S}` (secret optional),
  `{"slack": URL}` or `{"email": ADDRESS}`; `validate_targets` checks what a user sent.
- Every notification is a row in `alert_deliveries` before the first attempt (status
  `pending`, with its payload), so a restart resumes it; each attempt updates the row
  (`delivered`, or `failed` after the last attempt, with the last HTTP status or error).
- Webhook body: the JSON payload (`payload()`), signed when the target has a secret:
  `X-Linkedge-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`
  (the time is signed too, so a receiver can refuse replays; `verify_signature`).
- Retries: a timeout, a connection or TLS error, 5xx, 408 and 429 are retried after
  alert_retry_base_s, then twice as long each time, up to alert_delivery_attempts; any
  other answer outside 2xx fails at once (retrying cannot help).
- Email goes through stdlib smtplib on a thread (asyncio.to_thread): the loop never waits.
- Every delivery's outcome is logged once (logger linkedge.alerts).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import smtplib
import sqlite3
import time
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from admin.outbound import FetchError, fetch
from edge.db import Transaction, now_ms
from edge.errors import InvalidField

log = logging.getLogger("linkedge.alerts")

SIGNATURE_HEADER: Final = "X-Linkedge-Signature"
MAX_TARGETS: Final = 10  # notify targets per alert
MAX_SECRET_CHARS: Final = 256
WEBHOOK_TIMEOUT_S: Final = 10.0
SMTP_TIMEOUT_S: Final = 20.0
RETRY_STATUSES: Final = frozenset({408, 429})
SIGNATURE_TOLERANCE_S: Final = 300  # what verify_signature accepts by default
DELIVERY_LOG_LIMIT: Final = 100  # rows GET /api/alerts/{id}/deliveries answers


def _url(value: Any, field: str) -> str:
    if not isinstance(value, str) or len(value) > 2048:
        raise InvalidField(f"{field} must be an http(s) URL", field)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidField(f"{field} must be an http(s) URL, got {value!r}", field)
    return value


def validate_targets(value: Any, field: str = "notify") -> list[dict[str, str]]:
    """The stored form of a notify list (InvalidField naming `notify[i].key`)."""
    if not isinstance(value, list):
        raise InvalidField(
            'notify must be a list like [{"webhook": URL, "secret": "..."}, {"slack": URL}, '
            '{"email": "ops@example.com"}]',
            field,
        )
    if len(value) > MAX_TARGETS:
        raise InvalidField(f"at most {MAX_TARGETS} notify targets", field)
    out: list[dict[str, str]] = []
    for i, target in enumerate(value):
        path = f"{field}[{i}]"
        if not isinstance(target, dict):
            raise InvalidField(f"{path} must be an object", path)
        kinds = [k for k in ("webhook", "slack", "email") if k in target]
        if len(kinds) != 1:
            raise InvalidField(f"{path} needs exactly one of webhook, slack, email", path)
        kind = kinds[0]
        allowed = {"webhook", "secret"} if kind == "webhook" else {kind}
        for key in target:
            if key not in allowed:
                raise InvalidField(f"unknown field {key!r} in a {kind} target", f"{path}.{key}")
        if kind == "email":
            address = target["email"]
            _name, parsed = parseaddr(address) if isinstance(address, str) else ("", "")
            if not parsed or "@" not in parsed or parsed != address or "\n" in address:
                raise InvalidField(
                    f"{path}.email must be one address like ops@example.com", f"{path}.email"
                )
            out.append({"email": address})
            continue
        item = {kind: _url(target[kind], f"{path}.{kind}")}
        if "secret" in target:
            secret = target["secret"]
            if not isinstance(secret, str) or not 1 <= len(secret) <= MAX_SECRET_CHARS:
                raise InvalidField(
                    f"{path}.secret must be a string of 1 to {MAX_SECRET_CHARS} characters",
                    f"{path}.secret",
                )
            item["secret"] = secret
        out.append(item)
    return out


def targets_out(targets: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Targets as the API shows them: a webhook's secret is never shown, only whether it
    signs; a Slack URL (itself a secret) only up to its host."""
    out: list[dict[str, Any]] = []
    for t in targets:
        if "webhook" in t:
            out.append({"webhook": t["webhook"], "signed": "secret" in t})
        elif "slack" in t:
            out.append({"slack": redacted(t["slack"])})
        else:
            out.append(dict(t))
    return out


def redacted(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…"


def channel_of(target: dict[str, str]) -> tuple[str, str]:
    """(channel, target as logged)."""
    if "webhook" in target:
        return "webhook", target["webhook"]
    if "slack" in target:
        return "slack", redacted(target["slack"])
    return "email", target["email"]


def sign(secret: str, body: bytes, at_s: int) -> str:
    mac = hmac.new(secret.encode(), f"{at_s}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at_s},v1={mac}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    now_s: float | None = None,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
) -> bool:
    """What a receiver does: the header's time is recent and its MAC matches."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        at_s = int(fields["t"])
    except (KeyError, ValueError):
        return False
    now = time.time() if now_s is None else now_s
    if abs(now - at_s) > tolerance_s:
        return False
    expected = sign(secret, body, at_s).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def message(payload: dict[str, Any]) -> str:
    """One line for Slack, an email subject, the log."""
    alert = payload["alert"]
    word = "FIRING" if payload["event"] == "firing" else "resolved"
    return f"[linkedge] {word}: {alert['name']} ({alert['kind']}): {payload['summary']}"


# --- the log (SQL, on the writer connection) -----------------------------------------------


def add_deliveries(
    conn: sqlite3.Connection,
    alert_id: int,
    event: str,
    payload: dict[str, Any],
    targets: list[dict[str, str]],
) -> list[int]:
    now = now_ms()
    body = orjson.dumps(payload).decode()
    ids = []
    with Transaction(conn):
        for target in targets:
            channel, shown = channel_of(target)
            row = conn.execute(
                "INSERT INTO alert_deliveries (alert_id, event, channel, target, payload, "
                "status, attempts, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?) RETURNING id",
                (alert_id, event, channel, shown, body, now, now),
            ).fetchone()
            ids.append(int(row[0]))
    return ids


def record_attempt(
    conn: sqlite3.Connection,
    delivery_id: int,
    status: str,
    response: int | None,
    error: str | None,
) -> None:
    with Transaction(conn):
        conn.execute(
            "UPDATE alert_deliveries SET status = ?, attempts = attempts + 1, response = ?, "
            "error = ?, updated_at = ? WHERE id = ?",
            (status, response, error, now_ms(), delivery_id),
        )


def pending_deliveries(conn: sqlite3.Connection) -> list[tuple[int, int, str, str]]:
    """(delivery id, attempts so far, payload, target as JSON) of the deliveries left
    pending (those whose target was removed from the rule meanwhile are marked failed)."""
    rows = conn.execute(
        "SELECT d.id, d.alert_id, d.payload, d.channel, d.target, d.attempts, a.notify "
        "FROM alert_deliveries d JOIN alerts a ON a.id = d.alert_id "
        "WHERE d.status = 'pending' ORDER BY d.id"
    ).fetchall()
    out = []
    for row in rows:
        for target in orjson.loads(row["notify"]):
            if channel_of(target) == (row["channel"], row["target"]):
                key = orjson.dumps(target).decode()
                out.append((row["id"], row["attempts"], row["payload"], key))
                break
        else:  # the rule no longer has this target: nowhere to send it
            record_attempt(conn, row["id"], "failed", None, "the target was removed from the rule")
    return out


def deliveries(conn: sqlite3.Connection, alert_id: int, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, event, channel, target, status, attempts, response, error, created_at, "
        "updated_at FROM alert_deliveries WHERE alert_id = ? ORDER BY id DESC LIMIT ?",
        (alert_id, limit),
    ).fetchall()
    return [dict(row) for row in rows]


# --- sending -----------------------------------------------------------------------------


class Outcome:
    __slots__ = ("ok", "retry", "response", "error")

    def __init__(self, ok: bool, retry: bool, response: int | None, error: str | None) -> None:
        self.ok = ok
        self.retry = retry
        self.response = response
        self.error = error


class Notifier:
    """Sends the deliveries of one collector; `runtime` is the collector (its writer
    connection and config)."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self.tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.failed = 0

    async def notify(
        self, alert_id: int, event: str, payload: dict[str, Any], targets: list[dict[str, str]]
    ) -> None:
        """Log the notification, write its deliveries and start sending them."""
        log.warning("%s", message(payload))
        if not targets:
            return
        ids = await self.runtime.writer.run(add_deliveries, alert_id, event, payload, targets)
        body = orjson.dumps(payload)
        for delivery_id, target in zip(ids, targets, strict=True):
            self._start(delivery_id, 0, body, target)

    async def resume(self) -> None:
        """Deliveries a stop left pending are sent again."""
        for delivery_id, attempts, body, target in await self.runtime.writer.run(
            pending_deliveries
        ):
            self._start(delivery_id, attempts, body.encode(), orjson.loads(target))

    def _start(self, delivery_id: int, attempts: int, body: bytes, target: dict[str, str]) -> None:
        task = asyncio.get_running_loop().create_task(
            self._deliver(delivery_id, attempts, body, target)
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        """Unsent deliveries stay pending (resumed at the next start)."""
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _deliver(
        self, delivery_id: int, attempts: int, body: bytes, target: dict[str, str]
    ) -> None:
        most = max(1, self.config.alert_delivery_attempts)
        channel, shown = channel_of(target)
        attempt = attempts
        while True:
            attempt += 1
            outcome = await self._send_once(body, target)
            last = outcome.ok or not outcome.retry or attempt >= most
            status = "delivered" if outcome.ok else ("failed" if last else "pending")
            await self.runtime.writer.run(
                record_attempt, delivery_id, status, outcome.response, outcome.error
            )
            if last:
                break
            await asyncio.sleep(self.config.alert_retry_base_s * 2 ** (attempt - 1))
        if outcome.ok:
            self.sent += 1
            log.info("alert delivery %d to %s %s: delivered", delivery_id, channel, shown)
        else:
            self.failed += 1
            log.warning(
                "alert delivery %d to %s %s failed after %d attempt(s): %s",
                delivery_id,
                channel,
                shown,
                attempt,
                outcome.error,
            )

    async def _send_once(self, body: bytes, target: dict[str, str]) -> Outcome:
        if "email" in target:
            return await asyncio.to_thread(self._send_email, body, target["email"])
        if "slack" in target:
            payload = orjson.loads(body)
            url = target["slack"]
            data = orjson.dumps({"text": message(payload)})
            headers = {"Content-Type": "application/json"}
        else:
            url = target["webhook"]
            data = body
            headers = {
                "Content-Type": "application/json",
                "X-Linkedge-Event": str(orjson.loads(body)["event"]),
            }
            if "secret" in target:
                headers[SIGNATURE_HEADER] = sign(target["secret"], data, int(time.time()))
        try:
            answer = await fetch(
                url,
                "POST",
                headers=headers,
                body=data,
                timeout_s=WEBHOOK_TIMEOUT_S,
                allow_private=self.config.allow_private_fetch,
            )
        except FetchError as exc:
            return Outcome(False, exc.kind not in ("refused", "protocol"), None, exc.message)
        if 200 <= answer.status < 300:
            return Outcome(True, False, answer.status, None)
        retry = answer.status >= 500 or answer.status in RETRY_STATUSES
        return Outcome(False, retry, answer.status, f"HTTP {answer.status}")

    def _send_email(self, body: bytes, address: str) -> Outcome:
        config = self.config
        if not config.smtp_host:
            return Outcome(False, False, None, "no SMTP server: set smtp_host (docs/alerts.md)")
        payload = orjson.loads(body)
        msg = EmailMessage()
        msg["Subject"] = message(payload)
        msg["From"] = config.smtp_from
        msg["To"] = address
        msg.set_content(
            message(payload) + "\n\n" + orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode()
        )
        try:
            with smtplib.SMTP(config.smtp_host, config.smtp_port, timeout=SMTP_TIMEOUT_S) as smtp:
                if config.smtp_starttls:
                    smtp.starttls()
                if config.smtp_user:
                    smtp.login(config.smtp_user, config.smtp_password or "")
                smtp.send_message(msg)
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused) as exc:
            return Outcome(False, False, None, f"SMTP refused: {exc}")
        except (smtplib.SMTPException, OSError) as exc:
            return Outcome(False, True, None, f"SMTP: {exc}")
        return Outcome(True, False, None, None)
