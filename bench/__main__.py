"""`make bench`: run every bench/bench_*.py (or the ones named: `python -m bench runtime`).

Each benchmark prints its figures as ratios against a baseline measured in the same run,
since absolute times on shared machines mean little.
"""

from __future__ import annotations

import importlib
import pkgutil
import signal
import sys
import time
import traceback
from pathlib import Path


def main() -> int:
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so each benchmark's `finally`
    # stops the Postgres and services it started instead of leaving them running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    wanted = set(sys.argv[1:])
    names = sorted(
        info.name
        for info in pkgutil.iter_modules([str(Path(__file__).parent)])
        if info.name.startswith("bench_")
    )
    failed = 0
    for name in names:
        short = name.removeprefix("bench_")
        if wanted and short not in wanted:
            continue
        print(f"== {short}", flush=True)
        start = time.perf_counter()
        try:
            importlib.import_module(f"bench.{name}").main()
        except Exception:
            traceback.print_exc()
            failed += 1
        print(f"   ({time.perf_counter() - start:.1f} s)\n", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
