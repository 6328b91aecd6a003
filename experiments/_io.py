"""Shared helpers for experiments: results folder, atomic JSON/CSV writes, resumable records."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def results_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder results go to (default ``experiments/results``), created if needed."""
    d = Path(path) if path is not None else RESULTS_DIR
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def atomic_open(path):
    """Open ``path`` for binary writing atomically: the data go to a temporary file in
    the same folder, renamed over ``path`` only when the block finishes without error,
    so an interrupted run leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def write_json(path, obj: Any) -> None:
    """Write JSON atomically: an interrupted run leaves the old file or the new, never half."""
    _atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=False, default=_default) + "\n").encode())


def _default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def read_json(path, default: Any = None) -> Any:
    path = Path(path)
    if not path.exists():
        return default
    with open(path) as f:
        return json.load(f)


def write_csv(path, rows: list[dict]) -> None:
    """Write a list of flat dicts as CSV, atomically."""
    import io

    if not rows:
        _atomic_write_bytes(Path(path), b"")
        return
    fields = list(rows[0].keys())
    for r in rows[1:]:
        for k in r:
            if k not in fields:
                fields.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()})
    _atomic_write_bytes(Path(path), buf.getvalue().encode())


def save_figure(fig, path) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    _atomic_write_bytes(Path(path), buf.getvalue())


class Checkpoint:
    """A resumable store of finished grid points: ``key -> result`` in one JSON file,
    rewritten atomically after every point, so an interrupted run resumes where it
    stopped and never recomputes a finished point (``fresh=True``: forget what is there)."""

    def __init__(self, path, config: dict | None = None, fresh: bool = False):
        self.path = Path(path)
        data = read_json(self.path, default=None)
        if data is not None and config is not None and data.get("config") != config:
            data = None  # a different configuration: start afresh
        self.config = config
        self.done: dict[str, Any] = {} if fresh else (data or {}).get("done", {})

    def __contains__(self, key: str) -> bool:
        return key in self.done

    def __getitem__(self, key: str):
        return self.done[key]

    def put(self, key: str, value: Any) -> None:
        self.done[key] = value
        write_json(self.path, {"config": self.config, "done": self.done})


def run_grid(
    keys: Sequence[str], compute: Callable[[str], Any], checkpoint: Checkpoint, desc: str, progress: bool = True
) -> dict[str, Any]:
    """Compute every grid point not yet in ``checkpoint`` (saved after each point, so an
    interrupted run resumes there), with a tqdm bar; returns ``key -> result`` for all ``keys``."""
    from tqdm import tqdm

    todo = [k for k in keys if k not in checkpoint]
    bar = tqdm(total=len(keys), initial=len(keys) - len(todo), desc=desc, disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    try:
        for k in todo:
            bar.set_postfix_str(k)
            checkpoint.put(k, compute(k))
            bar.update(1)
    finally:
        bar.close()
    return {k: checkpoint[k] for k in keys}


def key_fields(key: str) -> dict[str, str]:
    """The ``name=value`` fields of a grid key after its ``prefix:`` (if any):
    ``"ham:fold=0,lr=0.01"`` -> ``{"fold": "0", "lr": "0.01"}``."""
    return dict(p.split("=") for p in key.split(":")[-1].split(","))
