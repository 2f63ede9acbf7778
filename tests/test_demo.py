"""The demo's claims: what each figure's caption says is what the paths do at the demo's
settings; every optimizer fastopt has runs in the demo; divergence is marked; the command's
options (case-insensitive names, --lr, --version)."""

from __future__ import annotations

import numpy as np
import pytest

from fastopt import cli, demo, optim, plot

DEFAULT = list(demo.DEFAULT_OPTIMIZERS)
MOMENTUM = ["SGD", "SGD+momentum", "Nesterov"]
ADAPTIVE = ["Adagrad", "RMSprop", "Adam", "AdamW", "AdaBound"]


def test_registry_has_every_optimizer_fastopt_has():
    classes = {e.cls for e in demo.REGISTRY.values()}
    # (Muon takes matrices; the demo's surfaces are points of the plane)
    every = {getattr(optim, n) for n in optim.__all__ if isinstance(getattr(optim, n), type)
             and issubclass(getattr(optim, n), optim.Optimizer) and getattr(optim, n) not in (optim.Optimizer, optim.Muon)}
    assert every <= classes, every - classes
    assert set(DEFAULT) <= set(demo.REGISTRY)


@pytest.mark.parametrize("key", list(demo.SURFACES))
@pytest.mark.parametrize("name", list(demo.REGISTRY))
def test_no_path_diverges_at_the_demo_settings(key, name):
    path = demo.trajectory(demo.SURFACES[key], name)
    assert demo.diverged_at(path) is None


def test_saddle_caption():
    s = demo.SURFACES["saddle"]
    assert "still there after 60 steps" in s.caption and s.steps == 60
    for name in MOMENTUM:
        p = demo.trajectory(s, name)
        assert np.max(np.abs(p[:, 1])) < 0.01, name  # never left the x axis
        assert abs(p[-1, 0]) < 0.1 and abs(p[-1, 1]) < 0.01, name  # at the saddle after 60 steps
    for name in ADAPTIVE:
        p = demo.trajectory(s, name)
        assert np.argmax(np.abs(p[:, 1]) > 0.05) <= 10, name  # off the axis within a few steps
        assert np.hypot(p[-1, 0], p[-1, 1] - 1) < 0.15, name  # at the minimum (0, 1)


def test_quadratic_caption():
    s = demo.SURFACES["quadratic"]
    y = demo.trajectory(s, "SGD")[:, 1]
    assert np.count_nonzero(np.diff(np.sign(y[:30])) != 0) >= 10  # zigzags across the valley
    mom = demo.trajectory(s, "SGD+momentum")
    assert mom[:, 0].max() > 0.3 and np.count_nonzero(np.diff(np.sign(mom[:, 1])) != 0) >= 3  # overshoots both ways
    nes = demo.trajectory(s, "Nesterov")
    assert nes[:, 0].max() > 0.3  # overshoots the minimum along x
    for name in ["Adam", "RMSprop"]:
        first = np.diff(demo.trajectory(s, name)[:2], axis=0)[0]
        assert first[0] > 0 and first[1] < 0 and np.isclose(abs(first[0]), abs(first[1]), rtol=0.05), name


def test_rosenbrock_caption_and_why_adabound_gets_its_own_final_lr():
    s = demo.SURFACES["rosenbrock"]
    ends = {name: demo.trajectory(s, name)[-1] for name in DEFAULT}
    loss = {name: float(s.f(*e)) for name, e in ends.items()}
    assert max(loss, key=loss.get) == "SGD"  # plain SGD is slowest
    assert all(e[0] > 0.3 for e in ends.values())  # all are along the valley floor towards (1, 1)
    assert s.options["AdaBound"] == {"final_lr": 1e-3}
    # with AdaBound's default final_lr the bounds close in on a rate far above 2/1000: it diverges
    p = demo.trajectory(demo.Surface(**{**s.__dict__, "options": {}}), "AdaBound")
    assert 600 < demo.diverged_at(p) < 800


def test_path_labels_mark_overlap_and_divergence():
    a = np.zeros((11, 2))
    b = a + 1e-4
    c = np.full((11, 2), np.nan)
    c[:4] = 0.5
    labels = plot.path_labels({"A": a, "B": b, "C": c}, (-1, 1, -1, 1))
    assert labels == ["A", "B  (≈ A)", "C  DIVERGED at step 4"]


def test_a_diverging_path_is_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    s = demo.SURFACES["rosenbrock"]
    paths = {"AdaBound final_lr 0.1": demo.trajectory(demo.Surface(**{**s.__dict__, "options": {}}), "AdaBound"),
             "Adam": demo.trajectory(s, "Adam")}
    out = plot.optimizer_paths(s.f, s.window, paths, tmp_path / "p.png", minima=s.minima)
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_names_are_case_insensitive_and_all_means_every_one():
    assert demo.resolve_names("adam,SGD+MOMENTUM, lbfgs") == ["Adam", "SGD+momentum", "LBFGS"]
    assert demo.resolve_names("all") == list(demo.REGISTRY)
    assert demo.resolve_names("default") == DEFAULT
    with pytest.raises(ValueError, match="unknown optimizer.*'Adamm'"):
        demo.resolve_names("Adamm")


def test_lr_option():
    assert cli._parse_lr(None, ["Adam"]) == {}
    assert cli._parse_lr("0.05", ["Adam", "SGD"]) == {"Adam": 0.05, "SGD": 0.05}
    assert cli._parse_lr("adam=0.1, sgd=1", ["Adam", "SGD"]) == {"Adam": 0.1, "SGD": 1.0}
    for bad in ("-1", "nan", "x", "Lion=0.1", "Adam"):
        with pytest.raises(ValueError, match="--lr"):
            cli._parse_lr(bad, ["Adam", "SGD"] if bad != "Adam" else ["SGD"])


def test_demo_runs_every_optimizer_with_an_lr(tmp_path, capsys):
    rc = cli.main(["demo", "--optimizers", "all", "--epochs", "1", "--samples", "200", "--no-figures",
                   "--lr", "lion=0.0001,LBFGS=0.5", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    for name in demo.REGISTRY:
        assert f"| {name:<13}|" in out
    assert "| Lion         | 0.0001 |" in out and "| LBFGS        |    0.5 |" in out


def test_version_and_help_show_defaults(capsys):
    import fastopt

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fastopt {fastopt.__version__}"
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    assert "(default: 100)" in text and "(default: spiral)" in text and "(default: fastopt-demo)" in text


def test_the_gallery_shows_each_surface_with_its_caption():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    page = (root / "docs" / "demo.md").read_text()
    for key, surface in demo.SURFACES.items():
        assert surface.caption in page, key
        assert (root / "docs" / "gallery" / f"paths_{key}.png").exists()


def test_precision_option_trains_from_the_stored_weights(tmp_path, capsys):
    """``--precision``: each optimizer at each precision; bfloat16 weights (ml_dtypes) are
    what the optimizer steps, the model computes from them widened; the master-weight
    options keep the run closer to float32 than plain bfloat16 (Adam, 30 epochs)."""
    from conftest import oracle

    ml_dtypes = oracle("ml_dtypes", "the bfloat16 demo")
    cfg = demo.DemoConfig(epochs=30)
    x_train, y_train, x_test, y_test, _ = demo.prepare_data(cfg)
    splits = (x_train, y_train, x_test, y_test)
    runs = {p: demo.train("Adam", cfg, splits, precision=p) for p in demo.PRECISIONS}
    assert demo.train("Adam", cfg, splits).train_curve == runs["float32"].train_curve  # (float32: as before)
    for p, r in runs.items():
        assert r.precision == p and r.train_curve[-1] < 0.5 * r.train_curve[0], (p, r.train_curve)
        weights = [np.asarray(q.data) for q in r.model.parameters()]
        if demo.PRECISIONS[p][0] == "bfloat16":  # the model's float32 weights are bfloat16 values
            assert all(np.array_equal(w, w.astype(ml_dtypes.bfloat16).astype(np.float32)) for w in weights)
    gap = {p: abs(runs[p].train_loss - runs["float32"].train_loss) for p in runs}
    assert all(gap[f"bfloat16-{how}"] < gap["bfloat16"] for how in ("kahan", "remainder", "stochastic")), gap
    # 8-bit state (the 64x64 layer's; float32 weights) ends as near float32 as the best of them
    assert 0 < gap["int8-state"] < gap["bfloat16"], gap
    rc = cli.main(["demo", "--optimizers", "adam,lion", "--precision", "float32,bfloat16-remainder", "--epochs", "2",
                   "--samples", "200", "--out", str(tmp_path)] + ([] if plot_available() else ["--no-figures"]))
    assert rc == 0
    out = capsys.readouterr().out
    assert "| Lion (bfloat16-remainder) " in out and "| Adam (float32) " in out
    if plot_available():
        assert (tmp_path / "precision.png").stat().st_size > 0


def plot_available():
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def test_precision_option_bad_input(capsys):
    assert demo.resolve_precisions("float32, BFLOAT16-kahan", ["Adam"]) == ["float32", "bfloat16-kahan"]
    assert demo.resolve_precisions("int8-state", ["Adam", "Lion"]) == ["int8-state"]
    for spec, names, text in [("int8-state", ["NAdam"], "NAdam keeps no 8-bit state"), ("float8", ["Adam"], "unknown precision"),
                              ("bfloat16", ["LBFGS"], "LBFGS does not take bfloat16"),
                              ("bfloat16", ["Adafactor"], "Adafactor does not take bfloat16"),
                              ("bfloat16-kahan", ["Lamb"], "Lamb has no master_weights option"), (",", ["Adam"], "no precision")]:
        with pytest.raises(ValueError, match=text):
            demo.resolve_precisions(spec, names)
    with pytest.raises(SystemExit):
        cli.main(["demo", "--precision", "float8", "--no-figures"])
    assert "unknown precision" in capsys.readouterr().err
