"""The README's main job: `ham demo` runs, retrieves, converges and writes its figure."""

import json
import subprocess
import sys

import numpy as np
import pytest

from ham.cli import main
from ham.demo import build_memory, load_digit_images


def test_demo_retrieves_most_noisy_digits_and_writes_figure_and_json(tmp_path):
    out = tmp_path / "demo.png"
    rc = main(["demo", "--num-patterns", "60", "--num-queries", "8", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert out.stat().st_size > 10_000
    assert res["converged"] == 8
    assert res["retrieved_noise"] >= 3  # of 4 noisy queries
    assert res["max_energy_rise_over_tolerance"] <= 1.0
    assert res["steps_max"] < 4096


def test_demo_help_lists_the_options():
    r = subprocess.run([sys.executable, "-m", "ham", "demo", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for opt in ("--num-patterns", "--beta", "--visible", "--similarity", "--out"):
        assert opt in r.stdout


def test_euclidean_bias_makes_the_hidden_input_a_negative_squared_distance():
    p = load_digit_images()[:5]
    net = build_memory(p, beta=1.0, similarity="euclidean")
    v = p[0] + 0.1
    h_in = np.asarray(net.synapses["xi"].weight).T @ v + np.asarray(net.synapses["b"].bias)
    expected = -0.5 * ((v - p) ** 2).sum(1) + 0.5 * (v**2).sum()
    np.testing.assert_allclose(h_in, expected, rtol=1e-5)


def test_demo_refuses_bad_sizes():
    with pytest.raises(ValueError, match="num_queries <= num_patterns"):
        main(["demo", "--num-patterns", "4", "--num-queries", "8"])


@pytest.mark.parametrize(
    "args,match",
    [
        (["--num-patterns", "0"], "argument --num-patterns: must be >= 1, got 0"),
        (["--num-queries", "0"], "argument --num-queries: must be >= 1, got 0"),
        (["--beta", "nan"], "argument --beta: must be a finite number > 0, got nan"),
        (["--beta", "inf"], "argument --beta: must be a finite number > 0, got inf"),
        (["--noise", "-1"], "argument --noise: must be a finite number >= 0, got -1"),
        (["--num-patterns", "ten"], "argument --num-patterns: expected an integer, got 'ten'"),
        (["--num-patterns", "4", "--num-queries", "8"], "need 1 <= num_queries <= num_patterns <= 1797"),
        (["--num-patterns", "5000"], "num_patterns <= 1797"),
    ],
)
def test_invalid_arguments_exit_2_with_one_line_on_stderr(capsys, args, match):
    from ham.cli import console

    try:
        rc = console(["demo", *args])
    except SystemExit as e:  # argparse's own exit
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("ham demo: error: ") and match in err, err
    assert "Traceback" not in err


def test_console_script_prints_no_traceback_and_exits_1_when_the_run_fails(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "ham", "demo", "--beta", "nan"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = subprocess.run(
        [sys.executable, "-m", "ham", "demo", "--num-patterns", "10", "--num-queries", "2",
         "--out", str(blocker / "demo.png")],
        capture_output=True, text=True,
    )
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ham demo: error: ") and "Traceback" not in r.stderr, r.stderr
