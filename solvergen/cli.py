"""Command line: `solvergen generate SPEC.py [SPEC.py ...] [--out DIR]`."""
from __future__ import annotations

import argparse
import sys

from .errors import SpecError
from .generate import DEFAULT_OUT_DIR, generate


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
    gen.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    args = parser.parse_args(argv)

    failed = 0
    for spec in args.specs:
        try:
            print(generate(spec, args.out, standalone=args.standalone).summary(), flush=True)
        except SpecError as exc:
            print(f"error: {spec}: {exc}", file=sys.stderr, flush=True)
            failed += 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # noqa: BLE001 - a bug in solvergen, reported in one line
            if args.debug:
                raise
            print(f"internal error: {spec}: {type(exc).__name__}: {exc} "
                  "(rerun with --debug for the traceback)", file=sys.stderr, flush=True)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
