"""MkDocs hook: the configuration reference is generated from the settings table at build time.

``docs/configuration.md`` holds the marker below; every flag, environment variable and TOML key
comes from ``lightning_otlp.settings.SPECS``, so the page cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

from lightning_otlp.settings import CONFIG_ENV, DEFAULTS, ENV_PREFIX, SPECS, flag_of

MARKER = "<!-- settings-table -->"


def _default(value: Any) -> str:
    if value is None or value == ():
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def settings_table() -> str:
    """The reference table: one row per setting, in the order of the settings table."""
    rows = [
        "| flag | environment variable | TOML key | default | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, spec in SPECS.items():
        flag = flag_of(name) if spec.metavar is None else f"{flag_of(name)} {spec.metavar}"
        if spec.repeatable:
            key = f"`{name}` (list)"
            env = f"`{ENV_PREFIX}{name.upper()}` (comma-separated)"
        else:
            key = f"`{name}`"
            env = f"`{ENV_PREFIX}{name.upper()}`"
        meaning = spec.help.replace("|", "\\|")
        rows.append(
            f"| `{flag}` | {env} | {key} | {_default(getattr(DEFAULTS, name))} | {meaning} |"
        )
    rows.append("")
    rows.append(
        f"The config file itself: `--config FILE`, or `{CONFIG_ENV}`. Switches (flags without a"
        " value) take `true` / `false` in the environment and the file."
    )
    return "\n".join(rows)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Put the generated table where the page asks for it."""
    return markdown.replace(MARKER, settings_table()) if MARKER in markdown else markdown
