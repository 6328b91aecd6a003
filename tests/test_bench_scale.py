"""The scale-out benchmark (``experiments/bench_scale.py``): a ``--quick`` run into a
temporary results folder (1 and 8 virtual CPU devices, each in its own process) writes
the JSON fields the README quotes, with the pattern bytes split evenly over the devices."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from experiments import bench_scale

# one worker runs this module, so its module-scoped fixtures run once under `pytest -n 2`
pytestmark = pytest.mark.xdist_group("bench_scale")

FIELDS = {"K", "dim", "dtype", "devices", "qps", "bytes_per_device", "device_kind", "seconds", "batch",
          "bytes_total", "temp_bytes_per_device", "retrieval_cos_min", "rss_peak_bytes"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    returned = bench_scale.main(["--quick", "--results-dir", str(out), "--no-progress", "--profile-reps", "1"])
    return out, returned, json.loads((out / "bench_scale_quick.json").read_text())


def test_quick_run_writes_rows_for_every_configuration(quick):
    out, returned, data = quick
    assert returned["results"] == data["results"]
    rows = data["results"]
    assert rows and all(FIELDS <= set(r) for r in rows)
    grid = {(r["K"], r["dim"], r["dtype"], r["devices"]) for r in rows}
    assert grid == {(k, 64, t, n) for k in bench_scale.QUICK_KS for t in ("float32", "bfloat16") for n in (1, 8)}
    assert {p.name for p in out.iterdir()} == {"bench_scale_quick.json", "bench_scale_quick.png"}  # no leftovers
    for r in rows:
        assert r["qps"] > 0 and math.isclose(r["qps"], r["batch"] / r["seconds"])
        assert r["device_kind"] == data["device_kind"] and isinstance(r["device_kind"], str)
        assert r["retrieval_cos_min"] > 0.99  # every query retrieved its own pattern
        assert r["rss_peak_bytes"] < 4e9


def test_bytes_per_device_times_devices_is_the_whole_pattern_matrix(quick):
    _, _, data = quick
    for r in data["results"]:
        itemsize = np.dtype(r["dtype"]).itemsize if r["dtype"] != "bfloat16" else 2
        assert r["bytes_total"] == r["K"] * r["dim"] * itemsize
        assert r["bytes_per_device"] * r["devices"] == r["bytes_total"]
        assert r["num_shards"] == r["devices"]
    # scratch: the softmax runs over blocks of patterns (XLA's count for the eager call's
    # program): at most a block's scores and exponentials, the block's rows and their float32
    # copy (half-precision rows are converted a block at a time, never the whole local matrix), and
    # on one device with many blocks less than one (batch, K) float32 score matrix.
    from ham.memories import _sharded

    for r in data["results"]:
        itemsize = 2 if r["dtype"] == "bfloat16" else np.dtype(r["dtype"]).itemsize
        rows = _sharded._block_rows(r["K"] // r["devices"], r["batch"], r["dim"] * itemsize)
        block = 4 * r["batch"] * rows * 2 + (4 + itemsize) * rows * r["dim"]
        assert r["temp_bytes_per_device"] < block + 2**20, (r, rows)
        if r["K"] == max(bench_scale.QUICK_KS) and r["devices"] == 1:
            assert r["temp_bytes_per_device"] < 4 * r["batch"] * r["K"], r


def test_fit_and_largest_k_summaries(quick):
    _, _, data = quick
    assert math.isfinite(data["slope"]) and data["slope_fit"]["points"] == len(data["results"])
    assert {(f["dim"], f["dtype"], f["devices"]) for f in data["fits"]} == {
        (64, t, n) for t in ("float32", "bfloat16") for n in (1, 8)}
    assert data["largest_K_run"] == max(bench_scale.QUICK_KS)
    for f in data["largest_K"]:
        assert f["largest_K_fit"] > f["largest_K_run"]
        # the patterns and the program's scratch: at least the patterns, by XLA's count
        assert f["xla_bytes_per_pattern"] >= f["pattern_bytes_per_pattern"]
        assert f["measured_bytes_per_pattern"] is None or f["measured_bytes_per_pattern"] > 0
    assert bench_scale.markdown_table(data).count("\n") > len(bench_scale.QUICK_KS)


def test_profile_times_each_matrix_product_alone(quick):
    """The profiled points (K = 10⁵ in the quick run) time the retrieval, both products, and
    each product alone (scores, weighted sum), with CPU/wall; the comparison table shows them."""
    _, _, data = quick
    profiled = [r for r in data["results"] if "profile" in r]
    assert {(r["K"], r["devices"]) for r in profiled} == {(max(bench_scale.QUICK_KS), n) for n in (1, 8)}
    assert len(profiled) == 4  # float32 and bfloat16
    for r in profiled:
        p = r["profile"]
        for key in ("full_s", "matmul_s", "scores_s", "weighted_sum_s"):
            assert p[key] > 0, (key, p)
        for key in ("cpu_per_wall_full", "cpu_per_wall_matmul", "cpu_per_wall_scores", "cpu_per_wall_weighted_sum"):
            assert 0.1 < p[key] < (os.cpu_count() or 1) + 0.5, (key, p)  # about the number of busy cores
        assert p["exp_phase_s"] == max(p["full_s"] - p["matmul_s"], 0.0) and p["pairs"] == 1
    table = bench_scale.comparison_table(data)
    assert "weighted sum alone" in table
    for r in profiled:
        if r["devices"] == 1:  # the table's split is one device's
            p = r["profile"]
            assert (f"{p['scores_s']:.3g} ({p['cpu_per_wall_scores']:.2f}), "
                    f"{p['weighted_sum_s']:.3g} ({p['cpu_per_wall_weighted_sum']:.2f})") in table


def test_loglog_fit_recovers_a_power_law():
    ks = [1e5, 1e6, 1e7]
    f = bench_scale.loglog_fit(ks, [2e-9 * k ** 1.0 for k in ks])
    assert f["slope"] == pytest.approx(1.0) and f["r2"] == pytest.approx(1.0)
    rows = [{"K": k, "dim": d, "dtype": "float32", "devices": 1, "seconds": c * k ** 0.9}
            for d, c in ((64, 1e-8), (128, 3e-8)) for k in ks]
    per, pooled = bench_scale.fits(rows, 100_000)
    assert pooled["slope"] == pytest.approx(0.9) and [p["slope"] for p in per] == pytest.approx([0.9, 0.9])
