"""Settings for ``serve``: defaults, then a config file, then environment variables, then flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final

from .receiver.decode import DEFAULT_MAX_REQUEST_BYTES
from .receiver.pipeline import DEFAULT_MAX_IN_FLIGHT
from .receiver.route import FALLBACKS
from .store import DEFAULT_STORE_URL

ENV_PREFIX: Final = "LIGHTNING_OTLP_"
# ``--health off`` runs no health/metrics server.
HEALTH_OFF: Final = "off"


@dataclass(frozen=True)
class Settings:
    grpc: str = "127.0.0.1:4317"
    http: str = "127.0.0.1:4318"
    store: str = DEFAULT_STORE_URL
    rollout_keys: tuple[str, ...] = field(default_factory=tuple)
    fallback: str = "trace"
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    log_level: str = "info"
    health: str = "127.0.0.1:13133"
    auth_token_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    shutdown_timeout: float = 10.0
    affinity_window: float = 600.0
    finalize_on_root: bool = False

    def __post_init__(self) -> None:
        if self.fallback not in FALLBACKS:
            raise ValueError(
                f"fallback must be one of {', '.join(FALLBACKS)}, not {self.fallback!r}"
            )
        for name in ("grpc", "http"):
            split_address(getattr(self, name))
        if self.health != HEALTH_OFF:
            split_address(self.health)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key too")
        if self.affinity_window < 0:
            raise ValueError(f"affinity_window must not be negative, not {self.affinity_window!r}")
        if self.shutdown_timeout <= 0:
            raise ValueError(f"shutdown_timeout must be positive, not {self.shutdown_timeout!r}")

    def with_overrides(self, values: Mapping[str, Any]) -> Settings:
        return replace(self, **{k: v for k, v in values.items() if v is not None})


# Environment variable -> setting name; the README's configuration table lists the same.
ENV_VARS: Final[dict[str, str]] = {ENV_PREFIX + f.name.upper(): f.name for f in fields(Settings)}


def from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for var, name in ENV_VARS.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        out[name] = parse_value(name, raw)
    return out


def parse_value(name: str, raw: str) -> Any:
    if name == "rollout_keys":
        return tuple(k.strip() for k in raw.split(",") if k.strip())
    if name in ("max_request_bytes", "max_in_flight"):
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{name} must be a whole number, not {raw!r}") from None
    if name == "finalize_on_root":
        lowered = raw.strip().lower()
        if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(f"{name} must be true or false, not {raw!r}")
        return lowered in ("1", "true", "yes", "on")
    if name == "affinity_window":
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{name} must be a number of seconds, not {raw!r}") from None
    if name == "shutdown_timeout":
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{name} must be a number of seconds, not {raw!r}") from None
    return raw


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:4317`` for IPv6) to its parts."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"address {address!r} must look like HOST:PORT")
    return host.strip("[]"), int(port)
