"""Command line: ``ham demo`` (also ``python -m ham demo``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ham", description="ham: Hopfield networks and Dense Associative Memories in JAX."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser(
        "demo",
        help="store sklearn digits in a two-layer associative memory, retrieve corrupted ones with diffrax",
        description="Store digits (sklearn load_digits, embedded) in a visible + hidden-softmax HAM, "
        "corrupt some (noise, masking), relax them with diffrax, print how many were retrieved "
        "and the energy trace, and save a figure.",
    )
    d.add_argument("--num-patterns", type=int, default=100, help="digits stored (default 100)")
    d.add_argument("--num-queries", type=int, default=16, help="corrupted queries (default 16)")
    d.add_argument("--beta", type=float, default=None,
                   help="inverse temperature of the softmax layer (default 8 for identity, 2 for sigmoid)")
    d.add_argument("--noise", type=float, default=0.3, help="std of the Gaussian noise on half the queries")
    d.add_argument("--visible", choices=["identity", "sigmoid"], default="identity", help="visible Lagrangian")
    d.add_argument("--similarity", choices=["euclidean", "dot"], default="euclidean",
                   help="hidden bias: 'euclidean' (−½‖ξ‖², softmax of distances) or 'dot' (no bias, Ramsauer et al.)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default="ham_demo.png", help="figure path (a .json with the numbers goes beside it)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run

        if args.beta is not None and args.beta <= 0:
            parser.error("--beta must be > 0")
        res = run(args.num_patterns, args.num_queries, args.beta, args.noise, args.visible, args.seed,
                  args.similarity, args.out)
        return 0 if res["converged"] == args.num_queries else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
