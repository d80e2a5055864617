"""``lightning-otlp`` and ``python -m lightning_otlp``: the CLI, or what to install for it."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; an SDK-only install (no ``[server]`` extra) gets one line saying what to add."""
    try:
        from .cli import main as cli_main
    except ModuleNotFoundError as exc:
        print(
            f"lightning-otlp: error: the receiver needs its server dependencies ({exc.name} is"
            " missing): pip install 'lightning-otlp[server]'",
            file=sys.stderr,
        )
        return 2
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
