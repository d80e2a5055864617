"""Every setting's default and the choices of the settings that take one of a few words.

This module imports nothing of the project, so the settings table, the store URL parser and
the modules that use a default all read it without importing one another.
"""

from __future__ import annotations

from typing import Final

# -- where things live --------------------------------------------------------------------------
DEFAULT_STORE_URL: Final = "sqlite:///./lightning-otlp.db"
# A forwarder's outbox when its URL names none (``agl+http://HOST:PORT?outbox=path.db``).
DEFAULT_OUTBOX: Final = "./lightning-otlp-outbox.db"

# -- request limits -----------------------------------------------------------------------------
DEFAULT_MAX_REQUEST_BYTES: Final = 64 * 1024 * 1024
# Sized for a 512 MiB container: request bytes in memory at once, leaving room for the
# interpreter, SQLite's cache and the decoded form of the request being stored.
DEFAULT_MAX_REQUEST_MEMORY: Final = 128 * 1024 * 1024
DEFAULT_MAX_IN_FLIGHT: Final = 64
# Concurrent calls on one connection; each may hold a message of up to max_request_bytes.
DEFAULT_MAX_CONCURRENT_STREAMS: Final = 16

# -- the LightningStore API -------------------------------------------------------------------
# JSON values a request body may hold, counted before parsing as the characters that open one
# (``[``, ``{``, ``,``, those inside strings included): parsing holds the interpreter, so this
# bounds how long one body can keep the receiver from answering anything else (about 0.4 s).
DEFAULT_MAX_JSON_VALUES: Final = 500_000
# Rollouts per enqueue, dequeue ``limit``, ids per list: what one call may ask of the store.
DEFAULT_MAX_API_BATCH: Final = 10_000
# The longest ``waits/rollouts`` timeout; a longer or missing one waits this long.
DEFAULT_MAX_WAIT: Final = 60.0

# -- HTTP connections ---------------------------------------------------------------------------
# Seconds a request's whole body may take to arrive, once its headers have.
DEFAULT_BODY_TIMEOUT: Final = 60.0
# Seconds for a request's line and headers (and a new connection's first byte) to arrive.
DEFAULT_HEADER_TIMEOUT: Final = 10.0
# Seconds a connection with no request in progress stays open (HTTP keep-alive, gRPC idle).
DEFAULT_IDLE_TIMEOUT: Final = 30.0
# HTTP connections at once; the common limit is 1,024 file descriptors for everything.
DEFAULT_MAX_CONNECTIONS: Final = 512

# -- routing ------------------------------------------------------------------------------------
# What happens to spans that name no rollout: a rollout per trace, or a rejection.
FALLBACKS: Final[tuple[str, ...]] = ("trace", "reject")
DEFAULT_AFFINITY_WINDOW: Final = 600.0
DEFAULT_MAX_TRACES: Final = 200_000

# How a store issues span sequence ids where the client gave none: ``start-time`` (the span's
# start in microseconds, made unique within the attempt) or ``counter`` (1, 2, 3... per attempt
# in arrival order, as agentlightning's own stores do).
SEQUENCE_IDS: Final[tuple[str, ...]] = ("start-time", "counter")

# -- forwarding ---------------------------------------------------------------------------------
# Seconds a model call whose messages come as log records waits for them. The OTel SDKs export
# logs every second and spans every five, so either may reach the receiver first.
DEFAULT_LOG_WAIT: Final = 3.0
DEFAULT_BATCH_SPANS: Final = 1000
DEFAULT_BATCH_BYTES: Final = 4 << 20
DEFAULT_MAX_BACKOFF: Final = 5.0
# A server outage of a few minutes at a busy receiver's rate, and at most 1 GiB of disk.
DEFAULT_MAX_OUTBOX_SPANS: Final = 1_000_000
DEFAULT_MAX_OUTBOX_BYTES: Final = 1 << 30

# -- SQLite -------------------------------------------------------------------------------------
# SQLite's ``synchronous`` pragma values a store URL may name (``?synchronous=normal``).
SYNCHRONOUS: Final[tuple[str, ...]] = ("OFF", "NORMAL", "FULL", "EXTRA")
