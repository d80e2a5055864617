"""The ``serve`` config file (TOML): read it, and report every mistake in it with its line.

The file holds the same settings as the flags, at top level, spelled like the flags or like the
environment variables without their prefix (``max-request-bytes`` or ``max_request_bytes``)::

    grpc = "0.0.0.0:4317"
    store = "sqlite:////data/runs.db"
    rollout_keys = ["session.id"]
"""

from __future__ import annotations

import difflib
import re
import ssl
import sys
import types
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final, Union, get_args, get_origin, get_type_hints

from .receiver.auth import load_tokens
from .settings import HEALTH_OFF, Settings, split_address

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

# Values a setting may take, beyond its type; checked where the file names them.
CHOICES: Final[dict[str, tuple[str, ...]]] = {
    "log_level": ("debug", "info", "warning", "error"),
}
_ADDRESSES: Final = frozenset({"grpc", "http", "health"})
_FILES: Final = frozenset({"auth_token_file", "tls_cert", "tls_key", "tls_client_ca"})
_POSITIVE: Final = frozenset({"max_request_bytes", "max_in_flight", "shutdown_timeout"})
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
    hints = get_type_hints(Settings)
    known = {f.name for f in fields(Settings)}
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    for raw_key, raw in document.items():
        key = raw_key.replace("-", "_")
        line = lines.get(raw_key)

        def report(message: str, key: str | None = raw_key, line: int | None = line) -> None:
            problems.append(Problem(name, line, key, message))

        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            what = "table" if isinstance(raw, dict) else "setting"
            report(f"unknown {what}{hint}")
            continue
        if key in values:
            report(f"set twice (also as {key!r} or its hyphenated spelling)")
            continue
        try:
            values[key] = _coerce(key, raw, hints[key])
        except ValueError as exc:
            report(str(exc))

    for key, value in list(values.items()):
        spelled = next((k for k in document if k.replace("-", "_") == key), key)
        try:
            _check_value(key, value)
        except ValueError as exc:
            problems.append(Problem(name, lines.get(spelled), spelled, str(exc)))
            values.pop(key)

    if not problems and values.get("tls_cert") and values.get("tls_key"):
        try:
            load_tls(values["tls_cert"], values["tls_key"])
        except ValueError as exc:
            spelled = next(k for k in document if k.replace("-", "_") == "tls_key")
            problems.append(Problem(name, lines.get(spelled), spelled, str(exc)))
    if not problems:
        try:
            Settings().with_overrides(values)
        except ValueError as exc:
            first = next((k for k in document if k.replace("-", "_") in _cross_keys(exc)), None)
            problems.append(Problem(name, lines.get(first) if first else None, first, str(exc)))
    problems.sort(key=lambda p: p.line or 0)
    return values, problems


def load_tls(cert: str, key: str) -> None:
    """Check that a certificate and key load and belong together, as the servers will need."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"certificate and key do not load together: {exc}") from None


def _coerce(key: str, raw: Any, hint: Any) -> Any:
    """``raw`` as the type ``Settings.<key>`` declares, or ``ValueError`` saying what it needs."""
    optional = False
    if get_origin(hint) in (Union, types.UnionType):
        members = [a for a in get_args(hint) if a is not type(None)]
        optional = len(members) < len(get_args(hint))
        hint = members[0] if len(members) == 1 else hint
    if optional and raw == "":
        return None
    if get_origin(hint) is tuple:
        if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
            raise ValueError(f'must be a list of strings, like ["session.id"], not {raw!r}')
        return tuple(raw)
    if hint is bool:
        if not isinstance(raw, bool):
            raise ValueError(f"must be true or false, not {raw!r}")
        return raw
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError(f"must be a whole number, not {raw!r}")
        return raw
    if hint is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ValueError(f"must be a number, not {raw!r}")
        return float(raw)
    if hint is str:
        if not isinstance(raw, str):
            raise ValueError(f"must be a string, not {raw!r}")
        return raw
    raise ValueError(f"cannot be set from a config file (type {hint})")


def _check_value(key: str, value: Any) -> None:
    """Checks on one value alone, so that every bad one is reported, not only the first."""
    if key in CHOICES and value not in CHOICES[key]:
        raise ValueError(f"must be one of {', '.join(CHOICES[key])}, not {value!r}")
    if key in _ADDRESSES and not (key == "health" and value == HEALTH_OFF):
        split_address(value)
    if key in _POSITIVE and value <= 0:
        raise ValueError(f"must be positive, not {value!r}")
    if key == "store":
        from .store import open_store

        open_store(value)  # makes, does not open: checks the URL's form
    if key in _FILES and value is not None:
        if not Path(value).is_file():
            raise ValueError(f"no such file: {value}")
        if key == "auth_token_file":
            load_tokens(value)
        elif key == "tls_client_ca":
            try:
                ssl.create_default_context(cafile=value)
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(f"not a PEM CA certificate: {exc}") from None
    if key not in _FILES:
        Settings(**{key: value})  # the setting's own checks, e.g. fallback's choices


def _cross_keys(exc: ValueError) -> list[str]:
    """Setting names an error message mentions, to point at the first of them."""
    return [f.name for f in fields(Settings) if f.name in str(exc)]


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
