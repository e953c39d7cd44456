"""Sweeps: grid expansion, local runs one after another, Modal runs fanned out at once, best by metric."""

import pytest

import nbfinetune as nbft
from nbfinetune.sweep import grid_points


def test_grid_points():
    assert grid_points({"lr": [1, 2], "r": [8, 16]}) == [
        {"lr": 1, "r": 8}, {"lr": 1, "r": 16}, {"lr": 2, "r": 8}, {"lr": 2, "r": 16}]
    sampled = grid_points({"lr": [1, 2, 3], "r": [8, 16]}, samples=3, seed=1)
    assert len(sampled) == 3 and len({tuple(p.items()) for p in sampled}) == 3
    with pytest.raises(ValueError, match="non-empty lists"):
        grid_points({"lr": []})


@pytest.mark.train
def test_local_sweep_runs_in_turn_and_picks_the_best(home, tiny_model):
    sweep = nbft.sweep({"lr": [1e-4, 5e-2]}, model=tiny_model, steps=6, eval_samples=0)
    table = sweep.wait(timeout=300)
    assert list(table["status"]) == ["finished", "finished"] and list(table["swept lr"]) == [1e-4, 5e-2]
    first, second = sweep.runs
    assert first.events()[-1].time <= second.events()[0].time  # one after another on a local machine
    assert sweep.best().id == table["eval_loss"].idxmin()
    figure = sweep.figure()
    assert len(figure.data) == 4 and len(figure.data[0].x) == 6 and "lr=0.05 train" in figure.data[2].name


@pytest.mark.train
def test_modal_sweep_fans_out_at_once(modal_client, home, tiny_model):
    sweep = nbft.sweep({"r": [2, 4], "lr": [1e-3]}, metric="json_match", model=tiny_model, backend="modal",
                      gpu="L4", steps=4, eval_samples=2)
    assert len(modal_client.spawned) == 2  # both launched before either was waited on
    table = sweep.wait(timeout=300)
    assert list(table["status"]) == ["finished", "finished"], [r.events()[-1].payload for r in sweep.runs]
    assert "json_match" in table
    assert sweep.best() is not None
