"""experiments/frontier_memories.py --smoke: the study runs, writes its JSON and figure,
and its measured claims hold at the smoke size."""

import json

import pytest

from experiments import frontier_memories

# one worker runs this module, so its module-scoped fixtures run once under `pytest -n 2`
pytestmark = pytest.mark.xdist_group("frontier_memories_experiment")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("frontier")
    frontier_memories.main(["--smoke", "--no-progress", "--results-dir", str(out),
                            "--sections", "rf_error", "epa_retrieval", "epa_census"])
    return out


def test_smoke_writes_results_and_figure_and_no_checkpoint(smoke):
    r = json.loads((smoke / "frontier_memories_smoke.json").read_text())
    assert r["mode"] == "smoke" and set(r["sections"]) == {"rf_error", "epa_retrieval", "epa_census"}
    assert (smoke / "frontier_memories_smoke.png").stat().st_size > 10_000
    assert not (smoke / "frontier_memories_smoke.checkpoint.json").exists()


def test_smoke_epanechnikov_fixed_points_match_the_distance_criterion(smoke):
    r = json.loads((smoke / "frontier_memories_smoke.json").read_text())
    for row in r["sections"]["epa_retrieval"]["rows"]:
        assert row["prediction_matches"] == 1.0, row
    for row in r["sections"]["epa_census"]["rows"]:
        epa = row["epanechnikov"]
        assert epa["converged"] == 1.0 and epa["stored"] + epa["emergent"] == epa["minima"] >= 1


def test_smoke_random_feature_errors_fall_with_features(smoke):
    r = json.loads((smoke / "frontier_memories_smoke.json").read_text())
    rows = [x for x in r["sections"]["rf_error"]["rows"] if x["kind"] == "trigonometric"]
    errs = [x["kernel_rel_error"] for x in sorted(rows, key=lambda x: x["y"])]
    assert errs[-1] < errs[0] / 2  # 16x the features: ~1/4 the error


@pytest.mark.slow  # three small runs with their compilations (~20 s quiet); the footprint is also tested in test_frontier_memories
def test_rf_scale_footprint_is_constant_and_a_rerun_resumes_from_the_checkpoint(tmp_path):
    cfg = dict(dim=8, y=64, ks=[200, 400], beta=1.0, queries=8, chunk=150, gen_block=100, max_steps=20,
               exact_steps=5, repeats=1, devices=None)
    ck = tmp_path / "rf_scale.checkpoint.json"
    res = frontier_memories.rf_scale(cfg, False, checkpoint=ck)
    rows = res["rows"]
    assert [r["k"] for r in rows] == [200, 400]
    assert rows[0]["rf_bytes"] == rows[1]["rf_bytes"] == 64 * (8 + 2) * 4  # omega + tensor, whatever K
    assert rows[1]["exact_bytes"] == 2 * rows[0]["exact_bytes"] == 400 * 8 * 4
    for r in rows:
        assert 0 <= r["same_nearest"] <= 1 and 0 <= r["agree"] <= 1 and r["rf_update_qps"] > 0 and r["devices"] >= 1
    state = json.loads(ck.read_text())["done"]["state"]
    assert state["written"] == 400 and len(state["rows"]) == 2
    # a rerun with the same settings finds every K done: nothing recomputed, the same rows
    assert frontier_memories.rf_scale(cfg, False, checkpoint=ck)["rows"] == rows
    # resuming after the first K writes only the new rows onto the checkpointed tensor: same tensor as one run
    json_first = dict(config=cfg, done=dict(state=dict(rows=rows[:1], written=200, tensor=_tensor_after(cfg, 200))))
    ck.write_text(json.dumps(json_first))
    resumed = frontier_memories.rf_scale(cfg, False, checkpoint=ck)["rows"]
    assert resumed[0] == rows[0] and resumed[1]["k"] == 400
    assert resumed[1]["rf_bytes"] == rows[1]["rf_bytes"] and resumed[1]["same_nearest"] == rows[1]["same_nearest"]


def _tensor_after(cfg, k):
    import jax

    import ham.memories as M

    p = frontier_memories._sphere_patterns(jax.random.key(0), k, cfg["dim"], cfg["gen_block"])
    return M.random_features(p, cfg["beta"], cfg["y"], key=jax.random.key(1)).tensor.tolist()
