"""The delivery loop: pending outbox spans to the server, exactly once, in outbox order.

Exactly once: a batch whose delivery is in doubt (a crash, a lost response) is sent again; the
server keeps one span per (rollout_id, attempt_id, span_id), so the repeat adds nothing, and the
outbox forgets a batch only in the transaction that counts it delivered. The local -> server id
mapping is committed before it is used, and a rollout creation in doubt is found again by the
``link`` it wrote into the server rollout's metadata, so a crash never makes a second server
rollout for the same spans. A batch the server refuses for good is sent again in halves down to
the one span it refuses, which is set aside; a server that forgot rollouts (a restart of an
in-memory server) gets them created again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final

from ..defaults import DEFAULT_BATCH_BYTES, DEFAULT_BATCH_SPANS, DEFAULT_MAX_BACKOFF
from ..errors import StoreUnavailable
from .client import LightningClient, ServerError
from .encode import Encoder
from .mapping import Target
from .outbox import Outbox
from .queue import Row

log = logging.getLogger("lightning_otlp.forward")

MIN_BACKOFF: Final = 0.05
MIRROR_INTERVAL: Final = 0.5
_STARTING: Final = frozenset({"queuing", "preparing", "requeuing"})
# 4xx answers that mean "later", not "never".
_RETRYABLE_4XX: Final = frozenset({408, 409, 425, 429})


def settled(status: Any) -> str | None:
    """A server status as the receiver would call it: it reports a starting one as running."""
    if status is None:
        return None
    return "running" if status in _STARTING else str(status)


class Delivery:
    """Delivery state and steps; runs on one thread only (``run``, or a test calling ``step``).

    Args:
        outbox: where pending spans and the id mapping live.
        client: the server.
        batch_spans: most spans per ``/v1/traces`` request.
        max_backoff: cap, in seconds, of the wait between failed deliveries.
    """

    def __init__(
        self,
        outbox: Outbox,
        client: LightningClient,
        *,
        batch_spans: int = DEFAULT_BATCH_SPANS,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
    ) -> None:
        self.outbox = outbox
        self.client = client
        self.batch_spans = batch_spans
        self.max_backoff = max_backoff
        self.targets: dict[tuple[str, str], Target] = {}
        # The server gets the view the records show.
        self.encoder = Encoder(
            outbox.resource, outbox.translated if outbox.store.translate else None
        )
        self.next_mirror = 0.0
        self.sender = ThreadPoolExecutor(1, thread_name_prefix="lightning-otlp-send")
        self.in_flight: tuple[Future[None], list[Row]] | None = None
        self.after = 0  # highest rowid sent or in flight
        # Spans per batch: halved while the server refuses a batch for good, to find the span
        # it refuses; grows back with each delivery.
        self.limit = batch_spans

    def run(self, stop: threading.Event, wake: threading.Event) -> None:
        """Deliver until ``stop``; ``wake`` cuts an idle wait short (new spans). Never raises."""
        backoff = MIN_BACKOFF
        try:
            while not stop.is_set():
                try:
                    moved = self.step()
                except (ConnectionError, ServerError) as exc:
                    self.outbox.record_error(str(exc))
                    log.warning(
                        "forwarding to %s failed: %s (retry in %.2fs)",
                        self.outbox.server_url,
                        exc,
                        backoff,
                    )
                    stop.wait(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
                    continue
                except StoreUnavailable:
                    if stop.is_set():
                        break
                    raise
                backoff = MIN_BACKOFF
                if not moved:
                    wake.wait(MIRROR_INTERVAL)
                    wake.clear()
        except Exception:
            log.exception("forwarder stopped by an unexpected error; pending spans stay queued")
            self.outbox.record_error(
                "forwarder stopped by an unexpected error; see the receiver log"
            )
        finally:
            self.close()

    def close(self) -> None:
        """Stop without waiting: a request left in flight is sent again next time."""
        self.sender.shutdown(wait=False, cancel_futures=True)

    # One step: settle the batch in flight and send the next (True), or, with nothing pending,
    # mirror statuses (False). The next batch is read and encoded, and the previous one deleted,
    # while a request is with the server; only one request is ever in flight, so batches reach
    # the server in outbox order, and every other call to the server is made with none in
    # flight (a failure then leaves the delivered counts final).
    def step(self) -> bool:
        """One delivery step; True while there is more to do at once."""
        # Past the batch in flight; with none, from the start (rowids restart once the outbox
        # empties, so an old position would skip new spans).
        in_flight = self.in_flight
        rows, after = self.outbox.pending_batch(
            self.after if in_flight is not None else 0,
            self.limit,
            DEFAULT_BATCH_BYTES,
            {r.rowid for r in in_flight[1]} if in_flight is not None and self.outbox.held() else (),
        )
        locals_ = sorted({(r.rollout_id, r.attempt_id) for r in rows})
        if self.in_flight is not None and any(t not in self.targets for t in locals_):
            if not self._settle(None):
                return True
        body = None
        if rows:
            for local in locals_:
                if local not in self.targets:
                    self.targets[local] = self._resolve(*local)
            body = self.encoder.encode(rows, self.targets)
        if self.in_flight is not None:
            if not self._settle((body, rows, after) if body is not None else None):
                return True
        elif body is not None:
            self._mirror_now_and_then()
            self._send(body, rows, after)
        if self.in_flight is None:
            if self.outbox.pending() != (0, 0):
                # Keep the limit honest even if something else removed spans from the outbox.
                self.outbox.recount()
            self._mirror()
            return False
        return True

    def _settle(self, following: tuple[bytes, list[Row], int] | None) -> bool:
        """Wait for the batch in flight, send ``following``, then record the first delivered.

        False when the server turned out to have forgotten rollouts (their mapping is dropped
        and the spans go again, to re-created rollouts, from the next step), or refused the
        batch for good (it goes again in halves, down to the one span set aside).
        """
        assert self.in_flight is not None
        future, sent = self.in_flight
        self.in_flight = None
        try:
            future.result()
        except ServerError as exc:
            self.after = 0  # resend from the oldest pending span
            if 400 <= exc.status < 500 and exc.status not in _RETRYABLE_4XX:
                self._refused(sent, str(exc))
                return False
            if exc.status >= 500:
                if self._forget_lost(
                    {self.targets[(r.rollout_id, r.attempt_id)].server_rollout_id for r in sent}
                ):
                    return False
            raise
        except ConnectionError:
            self.after = 0  # resend from the oldest pending span
            raise
        self._mirror_now_and_then()
        if following is not None:
            self._send(*following)
        self.limit = min(self.batch_spans, self.limit * 2)
        self.outbox.delivered(sent)
        return True

    def _mirror_now_and_then(self) -> None:
        if time.monotonic() >= self.next_mirror:
            self._mirror()

    def _send(self, body: bytes, rows: list[Row], after: int) -> None:
        self.in_flight = (self.sender.submit(self.client.export, body), rows)
        self.after = after

    def _refused(self, sent: list[Row], error: str) -> None:
        """The server refused a batch for good: narrow it down to one span, and set that aside."""
        if len(sent) > 1:
            self.limit = max(1, len(sent) // 2)
            log.warning(
                "the server refused %d spans (%s); sending smaller batches to find the span",
                len(sent),
                error,
            )
            return
        self.limit = self.batch_spans
        (row,) = sent
        log.error(
            "the server refused span rowid %d for good (%s); kept as rejected", row.rowid, error
        )
        self.outbox.reject(row, error)

    # -- ids: local -> server --------------------------------------------------------------

    def _resolve(self, rollout_id: str, attempt_id: str) -> Target:
        found = self.outbox.ids.target(rollout_id, attempt_id)
        if found is not None:
            return found
        server_rollout = self._resolve_rollout(rollout_id)
        return Target(server_rollout, self._resolve_attempt(rollout_id, attempt_id, server_rollout))

    def _resolve_rollout(self, rollout_id: str) -> str:
        mapping = self.outbox.ids.rollout(rollout_id)
        if mapping is not None and mapping.server_rollout_id is not None:
            return mapping.server_rollout_id
        if mapping is not None:
            # A creation request was in doubt when the last process stopped: look for it.
            adopted = self._find_linked(mapping.link, mapping.requested)
            if adopted is not None:
                return self._adopt(rollout_id, adopted, created=True)
        existing = self.client.rollouts([rollout_id]).get(rollout_id)
        if existing is not None:
            # Usually a runner made it and passed its ids to the agent: forward under them.
            return self._adopt(rollout_id, existing, created=False)
        return self._create_rollout(rollout_id)

    def _create_rollout(self, rollout_id: str) -> str:
        local = self.outbox.ids.local_rollout(rollout_id)
        link = uuid.uuid4().hex
        metadata = local.metadata if local.metadata is not None else {}
        if not isinstance(metadata, dict):
            metadata = {"value": metadata}
        ours = dict(metadata.get("lightning_otlp") or {})
        ours.update({"rollout_id": rollout_id, "link": link})
        metadata["lightning_otlp"] = ours
        self.outbox.ids.rollout_requested(rollout_id, link)
        created = self.client.create_rollout(
            {"input": local.input, "mode": local.mode, "metadata": metadata}
        )
        return self._adopt(rollout_id, created, created=True)

    def _adopt(self, rollout_id: str, record: dict[str, Any], *, created: bool) -> str:
        server_rollout = str(record["rollout_id"])
        attempt = record.get("attempt") or {}
        self.outbox.ids.rollout_mapped(
            rollout_id,
            server_rollout,
            spare_attempt_id=attempt.get("attempt_id") if created else None,
            status=settled(record.get("status")),
            created=created,
        )
        return server_rollout

    def _find_linked(self, link: str, since: float) -> dict[str, Any] | None:
        """The server rollout whose metadata carries ``link``, newest first, back to ``since``."""
        offset, page = 0, 200
        while True:
            items = self.client.recent_rollouts(offset, page)
            for item in items:
                ours = (item.get("metadata") or {}).get("lightning_otlp") or {}
                if ours.get("link") == link:
                    return item
            if len(items) < page or (items and items[-1]["start_time"] < since - 60):
                return None
            offset += page

    def _resolve_attempt(self, rollout_id: str, attempt_id: str, server_rollout: str) -> str:
        mapping = self.outbox.ids.attempt(rollout_id, attempt_id)
        if mapping is not None and mapping.server_attempt_id is not None:
            return mapping.server_attempt_id
        in_doubt = mapping.known_attempts if mapping is not None else None
        rollout = self.outbox.ids.rollout(rollout_id)
        spare = rollout.spare_attempt_id if rollout is not None else None
        if in_doubt is None and spare is not None:
            # The first attempt of a rollout created here goes to the first local attempt seen.
            return self._bind(rollout_id, attempt_id, spare, "preparing", spare_used=True)
        attempts = self.client.attempts(server_rollout)
        if in_doubt is not None and len(attempts) > in_doubt:
            # Our creation request went through before the last process stopped.
            made = sorted(attempts, key=lambda a: a["sequence_id"])[in_doubt]
            return self._bind(rollout_id, attempt_id, made["attempt_id"], made["status"])
        same = next((a for a in attempts if a["attempt_id"] == attempt_id), None)
        if same is not None and server_rollout == rollout_id:
            return self._bind(rollout_id, attempt_id, attempt_id, same["status"])
        self.outbox.ids.attempt_requested(rollout_id, attempt_id, len(attempts))
        made = self.client.create_attempt(server_rollout)["attempt"]
        return self._bind(rollout_id, attempt_id, made["attempt_id"], made["status"])

    def _bind(
        self,
        rollout_id: str,
        attempt_id: str,
        server_attempt: str,
        status: str | None,
        *,
        spare_used: bool = False,
    ) -> str:
        self.outbox.ids.attempt_mapped(
            rollout_id, attempt_id, str(server_attempt), settled(status), spare_used=spare_used
        )
        return str(server_attempt)

    def _forget_lost(self, server_rollouts: set[str]) -> bool:
        """After a 5xx: drop the mapping of server rollouts the server no longer knows."""
        known = self.client.rollouts(server_rollouts)
        lost = server_rollouts - known.keys()
        if not lost:
            return False
        self.outbox.ids.forget_server_rollouts(lost)
        self.targets = {k: v for k, v in self.targets.items() if v.server_rollout_id not in lost}
        self.encoder.forget(lost)
        log.warning("server forgot %d rollout(s); re-creating them", len(lost))
        return True

    # -- statuses: local changes mirrored with the server's update endpoints ---------------

    def _mirror(self) -> None:
        self.next_mirror = time.monotonic() + MIRROR_INTERVAL
        self.outbox.tend()
        statuses = self.outbox.statuses
        for attempt in statuses.attempts():
            _update(
                self.client.update_attempt,
                attempt.server_rollout_id,
                attempt.server_attempt_id,
                attempt.status,
            )
            statuses.attempt_mirrored(attempt)
        for rollout in statuses.rollouts():
            _update(self.client.update_rollout, rollout.server_rollout_id, rollout.status)
            statuses.rollout_mirrored(rollout)


def _update(call: Callable[..., None], *args: str) -> None:
    """One status update; one the server refuses for good is logged, not retried forever."""
    try:
        call(*args)
    except ServerError as exc:
        if exc.status >= 500:
            raise
        log.warning("server refused status update %s: %s", args, exc)
