"""Command line: `solvergen generate SPEC.py [...]` and `solvergen check SPEC.py`."""
from __future__ import annotations

import argparse
import sys

from .errors import SpecError
from .generate import DEFAULT_OUT_DIR, generate
from .progress import progress_for
from .template import DEFAULT_TIME_LIMIT, DEFAULT_WORK


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _add_search_options(parser) -> None:
    parser.add_argument("--budget", type=positive_number, default=DEFAULT_WORK, metavar="WORK",
                        help="template search work budget, in units of one 1000x1000 elimination "
                             f"(default: {DEFAULT_WORK:g}); the output is deterministic for a given budget")
    parser.add_argument("--time-limit", type=positive_number, default=DEFAULT_TIME_LIMIT, metavar="SECONDS",
                        help=f"wall-clock safety limit of the template search (default: {DEFAULT_TIME_LIMIT:g})")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")


def _run(spec: str, debug: bool, action) -> bool:
    """Run action(); report a bad spec or an internal error in one line. True on success."""
    try:
        action()
        return True
    except SpecError as exc:
        print(f"error: {spec}: {exc}", file=sys.stderr, flush=True)
    except Exception as exc:  # noqa: BLE001 - a bug in solvergen, reported in one line
        if debug:
            raise
        print(f"internal error: {spec}: {type(exc).__name__}: {exc} "
              "(rerun with --debug for the traceback)", file=sys.stderr, flush=True)
    return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="solvergen",
        description="Compile polynomial problems into batched, differentiable PyTorch solvers.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="compile spec files into Python modules")
    gen.add_argument("specs", nargs="+", metavar="SPEC.py", help="spec files defining `problem`")
    gen.add_argument("--out", default=DEFAULT_OUT_DIR, metavar="DIR",
                     help=f"output directory (default: {DEFAULT_OUT_DIR}/)")
    gen.add_argument("--standalone", action="store_true",
                     help="also write a copy of the runtime into DIR and import it: the generated "
                          "files then need only torch")
    _add_search_options(gen)

    check = commands.add_parser("check", help="generate if needed, then measure the solver on random instances")
    check.add_argument("spec", metavar="SPEC.py", help="spec file defining `problem`")
    check.add_argument("--n", type=int, default=2000, help="number of random instances (default: 2000)")
    check.add_argument("--plot", metavar="FILE.png", help="write the histogram of log10 errors")
    check.add_argument("--out", default=DEFAULT_OUT_DIR, metavar="DIR",
                       help=f"where the generated module is (default: {DEFAULT_OUT_DIR}/)")
    check.add_argument("--seed", type=int, default=0, help="seed of the random instances (default: 0)")
    check.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                       help="dtype of the instances (default: float64)")
    _add_search_options(check)
    args = parser.parse_args(argv)

    try:
        if args.command == "check":
            from .check import run_check

            ok = _run(args.spec, args.debug, lambda: print(run_check(args).describe(), flush=True))
            return 0 if ok else 1
        failed = 0
        for spec in args.specs:
            def action(spec=spec):
                progress = progress_for(spec, args.quiet)
                try:
                    result = generate(spec, args.out, standalone=args.standalone, budget=args.budget,
                                      time_limit=args.time_limit, progress=progress)
                finally:
                    progress.close()
                print(result.summary(), flush=True)
            failed += not _run(spec, args.debug, action)
        return 1 if failed else 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
