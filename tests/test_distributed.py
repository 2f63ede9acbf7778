"""fastopt.distributed on several MPI ranks: pytest launches the scripts in tests/mpi under
``mpiexec -n N python -m mpi4py`` (MPICH from PyPI, in the test extra) and checks that every
rank reports OK. In CI a missing mpi4py or mpiexec fails these tests instead of skipping them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import _ci, oracle

HERE = Path(__file__).parent / "mpi"


def mpiexec() -> str:
    oracle("mpi4py", "the MPI tests")
    found = Path(sys.executable).parent / "mpiexec"
    path = str(found) if found.exists() else shutil.which("mpiexec")
    if path is None:
        if _ci():
            pytest.fail("mpiexec is required for the MPI tests in CI (mpich is in the test extra)")
        pytest.skip("mpiexec is not installed")
    return path


def run(script: str, n: int, timeout: float = 300, args: list[str] | tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    # One kernel thread per rank (ranks share this machine's cores); the scripts import
    # their helpers from tests/mpi.
    env = dict(os.environ, FASTOPT_NUM_THREADS="1", PYTHONPATH=str(HERE), OMP_NUM_THREADS="1")
    cmd = [mpiexec(), "-n", str(n), sys.executable, "-m", "mpi4py", str(HERE / script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("script", ["equivalence.py", "overlap_and_broadcast.py", "bad_input.py"])
def test_on_ranks(script, n):
    r = run(script, n)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    for rank in range(n):
        assert f"rank {rank}: OK" in r.stdout, out


@pytest.mark.parametrize("n", [2, 4])
def test_sync_batch_norm(n):
    r = run("sync_batch_norm.py", n)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    for rank in range(n):
        assert f"rank {rank}: OK" in r.stdout, out


@pytest.mark.parametrize("n", [2, 3])
def test_matches_torch_ddp_with_gloo(torch, n):
    r = run("torch_ddp.py", n)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    for rank in range(n):
        assert f"rank {rank}: OK" in r.stdout, out


def _ok(r: subprocess.CompletedProcess, n: int) -> None:
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    for rank in range(n):
        assert f"rank {rank}: OK" in r.stdout, out


@pytest.mark.parametrize("n", [2, 3, 4])
def test_zero_matches_the_unsharded_optimizer(n):
    """Every optimizer configuration: bit for bit after 50 steps, the consolidated state equal
    to the unsharded one and loadable into torch.optim (tests/mpi/zero_equivalence.py)."""
    oracle("torch", "the ZeRO tests (torch.optim loads the consolidated state)")
    _ok(run("zero_equivalence.py", n), n)


@pytest.mark.parametrize("n", [2, 3])
def test_zero_features(n):
    oracle("torch", "the ZeRO tests (torch's greedy layout)")
    _ok(run("zero_features.py", n), n)


@pytest.mark.parametrize("n", [2, 3])
def test_low_precision_on_ranks(n):
    """float16/bfloat16 parameters, state_dtype and master_weights on the sharded optimizer,
    16-bit parameters on the DistributedOptimizer: bit for bit the unsharded optimizer given
    the averaged float32 gradients, state and checkpoints included (tests/mpi/low_precision.py)."""
    oracle("ml_dtypes", "the bfloat16 MPI tests")
    _ok(run("low_precision.py", n), n)


def test_zero_bad_input(tmp_path):
    _ok(run("zero_bad_input.py", 2, args=[str(tmp_path)]), 2)


def test_zero_checkpoint_reloads_on_any_world_size(tmp_path):
    """Saved on 3 ranks at step 20; resumed on 2 and 4 ranks and on one process (the full
    state into the unsharded optimizers): each identical at step 40 to the uninterrupted run.
    Then rank 1 is killed during a second save: the first checkpoint still loads and verifies."""
    folder = [str(tmp_path)]
    _ok(run("zero_checkpoint.py", 3, args=["save", *folder]), 3)
    for n in (2, 4):
        _ok(run("zero_checkpoint.py", n, args=["resume", *folder]), n)
    env = dict(os.environ, FASTOPT_NUM_THREADS="1", PYTHONPATH=str(HERE), OMP_NUM_THREADS="1")
    single = [sys.executable, str(HERE / "zero_checkpoint.py")]
    _ok(subprocess.run(single + ["single", *folder], capture_output=True, text=True, timeout=300, env=env), 1)
    crash = run("zero_checkpoint.py", 3, args=["crash", *folder], timeout=120)
    assert crash.returncode != 0 and "should not have completed" not in crash.stdout + crash.stderr
    assert len([d for d in os.listdir(tmp_path / "ckpt") if d.startswith("save-")]) == 2  # (the old one kept)
    _ok(subprocess.run(single + ["verify", *folder], capture_output=True, text=True, timeout=300, env=env), 1)


def _table(text: str) -> list[list[str]]:
    """The demo's table rows: optimizer, lr, train loss, test accuracy (not the timings)."""
    return [[c.strip() for c in line.split("|")[1:5]] for line in text.splitlines() if line.startswith("| ")]


def test_the_demo_on_two_ranks_prints_the_one_process_table(tmp_path):
    """`mpiexec -n 2 fastopt demo --distributed` (SyncBatchNorm, the DistributedOptimizer,
    sharded batches) prints the table of the single-process run."""
    args = ["-m", "fastopt", "demo", "--quick", "--no-figures", "--optimizers", "sgd,nesterov,adam,rmsprop"]
    env = dict(os.environ, FASTOPT_NUM_THREADS="1", OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert one.returncode == 0, one.stderr
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", *args, "--distributed", "--out", str(tmp_path / "two")]
    two = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    assert "data-parallel on 2 MPI ranks" in two.stdout
    assert _table(two.stdout) == _table(one.stdout) and len(_table(one.stdout)) == 5, (one.stdout, two.stdout)


def test_an_exception_on_one_rank_ends_every_rank():
    r = run("crash.py", 2, timeout=60)
    assert r.returncode != 0
    assert "rank 1 fails on purpose" in r.stderr
    assert "unreachable" not in r.stdout


def test_one_process_without_mpiexec():
    """The wrapper on a single process (no mpiexec): the step is the plain step."""
    oracle("mpi4py", "the MPI tests")
    import numpy as np

    import fastopt as fo
    from fastopt.distributed import DistributedOptimizer

    w = fo.Parameter(np.zeros(2))
    opt = DistributedOptimizer(fo.optim.SGD([w], lr=0.1))
    w.grad = np.ones(2)
    opt.step()
    np.testing.assert_array_equal(w.data, [-0.1, -0.1])


def test_nothing_imports_mpi4py_unless_asked():
    code = "import sys, fastopt, fastopt.optim, fastopt.nn; import fastopt.distributed; print('mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
