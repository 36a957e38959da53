"""Training recipes, reproducibility, the CLI, and the quick classic experiments."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model.io import load_model
from training import recipes
from training.cli import main
from training.datasets import digits, noisy_digits, random_shift
from training.reproduce import quick_experiments


@pytest.mark.parametrize("name", ["xor", "digits"])
def test_small_recipes_meet_their_targets(name):
    recipe = recipes.RECIPES[name]
    ds = recipe.load_data()
    net, history = recipes.train_recipe(recipe, ds)
    metrics = recipes.final_metrics(recipe, net, ds, history)
    assert recipes.targets_met(recipe, metrics), metrics


def test_training_is_reproducible_bit_for_bit():
    recipe = recipes.replace(recipes.RECIPES["digits"], epochs=3)
    ds = recipe.load_data()
    a, _ = recipes.train_recipe(recipe, ds)
    b, _ = recipes.train_recipe(recipe, ds)
    for key, value in a.state().items():
        assert value.tobytes() == b.state()[key].tobytes()


def test_noisy_heldout_is_fixed_and_independent_of_training_seed():
    x1, y1 = noisy_digits(10, seed=12345)
    x2, y2 = noisy_digits(10, seed=12345)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    flips = np.abs(x1 - np.repeat(digits().eval_sets["glyphs"][0], 10, axis=0)).sum(axis=1)
    assert set(flips) <= {1.0, 2.0}


def test_random_shift_keeps_ink_inside_and_moves_it():
    rng = np.random.default_rng(0)
    img = np.zeros((1, 28, 28), dtype=np.float32)
    img[0, 10:18, 10:18] = 1.0
    out = random_shift(np.repeat(img.reshape(1, -1), 50, axis=0), rng)
    assert np.all(out.sum(axis=1) == 64)
    assert len({row.tobytes() for row in out}) > 5


def test_cli_writes_versioned_models(tmp_path):
    assert main(["xor", "--out", str(tmp_path), "--quiet"]) == 0
    assert main(["xor", "--out", str(tmp_path), "--quiet", "--epochs", "400", "--no-plot"]) == 0
    v1, v2 = tmp_path / "xor" / "1", tmp_path / "xor" / "2"
    assert {p.name for p in v1.iterdir()} == {"model.npz", "metrics.json", "curves.png"}
    assert (v1 / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in v2.iterdir()} == {"model.npz", "metrics.json"}
    meta = load_model(v2 / "model.npz").metadata
    assert meta["version"] == 2 and meta["training"]["epochs"] == 400 and meta["targets"]["met"]
    assert json.loads((v1 / "metrics.json").read_text())["history"][-1]["epoch"] == 500
    # an existing version is never overwritten silently
    assert main(["xor", "--out", str(tmp_path), "--version", "1", "--quiet"]) == 2
    assert main(["xor", "--out", str(tmp_path), "--version", "1", "--force", "--quiet", "--no-plot"]) == 0


@pytest.mark.parametrize("argv", [["nope"], ["xor", "--epochs", "0"], ["xor", "--lr", "-1"], ["xor", "--epochs", "x"]])
def test_cli_rejects_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_cli_missing_mnist_is_a_clear_error(tmp_path, caplog):
    assert main(["mnist", "--data-dir", str(tmp_path), "--no-download", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "not found" in caplog.text
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("experiment", quick_experiments(), ids=lambda f: f.__name__)
def test_classic_results_reproduce(experiment):
    result = experiment()
    assert result.ok, f"{result.name}: published {result.published}, ours {result.ours}"


def test_cli_works_without_the_train_extra(tmp_path, monkeypatch):
    """A runtime-only install has neither tqdm nor matplotlib: training still works, without extras."""
    import sys

    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["xor", "--out", str(tmp_path), "--epochs", "300"]) == 0
    assert {p.name for p in (tmp_path / "xor" / "1").iterdir()} == {"model.npz", "metrics.json"}


@pytest.mark.parametrize("head", ["sigmoid", "identity"])
def test_running_train_accuracy_for_one_output_networks(head):
    """One output: a sigmoid head is decided at logit 0, a network ending in a Sigmoid layer at 0.5."""
    from model.layers import Dense, Sigmoid
    from model.losses import MeanSquaredError, SigmoidBinaryCrossEntropy
    from model.network import Sequential
    from model.optimizers import SGD
    from training.trainer import fit

    rng = np.random.default_rng(0)
    layers = [Dense(2, 1, rng=rng, dtype=np.float64)] + ([Sigmoid()] if head == "identity" else [])
    net = Sequential(layers, head=head)
    loss = MeanSquaredError() if head == "identity" else SigmoidBinaryCrossEntropy()
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    y = np.array([0, 0, 1, 1])  # y = x1: one unit learns it, so every sample must count as right
    history = fit(net, loss, SGD(2.0), x, y.astype(np.float64), labels=y, epochs=300, batch_size=4,
                  rng=rng, eval_sets={"all": (x, y)})
    assert history.last()["all_accuracy"] == 1.0
    assert history.last()["train_accuracy"] == 1.0
