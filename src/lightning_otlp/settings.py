"""Settings for ``serve`` and the read commands, parsed once into typed values.

Precedence: defaults, then a config file, then environment variables, then flags. Every source
goes through the one coercion table below (``SPECS``): a flag, an environment variable and a
config-file entry for the same setting accept and refuse the same values with the same words.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final, NamedTuple

from .defaults import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LOG_WAIT,
    DEFAULT_MAX_API_BATCH,
    DEFAULT_MAX_CONCURRENT_STREAMS,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_JSON_VALUES,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_REQUEST_MEMORY,
    DEFAULT_MAX_WAIT,
    DEFAULT_STORE_URL,
    FALLBACKS,
    SEQUENCE_IDS,
)
from .parsers import flag, names, not_negative, number, one_of, path, positive, text, whole
from .store.url import parse_store_url

ENV_PREFIX: Final = "LIGHTNING_OTLP_"
CONFIG_ENV: Final = ENV_PREFIX + "CONFIG"
# ``--health off`` runs no health/metrics server.
HEALTH_OFF: Final = "off"
LOG_LEVELS: Final = ("debug", "info", "warning", "error")


class Address(NamedTuple):
    """A listening address; ``str()`` gives ``HOST:PORT`` back (``[::1]:4317`` for IPv6)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not host or int(port) > 65535:
            raise ValueError(f"address {text!r} must look like HOST:PORT")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# -- the coercion table: one parser per kind of value, for flags, environment and file ----------


def _address(raw: Any) -> Address:
    if isinstance(raw, Address):
        return raw
    return Address.parse(text(raw))


def _address_or_off(raw: Any) -> Address | None:
    if raw is None or raw == HEALTH_OFF:
        return None
    return _address(raw)


def _store_url(raw: Any) -> str:
    value = text(raw)
    parse_store_url(value)  # checks the URL's form and its options
    return value


@dataclass(frozen=True, slots=True)
class Spec:
    """How one setting is read from any source, and how its flag is shown."""

    parse: Callable[[Any], Any]
    help: str
    metavar: str | None = None  # None: a switch (a flag with no value)
    repeatable: bool = False  # a flag given once per value


def _spec(default: Any, spec: Spec) -> Any:
    return field(default=default, metadata={"spec": spec})


@dataclass(frozen=True)
class Settings:
    """Every setting of ``serve``; values given as text (or TOML values) are parsed on creation."""

    grpc: Address = _spec(
        Address("127.0.0.1", 4317), Spec(_address, "OTLP/gRPC address", "HOST:PORT")
    )
    http: Address = _spec(
        Address("127.0.0.1", 4318),
        Spec(_address, "OTLP/HTTP address (also the LightningStore API's)", "HOST:PORT"),
    )
    store: str = _spec(DEFAULT_STORE_URL, Spec(_store_url, "store URL", "URL"))
    rollout_keys: tuple[str, ...] = _spec(
        (),
        Spec(
            names,
            "attribute whose value names a rollout, e.g. session.id (repeatable)",
            "ATTR",
            repeatable=True,
        ),
    )
    fallback: str = _spec(
        "trace", Spec(one_of(FALLBACKS), "spans with no rollout: trace or reject", "POLICY")
    )
    max_request_bytes: int = _spec(
        DEFAULT_MAX_REQUEST_BYTES,
        Spec(positive(whole), "request size limit after decompression", "BYTES"),
    )
    max_in_flight: int = _spec(
        DEFAULT_MAX_IN_FLIGHT,
        Spec(
            positive(whole),
            "queued requests before 503, counted apart for OTLP and for the LightningStore API",
            "N",
        ),
    )
    max_request_memory: int = _spec(
        DEFAULT_MAX_REQUEST_MEMORY,
        Spec(
            positive(whole),
            "request bytes held in memory at once (bodies, decompressed bodies) before new"
            " requests get 503",
            "BYTES",
        ),
    )
    max_json_values: int = _spec(
        DEFAULT_MAX_JSON_VALUES,
        Spec(
            positive(whole),
            "LightningStore API: JSON values in one request body (counted as '[', '{' and ','"
            " before parsing) before it gets 413",
            "N",
        ),
    )
    max_api_batch: int = _spec(
        DEFAULT_MAX_API_BATCH,
        Spec(
            positive(whole),
            "LightningStore API: rollouts per enqueue, dequeue limit, and ids per list in one"
            " request; more gets 400",
            "N",
        ),
    )
    max_wait: float = _spec(
        DEFAULT_MAX_WAIT,
        Spec(
            positive(number),
            "LightningStore API: the longest waits/rollouts timeout; a longer, missing or NaN"
            " one waits this long and answers the rollouts finished so far",
            "SECONDS",
        ),
    )
    header_timeout: float = _spec(
        DEFAULT_HEADER_TIMEOUT,
        Spec(
            positive(number),
            "HTTP: seconds for a request's line and headers to arrive, then the connection closes",
            "SECONDS",
        ),
    )
    body_timeout: float = _spec(
        DEFAULT_BODY_TIMEOUT,
        Spec(
            positive(number),
            "HTTP: seconds for a request's whole body to arrive (408)",
            "SECONDS",
        ),
    )
    idle_timeout: float = _spec(
        DEFAULT_IDLE_TIMEOUT,
        Spec(
            positive(number),
            "seconds an idle connection stays open (HTTP keep-alive, gRPC connection idle)",
            "SECONDS",
        ),
    )
    max_connections: int = _spec(
        DEFAULT_MAX_CONNECTIONS,
        Spec(positive(whole), "HTTP connections at once; more get 503 and are closed", "N"),
    )
    max_grpc_streams: int = _spec(
        DEFAULT_MAX_CONCURRENT_STREAMS,
        Spec(positive(whole), "gRPC calls at once on one connection", "N"),
    )
    log_level: str = _spec("info", Spec(one_of(LOG_LEVELS), "log level", "LEVEL"))
    health: Address | None = _spec(
        Address("127.0.0.1", 13133),
        Spec(_address_or_off, "health, readiness and /metrics address, or 'off'", "HOST:PORT"),
    )
    auth_token_file: str | None = _spec(
        None,
        Spec(path, "require 'authorization: Bearer <token>', one accepted token a line", "FILE"),
    )
    tls_cert: str | None = _spec(
        None, Spec(path, "PEM certificate: TLS on both transports", "FILE")
    )
    tls_key: str | None = _spec(None, Spec(path, "PEM private key of --tls-cert", "FILE"))
    tls_client_ca: str | None = _spec(
        None, Spec(path, "PEM CA: require client certificates (mutual TLS)", "FILE")
    )
    shutdown_timeout: float = _spec(
        10.0,
        Spec(
            positive(number),
            "on SIGTERM, how long in-flight requests may take to finish",
            "SECONDS",
        ),
    )
    affinity_window: float = _spec(
        600.0,
        Spec(
            not_negative(number),
            "how long spans that reached a per-trace rollout may still move to the rollout"
            " their trace is bound to",
            "SECONDS",
        ),
    )
    forward_log_wait: float = _spec(
        DEFAULT_LOG_WAIT,
        Spec(
            not_negative(number),
            "forwarding: how long a model call whose messages come as GenAI log records waits"
            " for them before it is sent (0: never waits)",
            "SECONDS",
        ),
    )
    finalize_on_root: bool = _spec(
        False,
        Spec(flag, "mark a per-trace rollout succeeded/failed by its root span's status"),
    )
    dashboard: str | None = _spec(
        None,
        Spec(
            path,
            "serve the Agent Lightning dashboard on the OTLP/HTTP port: its directory, or"
            " 'auto' for the installed agentlightning package's",
            "DIR",
        ),
    )
    watchdog_interval: float = _spec(
        10.0,
        Spec(
            not_negative(number),
            "least time between scans for timed-out and unresponsive attempts",
            "SECONDS",
        ),
    )
    translate: bool = _spec(
        True,
        Spec(
            flag,
            "read model calls of the GenAI conventions (OTel, OpenLLMetry, OpenInference, Vercel,"
            " LiteLLM, pydantic-ai, OpenLIT) in Agent Lightning's shape; false reads every span"
            " exactly as received",
            "true|false",
        ),
    )
    sequence_ids: str = _spec(
        "start-time",
        Spec(
            one_of(SEQUENCE_IDS),
            "span sequence ids where the client gives none: start-time (the span's start in"
            " microseconds, so rewards keep their calls when spans arrive late) or counter"
            " (1, 2, 3... per attempt in arrival order, as agl store issues them)",
            "MODE",
        ),
    )
    prepare_reads: bool = _spec(
        True,
        Spec(
            flag,
            "build each span's record in the background, so reading a rollout's spans through the"
            " LightningStore API is fast (takes about as much disk again as the spans)",
            "true|false",
        ),
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            raw = getattr(self, f.name)
            try:
                value = f.metadata["spec"].parse(raw)
            except ValueError as exc:
                raise ValueError(f"{f.name}: {exc}") from None
            if value is not raw:
                object.__setattr__(self, f.name, value)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key too")

    def with_overrides(self, values: Mapping[str, Any]) -> Settings:
        """A copy with ``values`` (already parsed, or raw: they are parsed again) set."""
        return replace(self, **values)


SPECS: Final[dict[str, Spec]] = {f.name: f.metadata["spec"] for f in fields(Settings)}
DEFAULTS: Final = Settings()
# Environment variable -> setting name; the configuration reference is generated from SPECS.
ENV_VARS: Final[dict[str, str]] = {ENV_PREFIX + name.upper(): name for name in SPECS}


def flag_of(name: str) -> str:
    """The ``serve`` flag of setting ``name``; a repeatable one is named for one value."""
    flag = "--" + name.replace("_", "-")
    return flag.removesuffix("s") if SPECS[name].repeatable else flag


def coerce(name: str, raw: Any) -> Any:
    """``raw`` (text from a flag or the environment, or a TOML value) as setting ``name``."""
    return SPECS[name].parse(raw)


def from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for var, name in ENV_VARS.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        try:
            out[name] = coerce(name, raw)
        except ValueError as exc:
            raise ValueError(f"{var}: {exc}") from None
    return out
