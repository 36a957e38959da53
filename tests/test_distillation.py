"""Distillation through the training CLI: ``--teacher`` reads a served version's weights."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from model.io import load_model
from tests.conftest import ROOT
from training import recipes
from training.cli import main
from training.trainer import accuracy

SHIPPED = ROOT / "model_repository"


def test_a_student_learns_from_the_teacher_alone():
    """With the whole loss on the teacher's term, the labels carry nothing: scrambled, the student
    still learns the teacher's classes. (Ignoring the teacher, it would learn the scrambled ones.)"""
    recipe = replace(recipes.RECIPES["digits"], teacher=str(SHIPPED / "digits" / "1"), distill_weight=1.0,
                     temperature=2.0)
    ds = recipe.load_data()
    scrambled = replace(ds, y=np.random.default_rng(0).permutation(ds.y))
    net, _ = recipes.train_recipe(recipe, scrambled)
    glyphs, labels = ds.eval_sets["glyphs"]
    assert accuracy(net, glyphs, labels) == 1.0
    assert accuracy(net, ds.x, ds.y) > 0.95


def test_cli_records_the_teacher_in_the_students_metadata(tmp_path):
    teacher = SHIPPED / "digits" / "1"
    assert main(["digits", "--teacher", str(teacher), "--temperature", "3", "--distill-weight", "0.7",
                 "--hidden", "16,16", "--out", str(tmp_path), "--quiet", "--no-plot"]) == 0
    meta = load_model(tmp_path / "digits" / "1" / "model.npz").metadata
    shipped = load_model(teacher / "model.npz")
    assert meta["training"]["teacher"] == str(teacher)
    assert (meta["training"]["temperature"], meta["training"]["distill_weight"]) == (3.0, 0.7)
    assert meta["training"]["hidden"] == [16, 16]
    assert meta["teacher"] == {"name": "digits", "version": 1, "sha256": shipped.sha256,
                               "parameters": shipped.network.num_params, "metrics": shipped.metadata["metrics"]}
    assert meta["architecture"]["layers"][0]["out_features"] == 16


@pytest.mark.parametrize("teacher", ["xor/1", "missing/1"])
def test_cli_refuses_a_teacher_that_does_not_fit(tmp_path, caplog, teacher):
    assert main(["digits", "--teacher", str(SHIPPED / teacher), "--out", str(tmp_path), "--quiet"]) == 2
    assert "teacher must be" in caplog.text or "no such file" in caplog.text
    assert not (tmp_path / "digits").exists()


@pytest.mark.parametrize("argv", [["digits", "--distill-weight", "1.5"], ["digits", "--temperature", "0"],
                                  ["digits", "--hidden", "16,x"], ["digits", "--hidden", "0"]])
def test_cli_rejects_bad_distillation_arguments(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err
