"""Run every benchmark under bench/ (or those named on the command line) and print figures.

Each ``bench/bench_*.py`` module has a ``main() -> None`` that prints its own report.
``--charts DIR`` also draws each benchmark's charts there (PNG, with matplotlib).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--charts", type=Path, help="draw charts into this directory")
    args = parser.parse_args(argv)
    if args.charts:
        os.environ["BENCH_CHARTS"] = str(args.charts.resolve())
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent))
    names = args.names or sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    for name in names:
        module = importlib.import_module(f"bench_{name}")
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        module.main()
        print(f"({name}: {time.perf_counter() - started:.0f} s, {os.getloadavg()[0]:.2f} load)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
