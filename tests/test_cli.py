"""The command line: ``fastopt demo`` (figures and table), ``info`` and ``bench``."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from fastopt import cli, demo

PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = ["loss_curves.png", "decision_boundaries.png", "paths_quadratic.png", "paths_saddle.png", "paths_rosenbrock.png"]


def test_demo_quick_writes_table_and_figures(tmp_path):
    """The real entry point, as CI runs it; matplotlib comes with the test extras."""
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "fastopt", "demo", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    for name in demo.DEFAULT_OPTIMIZERS:
        assert f"| {name:<13}|" in proc.stdout
    assert "test acc" in proc.stdout and "steps/s" in proc.stdout
    table = (out / "results.md").read_text()
    assert all(name in table for name in demo.DEFAULT_OPTIMIZERS)
    for fig in FIGURES:
        data = (out / fig).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, fig


def test_demo_without_matplotlib_trains_and_says_how(tmp_path, monkeypatch, capsys):
    real = cli._version
    monkeypatch.setattr(cli, "_version", lambda pkg: None if pkg in ("matplotlib", "tqdm", "rich") else real(pkg))
    rc = cli.main(["demo", "--quick", "--epochs", "2", "--optimizers", "SGD,Adam", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| SGD" in out and "| Adam" in out and "| AdamW" not in out
    assert "pip install 'fastopt[demo]'" in out
    assert (tmp_path / "results.md").exists() and not (tmp_path / "loss_curves.png").exists()


def test_demo_options_and_bad_arguments(tmp_path, capsys):
    rc = cli.main(["demo", "--dataset", "xor", "--epochs", "3", "--samples", "200", "--batch-size", "16",
                   "--optimizers", "Nesterov", "--seed", "4", "--no-figures", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.startswith("fastopt ") and "xor: 140 training / 60 test points" in out and "| Nesterov" in out
    for bad in (["--optimizers", "Adamm"], ["--epochs", "0"], ["--dataset", "moons"], ["--noise", "-1"]):
        with pytest.raises(SystemExit) as e:
            cli.main(["demo", "--no-figures", "--out", str(tmp_path)] + bad)
        assert e.value.code == 2
    assert "unknown optimizer" in capsys.readouterr().err


def test_info_and_usage(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "SIMD level" in out and "threads" in out and "optional extras" in out and "matplotlib" in out
    assert cli.main([]) == 0 and "demo" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2


def test_bench_quick_table(tmp_path, capsys):
    md = tmp_path / "bench.md"
    assert cli.main(["bench", "--size", "2e4", "--rounds", "1", "--threads", "1", "--out", str(md)]) == 0
    out = capsys.readouterr().out
    for kernel in ("Adam step", "SGD momentum step", "relu forward", "sigmoid forward", "gelu_tanh forward", "batch_norm train fwd+bwd"):
        assert f"| {kernel} |" in out
    assert "vs NumPy" in out and md.read_text().strip() == out.strip()
    if cli._version("torch"):
        assert "(torch " in out  # torch's fastest path is named


def test_bandwidth_probe_and_its_bad_input():
    from fastopt import bench

    bw = bench.bandwidth(1, elements=1 << 16, repeats=1)  # small: a smoke run, nothing timed is asserted
    assert bw.copy > 0 and bw.triad > 0 and bw.threads == 1 and "GB/s" in str(bw)
    for bad in ({"elements": 0}, {"repeats": 0}, {"elements": 1.5}):
        with pytest.raises(ValueError, match="must be a positive int"):
            bench.bandwidth(1, **bad)


def test_workload_shapes():
    import math

    from fastopt.bench.workloads import WORKLOADS, resnet50_shapes

    shapes = resnet50_shapes()
    assert len(shapes) == 161 and sum(math.prod(s) for s in shapes) == 25_557_032  # torchvision's count
    small = WORKLOADS["200 small"]()
    assert len(small) == 200 and all(1_000 <= s[0] <= 100_000 for s in small)
    assert WORKLOADS["161 x 1 element"]() == [(1,)] * 161


def test_full_report_sections(capsys):
    """The full report's structure on the smallest settings (what it measures is not asserted)."""
    from fastopt.bench import report

    text = report.run([1000], ["adam"], rounds=1, block=0.0, workloads=False, compare_all=False, probe_elements=1 << 14)
    assert "Memory bandwidth probe" in text and "#### Adam" in text and "| 1e+03 |" in text
    precision = report.run([1000], ["adam"], rounds=1, block=0.0, workloads=False, compare_all=False,
                           probe_elements=1 << 14, precision=True)
    assert "#### Adam by parameter dtype at 1e+03 elements" in precision
    assert "| float32 | 28 |" in precision and "| float16 | 14 |" in precision
    # (ml_dtypes is installed with the tests: bfloat16 and the state_dtype pairs, which torch lacks)
    assert "| bfloat16 | 14 |" in precision
    for row in (r"float32 \+ bfloat16 state \| 20", r"bfloat16 \+ float32 state \| 22", r"bfloat16 \+ kahan \| 18",
                r"bfloat16 \+ remainder \| 18", r"bfloat16 \+ float32 master \| 22"):
        assert re.search(rf"\| {row} \| [0-9.]+ \| [0-9.]+ \| - \| - \| - \| - \|", precision), precision
    # an optimizer torch lacks is compared with its authors' implementation: every row has the header's columns
    official = report.run([1000], ["prodigy"], rounds=1, block=0.0, workloads=False, compare_all=False, probe_elements=0)
    table = [line for line in official.splitlines() if line.startswith("| ")]
    assert "prodigyopt (best T)" in table[0] and len(table) == 2
    assert all(line.count("|") == table[0].count("|") for line in table), table
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--full", "--help"])
    assert e.value.code == 0 and "many tensors" in capsys.readouterr().out
