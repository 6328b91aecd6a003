"""experiments/bench_stream.py --smoke: the stream rows' fields, per-query agreement and
the cost model, on one small row (timings are not judged here: the machine is shared)."""

import json

import pytest

from experiments import bench_stream

pytestmark = pytest.mark.xdist_group("bench_stream")


@pytest.mark.slow  # the benchmark script (~15 s); tests/test_stream.py covers streaming itself
def test_bench_stream_smoke_writes_rows_table_and_figure(tmp_path, monkeypatch):
    windows, relax = [], bench_stream.ham.relax  # every relax call of the benchmark names its window

    def recorded(*args, **kwargs):
        windows.append(kwargs.get("window", "default"))  # the default streams: not a baseline
        return relax(*args, **kwargs)

    monkeypatch.setattr(bench_stream.ham, "relax", recorded)
    rows = bench_stream.main(["--smoke", "--out", str(tmp_path)])
    assert windows and "default" not in windows and None in windows
    saved = json.loads((tmp_path / "bench_stream_smoke.json").read_text())
    assert saved["mode"] == "smoke" and len(saved["results"]) == len(rows) == 1
    assert (tmp_path / "bench_stream_smoke.png").stat().st_size > 0
    r = rows[0]
    assert (r["case"], r["dtype"], r["queries"]) == ("classical_tanh_400", "float32", 300)
    # per query the vmapped solve's result: same reason and state, steps within 2 (float32)
    assert r["same_state"] == r["same_reason"] == r["auto_same_state"] == 1.0
    assert r["steps_differ_max"] <= 2 and r["auto_steps_differ_max"] <= 2
    # the loop's iterations follow the cost model N mean/W + max (attempted steps)
    assert r["iterations"] <= 1.1 * r["iterations_model"]
    assert r["slot_steps_useful"] <= r["slot_steps_streamed"] < r["slot_steps_vmapped"]
    assert r["target"] == bench_stream.target(r["max_over_mean"]) and r["meets_target"] == (r["speedup"] >= r["target"])
    assert r["window_auto"] == r["auto"]["window"] and r["auto"]["pilot_queries"] == 18
    assert len(r["load_before"]) == 3 and r["vmapped_seconds"] > 0 and r["streamed_seconds"] > 0
    table = bench_stream.markdown_table(rows)
    assert "classical_tanh_400" in table and f"{r['speedup']:.2f}×" in table


def test_the_baseline_is_the_vmapped_solve(monkeypatch):
    """relax's default (``window="auto"``) streams, so the baseline names ``window=None``."""
    seen = []
    monkeypatch.setattr(bench_stream.ham, "relax", lambda net, xs, **kw: seen.append(kw) or "solution")
    assert bench_stream.vmapped("net", "xs") == "solution" and seen == [{"window": None}]


def test_stream_target_rule():
    assert bench_stream.target(1.2) == 0.95  # no spread: never slower
    assert bench_stream.target(3.0) == pytest.approx(1.8)
    assert bench_stream.target(20.0) == 4.0  # capped
