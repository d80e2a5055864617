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

from .api.routes import DEFAULT_MAX_API_BATCH, DEFAULT_MAX_JSON_VALUES, DEFAULT_MAX_WAIT
from .batch import SEQUENCE_IDS
from .forward.outbox import DEFAULT_LOG_WAIT
from .receiver.budget import DEFAULT_MAX_REQUEST_MEMORY
from .receiver.decode import DEFAULT_MAX_REQUEST_BYTES
from .receiver.pipeline import DEFAULT_MAX_IN_FLIGHT
from .receiver.route import FALLBACKS
from .receiver.transport.grpc import DEFAULT_MAX_CONCURRENT_STREAMS
from .receiver.transport.http import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
)
from .store import DEFAULT_STORE_URL

ENV_PREFIX: Final = "LIGHTNING_OTLP_"
CONFIG_ENV: Final = ENV_PREFIX + "CONFIG"
# ``--health off`` runs no health/metrics server.
HEALTH_OFF: Final = "off"
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


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


def _text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"must be a string, not {raw!r}")
    return raw


def _address(raw: Any) -> Address:
    if isinstance(raw, Address):
        return raw
    return Address.parse(_text(raw))


def _address_or_off(raw: Any) -> Address | None:
    if raw is None or raw == HEALTH_OFF:
        return None
    return _address(raw)


def _whole(raw: Any) -> int:
    if isinstance(raw, str):
        try:
            return int(raw.strip())
        except ValueError:
            raise ValueError(f"must be a whole number, not {raw!r}") from None
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ValueError(f"must be a whole number, not {raw!r}")
    return raw


def _number(raw: Any) -> float:
    if isinstance(raw, str):
        try:
            return float(raw.strip())
        except ValueError:
            raise ValueError(f"must be a number of seconds, not {raw!r}") from None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise ValueError(f"must be a number, not {raw!r}")
    return float(raw)


def _positive(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def check(raw: Any) -> Any:
        value = parse(raw)
        if value <= 0:
            raise ValueError(f"must be positive, not {raw!r}")
        return value

    return check


def _not_negative(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def check(raw: Any) -> Any:
        value = parse(raw)
        if value < 0:
            raise ValueError(f"must not be negative, not {raw!r}")
        return value

    return check


def _flag(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
        return raw.strip().lower() in _TRUE
    raise ValueError(f"must be true or false, not {raw!r}")


def _names(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):  # environment: comma-separated
        return tuple(k.strip() for k in raw.split(",") if k.strip())
    if isinstance(raw, (list, tuple)) and all(isinstance(v, str) for v in raw):
        return tuple(raw)
    raise ValueError(f'must be a list of strings, like ["session.id"], not {raw!r}')


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(raw: Any) -> str:
        value = _text(raw)
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {raw!r}")
        return value

    return check


def _path(raw: Any) -> str | None:
    if raw is None or raw == "":
        return None
    return _text(raw)


def _store_url(raw: Any) -> str:
    from .store import open_store

    value = _text(raw)
    open_store(value)  # makes, does not open: checks the URL's form
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
            _names,
            "attribute whose value names a rollout, e.g. session.id (repeatable)",
            "ATTR",
            repeatable=True,
        ),
    )
    fallback: str = _spec(
        "trace", Spec(_one_of(FALLBACKS), "spans with no rollout: trace or reject", "POLICY")
    )
    max_request_bytes: int = _spec(
        DEFAULT_MAX_REQUEST_BYTES,
        Spec(_positive(_whole), "request size limit after decompression", "BYTES"),
    )
    max_in_flight: int = _spec(
        DEFAULT_MAX_IN_FLIGHT,
        Spec(
            _positive(_whole),
            "queued requests before 503, counted apart for OTLP and for the LightningStore API",
            "N",
        ),
    )
    max_request_memory: int = _spec(
        DEFAULT_MAX_REQUEST_MEMORY,
        Spec(
            _positive(_whole),
            "request bytes held in memory at once (bodies, decompressed bodies) before new"
            " requests get 503",
            "BYTES",
        ),
    )
    max_json_values: int = _spec(
        DEFAULT_MAX_JSON_VALUES,
        Spec(
            _positive(_whole),
            "LightningStore API: JSON values in one request body (counted as '[', '{' and ','"
            " before parsing) before it gets 413",
            "N",
        ),
    )
    max_api_batch: int = _spec(
        DEFAULT_MAX_API_BATCH,
        Spec(
            _positive(_whole),
            "LightningStore API: rollouts per enqueue, dequeue limit, and ids per list in one"
            " request; more gets 400",
            "N",
        ),
    )
    max_wait: float = _spec(
        DEFAULT_MAX_WAIT,
        Spec(
            _positive(_number),
            "LightningStore API: the longest waits/rollouts timeout; a longer, missing or NaN"
            " one waits this long and answers the rollouts finished so far",
            "SECONDS",
        ),
    )
    header_timeout: float = _spec(
        DEFAULT_HEADER_TIMEOUT,
        Spec(
            _positive(_number),
            "HTTP: seconds for a request's line and headers to arrive, then the connection closes",
            "SECONDS",
        ),
    )
    body_timeout: float = _spec(
        DEFAULT_BODY_TIMEOUT,
        Spec(
            _positive(_number),
            "HTTP: seconds for a request's whole body to arrive (408)",
            "SECONDS",
        ),
    )
    idle_timeout: float = _spec(
        DEFAULT_IDLE_TIMEOUT,
        Spec(
            _positive(_number),
            "seconds an idle connection stays open (HTTP keep-alive, gRPC connection idle)",
            "SECONDS",
        ),
    )
    max_connections: int = _spec(
        DEFAULT_MAX_CONNECTIONS,
        Spec(_positive(_whole), "HTTP connections at once; more get 503 and are closed", "N"),
    )
    max_grpc_streams: int = _spec(
        DEFAULT_MAX_CONCURRENT_STREAMS,
        Spec(_positive(_whole), "gRPC calls at once on one connection", "N"),
    )
    log_level: str = _spec("info", Spec(_one_of(LOG_LEVELS), "log level", "LEVEL"))
    health: Address | None = _spec(
        Address("127.0.0.1", 13133),
        Spec(_address_or_off, "health, readiness and /metrics address, or 'off'", "HOST:PORT"),
    )
    auth_token_file: str | None = _spec(
        None,
        Spec(_path, "require 'authorization: Bearer <token>', one accepted token a line", "FILE"),
    )
    tls_cert: str | None = _spec(
        None, Spec(_path, "PEM certificate: TLS on both transports", "FILE")
    )
    tls_key: str | None = _spec(None, Spec(_path, "PEM private key of --tls-cert", "FILE"))
    tls_client_ca: str | None = _spec(
        None, Spec(_path, "PEM CA: require client certificates (mutual TLS)", "FILE")
    )
    shutdown_timeout: float = _spec(
        10.0,
        Spec(
            _positive(_number),
            "on SIGTERM, how long in-flight requests may take to finish",
            "SECONDS",
        ),
    )
    affinity_window: float = _spec(
        600.0,
        Spec(
            _not_negative(_number),
            "how long spans that reached a per-trace rollout may still move to the rollout"
            " their trace is bound to",
            "SECONDS",
        ),
    )
    forward_log_wait: float = _spec(
        DEFAULT_LOG_WAIT,
        Spec(
            _not_negative(_number),
            "forwarding: how long a model call whose messages come as GenAI log records waits"
            " for them before it is sent (0: never waits)",
            "SECONDS",
        ),
    )
    finalize_on_root: bool = _spec(
        False,
        Spec(_flag, "mark a per-trace rollout succeeded/failed by its root span's status"),
    )
    dashboard: str | None = _spec(
        None,
        Spec(
            _path,
            "serve the Agent Lightning dashboard on the OTLP/HTTP port: its directory, or"
            " 'auto' for the installed agentlightning package's",
            "DIR",
        ),
    )
    watchdog_interval: float = _spec(
        10.0,
        Spec(
            _not_negative(_number),
            "least time between scans for timed-out and unresponsive attempts",
            "SECONDS",
        ),
    )
    translate: bool = _spec(
        True,
        Spec(
            _flag,
            "read model calls of the GenAI conventions (OTel, OpenLLMetry, OpenInference, Vercel,"
            " LiteLLM, pydantic-ai, OpenLIT) in Agent Lightning's shape; false reads every span"
            " exactly as received",
            "true|false",
        ),
    )
    sequence_ids: str = _spec(
        "start-time",
        Spec(
            _one_of(SEQUENCE_IDS),
            "span sequence ids where the client gives none: start-time (the span's start in"
            " microseconds, so rewards keep their calls when spans arrive late) or counter"
            " (1, 2, 3... per attempt in arrival order, as agl store issues them)",
            "MODE",
        ),
    )
    prepare_reads: bool = _spec(
        True,
        Spec(
            _flag,
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


def load(
    flags: Mapping[str, Any],
    *,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Defaults < config file (``config_file`` or ``$LIGHTNING_OTLP_CONFIG``) < env < flags."""
    from .configfile import read_config

    env = os.environ if environ is None else environ
    path = config_file or env.get(CONFIG_ENV) or None
    from_file = read_config(path) if path else {}
    parsed = {}
    for name, raw in flags.items():
        if raw is None:
            continue
        try:
            parsed[name] = coerce(name, raw)
        except ValueError as exc:
            raise ValueError(f"--{name.replace('_', '-')}: {exc}") from None
    return DEFAULTS.with_overrides(from_file).with_overrides(from_env(env)).with_overrides(parsed)
