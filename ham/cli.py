"""Command line: ``ham demo`` (also ``python -m ham demo``).

Exit status: 0 on success; 2 for invalid arguments (one ``ham demo: error: ...`` line on
stderr, argparse's style, no traceback); 1 when the run itself fails (one
``ham demo: error: ...`` line), including a demo whose queries did not all converge.
"""

from __future__ import annotations

import argparse
import math
import sys

NUM_DIGITS = 1797  # scikit-learn's load_digits


class UsageError(ValueError):
    """Arguments that are each valid but do not fit together (exit status 2 from the console)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with errors reported as one line (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _finite_float(low: float, inclusive: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = (value >= low if inclusive else value > low) and math.isfinite(value)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be a finite number {'>=' if inclusive else '>'} {low:g}, got {text}")
        return value

    return parse


def _out_path(text: str) -> str:
    from pathlib import Path

    if not text or not Path(text).name or Path(text).name in (".", ".."):
        raise argparse.ArgumentTypeError(f"must be a file path such as ham_demo.png, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ham", description="ham: Hopfield networks and Dense Associative Memories in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo}")
    d = sub.add_parser(
        "demo",
        help="store sklearn digits in a two-layer associative memory, retrieve corrupted ones with diffrax",
        description="Store digits (sklearn load_digits, embedded) in a visible + hidden-softmax HAM, "
        "corrupt some (noise, masking), relax them with diffrax, print how many were retrieved "
        "and the energy trace, and save a figure.",
    )
    d.add_argument("--num-patterns", type=_int_at_least(1), default=100,
                   help=f"digits stored, 1..{NUM_DIGITS} (default 100)")
    d.add_argument("--num-queries", type=_int_at_least(1), default=16,
                   help="corrupted queries, 1..num-patterns (default 16)")
    d.add_argument("--beta", type=_finite_float(0.0, inclusive=False), default=None,
                   help="inverse temperature of the softmax layer, > 0 (default 8 for identity, 2 for sigmoid)")
    d.add_argument("--noise", type=_finite_float(0.0, inclusive=True), default=0.3,
                   help="std of the Gaussian noise on half the queries, >= 0")
    d.add_argument("--visible", choices=["identity", "sigmoid"], default="identity", help="visible Lagrangian")
    d.add_argument("--similarity", choices=["euclidean", "dot"], default="euclidean",
                   help="hidden bias: 'euclidean' (−½‖ξ‖², softmax of distances) or 'dot' (no bias, Ramsauer et al.)")
    d.add_argument("--seed", type=_int_at_least(0), default=0, help="PRNG seed, >= 0")
    d.add_argument("--out", type=_out_path, default="ham_demo.png",
                   help="figure path (a .json with the numbers goes beside it)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit status.

    Invalid single arguments exit through argparse (``SystemExit(2)``, one line on
    stderr); arguments that do not fit together raise [`UsageError`][] (a ValueError);
    [`console`][] turns both, and any failure of the run, into one line and a status.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        if not args.num_queries <= args.num_patterns <= NUM_DIGITS:
            raise UsageError(
                f"need 1 <= num_queries <= num_patterns <= {NUM_DIGITS}, got --num-queries {args.num_queries} "
                f"and --num-patterns {args.num_patterns}"
            )
        from .demo import run

        res = run(args.num_patterns, args.num_queries, args.beta, args.noise, args.visible, args.seed,
                  args.similarity, args.out)
        if res["converged"] != args.num_queries:
            print(f"ham demo: error: only {res['converged']} of {args.num_queries} queries converged",
                  file=sys.stderr)
            return 1
        return 0
    return 2


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # a runtime check inside jit: the message is the line naming the error class
    for line in lines:
        if "RuntimeError:" in line and "Traceback" not in line:
            return line.split("RuntimeError:", 1)[1].strip()
    return lines[0] if lines else type(exc).__name__


def console(argv: list[str] | None = None) -> int:
    """The ``ham`` console script: [`main`][] with every failure reported as one line on
    stderr and an exit status (2: invalid arguments, 1: the run failed), no traceback."""
    argv = sys.argv[1:] if argv is None else argv
    prog = "ham demo" if argv[:1] == ["demo"] else "ham"
    try:
        return main(argv)
    except UsageError as e:
        print(f"{prog}: error: {e} (see {prog} --help)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 — the console reports, the library raises
        print(f"{prog}: error: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(console())
