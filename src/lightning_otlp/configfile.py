"""The ``serve`` config file (TOML): read it, and report every mistake in it with its line.

The file holds the same settings as the flags, at top level, spelled like the flags or like the
environment variables without their prefix (``max-request-bytes`` or ``max_request_bytes``)::

    grpc = "0.0.0.0:4317"
    store = "sqlite:////data/runs.db"
    rollout_keys = ["session.id"]
"""

from __future__ import annotations

import difflib
import os
import re
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .receiver.auth import load_tokens
from .settings import CONFIG_ENV, DEFAULTS, SPECS, Settings, coerce, from_env

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

_FILES: Final = frozenset({"auth_token_file", "tls_cert", "tls_key", "tls_client_ca"})
_KEY_LINE: Final = re.compile(r"""^\s*(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_-]+))\s*=""")
_TABLE_LINE: Final = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]")
_TOML_AT: Final = re.compile(r"\(at line (\d+), column (\d+)\)")


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake in a config file, where it is and what is wrong."""

    path: str
    line: int | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(ValueError):
    """A config file with one or more mistakes; ``str()`` lists them all, one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def read_config(path: str | Path) -> dict[str, Any]:
    """The settings a config file sets, ready for ``Settings.with_overrides``."""
    values, problems = check_config(path)
    if problems:
        raise ConfigError(problems)
    return values


def check_config(path: str | Path) -> tuple[dict[str, Any], list[Problem]]:
    """Every mistake in the file (syntax, unknown keys, types, values, missing files)."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [Problem(name, None, None, f"cannot read config file: {exc}")]
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_AT.search(str(exc))
        message = _TOML_AT.sub("", str(exc)).strip()
        line = int(found.group(1)) if found else None
        return {}, [Problem(name, line, None, f"not valid TOML: {message}")]

    lines = _key_lines(text)
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    spelled: dict[str, str] = {}
    for raw_key, raw in document.items():
        key = raw_key.replace("-", "_")
        line = lines.get(raw_key)
        if key not in SPECS:
            close = difflib.get_close_matches(key, sorted(SPECS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            what = "table" if isinstance(raw, dict) else "setting"
            problems.append(Problem(name, line, raw_key, f"unknown {what}{hint}"))
            continue
        if key in values or key in spelled:
            problems.append(
                Problem(
                    name, line, raw_key, f"set twice (also as {key!r} or its hyphenated spelling)"
                )
            )
            continue
        spelled[key] = raw_key
        try:
            values[key] = coerce(key, raw)
            _check_file(key, values[key])
        except ValueError as exc:
            values.pop(key, None)
            problems.append(Problem(name, line, raw_key, str(exc)))

    if not problems and values.get("tls_cert") and values.get("tls_key"):
        try:
            load_tls(values["tls_cert"], values["tls_key"])
        except ValueError as exc:
            problems.append(
                Problem(name, lines.get(spelled["tls_key"]), spelled["tls_key"], str(exc))
            )
    if not problems:
        try:
            Settings(**values)
        except ValueError as exc:
            first = next((k for k in spelled if k in str(exc)), None)
            key_name = spelled[first] if first else None
            problems.append(
                Problem(name, lines.get(key_name) if key_name else None, key_name, str(exc))
            )
    problems.sort(key=lambda p: p.line or 0)
    return values, problems


def load_tls(cert: str, key: str) -> None:
    """Check that a certificate and key load and belong together, as the servers will need."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"certificate and key do not load together: {exc}") from None


def _check_file(key: str, value: Any) -> None:
    """Files named in a config file must exist and load, as ``serve`` will need them."""
    if key not in _FILES or value is None:
        return
    if not Path(value).is_file():
        raise ValueError(f"no such file: {value}")
    if key == "auth_token_file":
        load_tokens(value)
    elif key == "tls_client_ca":
        try:
            ssl.create_default_context(cafile=value)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"not a PEM CA certificate: {exc}") from None


def _key_lines(text: str) -> dict[str, int]:
    """Line of each top-level key (the file's settings are all top-level)."""
    lines: dict[str, int] = {}
    in_table = False
    for number, line in enumerate(text.splitlines(), start=1):
        table = _TABLE_LINE.match(line)
        if table:
            lines.setdefault(table.group(1).split(".")[0].strip("\"'"), number)
            in_table = True
            continue
        found = _KEY_LINE.match(line)
        if found and not in_table:
            key = found.group(1) or found.group(2) or found.group(3)
            lines.setdefault(key, number)
    return lines


def load(
    flags: Mapping[str, Any],
    *,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Defaults < config file (``config_file`` or ``$LIGHTNING_OTLP_CONFIG``) < env < flags."""
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
