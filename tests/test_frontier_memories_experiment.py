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
