"""Scale-out across processes: ``sharded_retrieve`` with the patterns split over two
processes joined by ``jax.distributed`` (coordinator on 127.0.0.1, Gloo CPU collectives).

The workers (``tests/_multiprocess_script.py``) run once per module, each with 2 virtual
CPU devices (``XLA_FLAGS`` is set in their environment only, never in this process), and
each generates and holds only its own half of the patterns. Their results are compared
with a single-process ``memory.retrieve`` on the full patterns, computed here. The workers
are bounded in time: on a timeout, or when one of them fails, both are killed and the test
fails showing their exit codes and stderr (a JAX without working CPU collectives fails
here with its exact error)."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from _multiprocess_script import CASES, B, K, build, queries

import ham.memories as M

# one worker runs this module, so its module-scoped fixtures run once under `pytest -n 2`
pytestmark = pytest.mark.xdist_group("multiprocess")

SCRIPT = Path(__file__).with_name("_multiprocess_script.py")
ROOT = SCRIPT.parent.parent
PROCESSES = 2
LOCAL_DEVICES = 2
TIMEOUT_S = 120  # for both workers together
GRACE_S = 10  # once a worker has failed, the other is killed after this long


def _free_port() -> int:
    """A TCP port free right now (the coordinator listens on all interfaces)."""
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                return s.getsockname()[1]
        except OSError:
            continue
    raise OSError("no free TCP port")


def _worker_env() -> dict:
    """This process's environment without JAX/XLA settings, plus 2 CPU devices each."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={LOCAL_DEVICES}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _run_workers(port: int, tmp: Path):
    """Start the workers, wait (bounded); returns (return codes, stdouts, stderrs, seconds)."""
    env = _worker_env()
    with contextlib.ExitStack() as stack:
        files = [tuple(stack.enter_context(open(tmp / f"{kind}{pid}-{port}", "w+")) for kind in ("out", "err"))
                 for pid in range(PROCESSES)]
        start = time.monotonic()
        procs = [
            subprocess.Popen(
                [sys.executable, str(SCRIPT), str(pid), str(PROCESSES), str(port)],
                cwd=ROOT, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
            )
            for pid, (out, err) in enumerate(files)
        ]
        failed_at = None
        try:
            while None in (codes := [p.poll() for p in procs]):  # poll every one each time
                now = time.monotonic()
                if failed_at is None and any(c not in (None, 0) for c in codes):
                    failed_at = now  # the others may wait forever for it in a collective
                if now - start > TIMEOUT_S or (failed_at is not None and now - failed_at > GRACE_S):
                    break
                time.sleep(0.05)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        seconds = time.monotonic() - start
        for f in (f for pair in files for f in pair):
            f.seek(0)
        stdouts = [out.read() for out, _ in files]
        stderrs = [err.read() for _, err in files]
    return [p.returncode for p in procs], stdouts, stderrs, seconds


@pytest.fixture(scope="module")
def workers():
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(3):
            codes, stdouts, stderrs, seconds = _run_workers(_free_port(), Path(tmp))
            port_taken = "Failed to add port to server" in stderrs[0]  # the coordinator could not listen
            if not (codes[0] != 0 and port_taken):
                break
    if codes != [0] * PROCESSES:
        detail = "\n".join(
            f"--- process {pid}: exit code {code}{' (killed: timed out or its peer failed)' if code == -9 else ''}"
            f"\n{err[-4000:]}"
            for pid, (code, err) in enumerate(zip(codes, stderrs))
        )
        pytest.fail(f"multi-process workers failed after {seconds:.1f} s (limit {TIMEOUT_S} s):\n{detail}")
    reports = [json.loads(out) for out in stdouts]
    print(f"\n2 workers finished in {seconds:.1f} s; worker timings: {[r['seconds'] for r in reports]}")
    for name, probe in reports[0]["probes"].items():
        print(f"probe {name}: {probe['status']}")
    return reports


def _reference(name):
    """Single-process retrieval on the full patterns (all rows built here)."""
    kind, kwargs, make_p, make_v = CASES[name]
    memory = build(M, kind, kwargs, make_p(0, K), None if make_v is None else make_v(0, K))
    return np.asarray(memory.retrieve(queries()))


def test_each_process_joins_and_holds_only_its_half(workers):
    for pid, r in enumerate(workers):
        assert r["process_index"] == pid and r["process_count"] == PROCESSES
        assert r["devices"] == PROCESSES * LOCAL_DEVICES and r["local_devices"] == LOCAL_DEVICES
        assert r["cpu_collectives"] == "gloo"
        half = K // PROCESSES
        assert r["rows"] == [[pid * half, (pid + 1) * half]]  # generated only these rows
        for held in r["held"].values():
            assert held["fully_addressable"] is False  # a global array spanning both processes
            assert held["distinct_local_rows"] == half
        assert r["held"]["modern-softmax"]["result_spec"] == []  # replicated
        assert r["held"]["modern-softmax/data-axis"]["result_spec"] == ["data"]


def test_results_equal_single_process_retrieve(workers):
    names = list(workers[0]["results"])
    assert len(names) == 6
    for name in names:
        ref = _reference(name.split("/")[0])
        assert ref.dtype == np.float32 and ref.shape[0] == B
        first = np.asarray(workers[0]["results"][name], np.float32)
        for r in workers:
            got = np.asarray(r["results"][name], np.float32)
            np.testing.assert_array_equal(got, first)  # every process has the same result
            err = float(np.max(np.abs(got.astype(np.float64) - ref)) / np.max(np.abs(ref)))
            assert err <= 1e-5, (name, r["process_index"], err)
            if CASES[name.split("/")[0]][1].get("separation") == "max":  # the max separation returns a stored row exactly
                np.testing.assert_array_equal(got, ref)


def test_max_winners_come_from_both_processes_and_ties_go_to_the_first(workers):
    # which stored pattern wins each query, from the single-process reference
    patterns = CASES["universal-dot-max"][2](0, K)
    winners = np.argmax(queries() @ patterns.T, axis=1)
    assert (winners < K // 2).any() and (winners >= K // 2).any()  # the merge picks across processes
    # with patterns i and i + K/2 equal, the first index (process 0's) wins, as jnp.argmax
    tied = CASES["universal-dot-max-ties"][2](0, K)
    np.testing.assert_array_equal(tied[: K // 2], tied[K // 2 :])
    first = np.argmax(queries() @ tied.T, axis=1)
    assert (first < K // 2).all()
    for r in workers:
        np.testing.assert_array_equal(np.asarray(r["results"]["universal-dot-max-ties"])[:, 0], first)


def test_constructor_accepts_patterns_spanning_both_processes(workers):
    """``ham.memories.modern`` given the global array that spans both processes: its
    finiteness check reduces on the devices (no process copies the other's half)."""
    statuses = {r["probes"]["constructor_on_global_patterns"]["status"] for r in workers}
    assert statuses == {"ok"}, statuses  # both processes alike (no one left in a collective)


def test_queries_split_across_processes(workers):
    """A data axis across the processes: each holds half of the queries' results (rows
    0-3 or 4-7), compared with the reference (the overflow check reads only the parts a
    process holds)."""
    statuses = {r["probes"]["data_axis_across_processes"]["status"] for r in workers}
    assert statuses == {"ok"}, statuses
    ref = _reference("modern-softmax")
    for pid, r in enumerate(workers):
        probe = r["probes"]["data_axis_across_processes"]
        lo, hi = probe["query_rows"]
        assert (lo, hi) == (pid * B // PROCESSES, (pid + 1) * B // PROCESSES)
        got = np.asarray(probe["values"], np.float64)
        err = float(np.max(np.abs(got - ref[lo:hi])) / np.max(np.abs(ref[lo:hi])))
        assert err <= 1e-5, (pid, err)
