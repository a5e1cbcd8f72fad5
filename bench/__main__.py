"""``python -m bench {all|engine|...} [--quick] [--reps N] [--out FILE] [--only PEERS]``."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from . import BENCHMARKS, BY_NAME, load
from .harness import DEFAULT_PG, PG_ENV, Options, log, write_results

DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description="chainflow benchmarks (see bench/README.md)")
    p.add_argument("which", nargs="+", metavar="BENCHMARK",
                   help="'all' or any of: " + ", ".join(b.name for b in BENCHMARKS))
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes and 1 repetition (smoke test; figures are meaningless)")
    p.add_argument("--reps", type=int, default=None, help="repetitions per figure (default 3, --quick: 1)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results file (default {DEFAULT_OUT})")
    p.add_argument("--only", default=None,
                   help="comma-separated peers to run, e.g. floor,dbos (default: all)")
    p.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite,postgres")
    p.add_argument("--pg", default=os.environ.get(PG_ENV, DEFAULT_PG),
                   help=f"admin URL used to create/drop a fresh database per repetition (env {PG_ENV}; "
                        f"default {DEFAULT_PG})")
    p.add_argument("--tmpdir", default=None, help="where fresh SQLite files go (default: the system temp dir)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per repetition")
    p.add_argument("--profile", metavar="DIR", type=Path, default=None,
                   help="run each repetition under pyinstrument and write an HTML profile per repetition to "
                        "DIR (figures are then inflated by the profiler; use with --out elsewhere)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    names = [b.name for b in BENCHMARKS] if "all" in args.which else args.which
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        log(f"unknown benchmark(s): {', '.join(unknown)}; known: all, {', '.join(BY_NAME)}")
        return 2
    reps = args.reps if args.reps is not None else (1 if args.quick else 3)
    if reps < 1:
        log("--reps must be >= 1")
        return 2
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    bad = [b for b in backends if b not in ("sqlite", "postgres")]
    if bad:
        log(f"unknown backend(s): {', '.join(bad)}")
        return 2
    opts = Options(
        quick=args.quick, reps=reps,
        only={p.strip() for p in args.only.split(",") if p.strip()} if args.only else None,
        backends=backends, pg_admin_url=args.pg, tmpdir=args.tmpdir, timeout=args.timeout,
        profile_dir=str(args.profile.resolve()) if args.profile else None,
    )
    if opts.profile_dir:
        os.makedirs(opts.profile_dir, exist_ok=True)
    command = "python -m bench " + " ".join(shlex.quote(a) for a in argv)
    sections: dict[str, str] = {}
    started = time.monotonic()
    for name in names:
        bench = BY_NAME[name]
        module, reason = load(bench)
        if module is None or reason is not None:
            log(f"[{name}] not available: {reason}")
            sections[name] = f"## {name}: {bench.summary}\n\nNot available: {reason}.\n"
            continue
        log(f"[{name}] {module.TITLE}")
        sections[name] = module.run(opts, command)
    write_results(args.out, sections, [b.name for b in BENCHMARKS], replace_all="all" in args.which)
    log(f"wrote {args.out} in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
