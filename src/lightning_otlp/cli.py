"""``lightning-otlp``: serve the receiver, and read what it stored."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from . import __version__
from .configfile import check_config, load
from .defaults import DEFAULT_STORE_URL
from .errors import ReceiverError, StoreDamaged
from .settings import CONFIG_ENV, DEFAULTS, ENV_PREFIX, SPECS, Settings, flag_of
from .store.base import StoreOptions
from .wiring import open_store

# Read commands open a store without ever creating one.
READ_ONLY = StoreOptions(create=False)

EXAMPLES = {
    "serve": "example: lightning-otlp serve --store sqlite:///runs.db --rollout-key session.id",
    "check-config": "example: lightning-otlp check-config lightning-otlp.toml",
    "rollouts": "example: lightning-otlp rollouts --store sqlite:///runs.db",
    "spans": "example: lightning-otlp spans --store sqlite:///runs.db --rollout ro-0123456789ab",
    "status": "example: lightning-otlp status --store 'agl+http://127.0.0.1:4747?outbox=out.db'",
    "check-store": "example: lightning-otlp check-store --store sqlite:///runs.db --full",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-otlp",
        description="OTLP receiver that stores spans as Agent Lightning rollouts and attempts.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the OTLP receiver", epilog=EXAMPLES["serve"] + _env_note()
    )
    _add_setting_flags(serve)
    _add_config_flag(serve)

    check = commands.add_parser(
        "check-config",
        help="report every mistake in a config file, with its line",
        epilog=EXAMPLES["check-config"],
    )
    check.add_argument("file", metavar="FILE", help="the TOML file `serve --config` would read")

    for name, what in (("rollouts", "AttemptedRollout"), ("spans", "Span")):
        sub = commands.add_parser(
            name, help=f"print stored records, one {what} JSON per line", epilog=EXAMPLES[name]
        )
        _add_store_flags(sub)
        sub.add_argument(
            "--salvage",
            action="store_true",
            help="skip what a damaged store cannot give back (each skip on stderr)",
        )
        if name == "spans":
            sub.add_argument("--rollout", metavar="ID", help="only this rollout")
            sub.add_argument("--attempt", metavar="ID", help="only this attempt")
            sub.add_argument(
                "--raw",
                action="store_true",
                help="every span exactly as received (model calls not in Agent Lightning's shape)",
            )
        else:
            form = sub.add_mutually_exclusive_group()
            form.add_argument(
                "--table",
                action="store_true",
                default=None,
                help="a table for people (the default on a terminal)",
            )
            form.add_argument(
                "--json",
                action="store_false",
                dest="table",
                help="JSON Lines, one AttemptedRollout each (the default into a pipe or file)",
            )

    status = commands.add_parser(
        "status",
        help="show a store's state: outbox depth, oldest pending age, forwarded counts, errors",
        epilog=EXAMPLES["status"],
    )
    _add_store_flags(status)
    status.add_argument("--json", action="store_true", help="one JSON object instead of text")

    check_store = commands.add_parser(
        "check-store",
        help="check every page of a store's file; exit 1 and list the damage if there is any",
        epilog=EXAMPLES["check-store"],
    )
    _add_store_flags(check_store)
    check_store.add_argument(
        "--full", action="store_true", help="also check every index against its table (slower)"
    )
    return parser


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, straight from the settings table (values are parsed there)."""
    for name, spec in SPECS.items():
        flag = flag_of(name)
        default = getattr(DEFAULTS, name)
        shown = "" if default in (None, (), False) else f" ({default})"
        if spec.metavar is None:
            parser.add_argument(flag, action="store_true", default=None, help=spec.help)
        elif spec.repeatable:
            parser.add_argument(
                flag, metavar=spec.metavar, action="append", dest=name, help=spec.help
            )
        else:
            parser.add_argument(flag, metavar=spec.metavar, help=spec.help + shown)


def _add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML file with any of these settings (env {CONFIG_ENV}); env and flags win",
    )


def _add_store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", metavar="URL", help=f"store URL ({DEFAULT_STORE_URL})")
    _add_config_flag(parser)


def _settings(args: argparse.Namespace) -> Settings:
    flags = {name: getattr(args, name) for name in SPECS if hasattr(args, name)}
    return load(flags, config_file=args.config)


def _env_note() -> str:
    return f"\nevery flag can also be set as an environment variable, {ENV_PREFIX}<FLAG>"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "check-config":
            return _check_config(args.file)
        if args.command == "status":
            return _status(args)
        if args.command == "check-store":
            return _check_store(args)
        return _read(args)
    except (ValueError, ReceiverError, OSError, StoreDamaged) as exc:
        print(f"lightning-otlp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _serve(args: argparse.Namespace) -> int:
    from .server import run

    settings = _settings(args)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="lightning-otlp: %(levelname)s %(name)s: %(message)s",
    )
    run(settings)
    return 0


def _check_config(path: str) -> int:
    _, problems = check_config(path)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{path}: {len(problems)} mistake(s)", file=sys.stderr)
        return 1
    print(f"{path}: ok")
    return 0


def _read(args: argparse.Namespace) -> int:
    settings = _settings(args)
    translate = settings.translate and not getattr(args, "raw", False)
    # Reading an outbox must not start delivering it; reading a store must not create one.
    store = open_store(
        settings.store,
        StoreOptions(create=False, salvage=args.salvage, translate=translate),
        forward=False,
    )
    store.open()
    try:
        if args.command == "rollouts":
            table = sys.stdout.isatty() if args.table is None else args.table
            if table:
                _print_table(store.summaries())
            else:
                _print_lines(store.rollouts())
        else:
            _print_lines(store.spans(args.rollout, args.attempt))
    finally:
        store.close()
    return 0


def _check_store(args: argparse.Namespace) -> int:
    store = open_store(_settings(args).store, READ_ONLY, forward=False)
    store.open()
    try:
        problems = store.check(full=args.full)
    finally:
        store.close()
    if not problems:
        print(f"{store.url}: ok")
        return 0
    for problem in problems:
        print(problem, file=sys.stderr)
    print(
        f"{store.url}: damaged ({len(problems)} problem(s)). Stop the receiver, keep a copy of"
        " the file, and read what is left with `spans --salvage` / `rollouts --salvage`"
        " (see the README, Damaged store)",
        file=sys.stderr,
    )
    return 1


def _status(args: argparse.Namespace) -> int:
    from .forward.status import store_status
    from .store.url import parse_store_url

    url = _settings(args).store
    if parse_store_url(url).forwards:
        report = store_status(url)
    else:  # any other store reports itself, read only
        store = open_store(url, READ_ONLY, forward=False)
        store.open()
        try:
            report = store.status()
        finally:
            store.close()
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key.replace('_', ' ')}: {'-' if value is None else value}")
    return 0


def _print_table(rows: list[dict[str, Any]]) -> None:
    header = ("ROLLOUT", "STATUS", "ATTEMPTS", "SPANS", "DURATION", "REWARD", "MODE", "ORIGIN")
    lines = [header]
    for row in rows:
        duration = row["duration"]
        reward = row["reward"]
        lines.append(
            (
                row["rollout_id"],
                row["status"],
                str(row["attempts"]),
                str(row["spans"]),
                "-" if duration is None else f"{duration:.2f}s",
                "-" if reward is None else f"{reward:g}",
                row["mode"] or "-",
                row["origin"],
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    numeric = {2, 3, 4, 5}
    try:
        for line in lines:
            cells = [
                cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
                for i, cell in enumerate(line)
            ]
            sys.stdout.write("  ".join(cells).rstrip() + "\n")
        sys.stdout.write(f"{len(rows)} rollout(s)\n")
        sys.stdout.flush()
    except BrokenPipeError:
        pass


def _print_lines(records: Iterable[dict[str, Any]]) -> None:
    write = sys.stdout.write
    try:
        for record in records:
            write(json.dumps(record, separators=(",", ":")) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        pass


if __name__ == "__main__":
    sys.exit(main())
