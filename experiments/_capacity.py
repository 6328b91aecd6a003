"""Shared scaffolding of the capacity studies: command line, resumable grid loop,
threshold crossings, capacity from an accuracy curve, log-log fits.

Results of a study ``<name>`` go to ``<results-dir>/<name><suffix>.{json,csv,png}`` with
``suffix`` = ``""`` for the full run, ``"_quick"`` for ``--quick`` and ``"_smoke"`` for
``--smoke``; the per-point checkpoint is ``<name><suffix>.checkpoint.json``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from ._io import Checkpoint, results_dir, run_grid  # noqa: F401  (run_grid: used by the studies as cap.run_grid)


def make_parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=description)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a small run (< 2 minutes on 2 CPU cores)")
    size.add_argument("--smoke", action="store_true", help="a tiny run used by the test suite (seconds)")
    p.add_argument("--results-dir", default=None,
                   help="folder for the JSON/CSV/PNG results (default: experiments/results)")
    p.add_argument("--seed", type=int, default=0, help="base PRNG seed (default 0)")
    p.add_argument("--fresh", action="store_true", help="ignore the checkpoint and recompute every grid point")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def mode_of(args) -> str:
    return "smoke" if args.smoke else "quick" if args.quick else "full"


def suffix_of(mode: str) -> str:
    return {"full": "", "quick": "_quick", "smoke": "_smoke"}[mode]


class Outputs:
    """Paths of a study's result files (the folder is created only when asked for)."""

    def __init__(self, name: str, mode: str, folder: str | None):
        self.name, self.mode = name, mode
        self._folder = folder

    def folder(self) -> Path:
        return results_dir(self._folder)

    def path(self, ext: str) -> Path:
        return self.folder() / f"{self.name}{suffix_of(self.mode)}.{ext}"

    def checkpoint(self, config: dict, fresh: bool = False) -> Checkpoint:
        return Checkpoint(self.path("checkpoint.json"), config=config, fresh=fresh)


def start(name: str, doc: str, grids: dict, argv, config_of: Callable[[dict], dict]) -> tuple:
    """Parse ``argv`` (the standard options of ``make_parser``), pick ``grid = grids[mode]``, and
    open the checkpoint under ``config = {"study", "mode", "seed", **config_of(grid)}``:
    returns ``(args, mode, grid, config, outputs, checkpoint)``."""
    args = make_parser(name, doc.split("\n\n")[0]).parse_args(argv)
    mode = mode_of(args)
    grid = grids[mode]
    config = {"study": name, "mode": mode, "seed": args.seed, **config_of(grid)}
    out = Outputs(name, mode, args.results_dir)
    return args, mode, grid, config, out, out.checkpoint(config, fresh=args.fresh)


def first_crossing(xs: Iterable[float], ys: Iterable[float], level: float, rising: bool = True) -> float | None:
    """The first x at which y reaches ``level`` (rising) or falls below it (not rising),
    linearly interpolated between the grid points that bracket it; None if it never does.
    If the first point already crosses, returns that x."""
    xs, ys = np.asarray(list(xs), float), np.asarray(list(ys), float)
    past = ys >= level if rising else ys < level
    idx = np.flatnonzero(past)
    if idx.size == 0:
        return None
    i = int(idx[0])
    if i == 0:
        return float(xs[0])
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    if y1 == y0:
        return float(x1)
    return float(x0 + (level - y0) * (x1 - x0) / (y1 - y0))


def capacity_from_accuracy(ks: Sequence[int], accuracy: Sequence[float], level: float = 0.9) -> int:
    """Largest K on the grid with accuracy >= ``level`` at that K and at every smaller K (0 if none)."""
    order = np.argsort(np.asarray(ks))
    cap = 0
    for i in order:
        if accuracy[i] >= level:
            cap = int(ks[i])
        else:
            break
    return cap


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log y against log x."""
    x, y = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    return float(np.polyfit(x, y, 1)[0])


def semilog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of ln y against x."""
    return float(np.polyfit(np.asarray(x, float), np.log(np.asarray(y, float)), 1)[0])


def finite_or_none(v):
    return None if v is None or not math.isfinite(v) else float(v)
