"""The launcher through its widget state: settings become a RunConfig, Launch turns into the dashboard."""

import pytest

from nbfinetune import api
from nbfinetune.widgets.launcher import Launcher


@pytest.mark.train
def test_settings_estimate_and_launch(home, tiny_model):
    launched = []
    launcher = Launcher(api.build_config(model=tiny_model), launch=lambda cfg: launched.append(cfg) or
                        api.finetune(cfg, display=False))
    assert "Check the data" in launcher.estimate.value
    launcher.preflight.check(wait=True)
    launcher.steps.value = 5
    assert "tokens per step" in launcher.estimate.value and "epochs" in launcher.estimate.value
    launcher.lr.value, launcher.r.value = 0.002, 4
    run = launcher.submit()
    config = launched[0]
    assert (config.model, config.train.max_steps, config.train.lr, config.lora.r, config.data.path) == \
        (tiny_model, 5, 0.002, 4, "sample:people")
    assert "launched run" in launcher.children[0].value and launcher.children[1] is run._dashboard
    assert run.wait(timeout=120, progress=False).status == "finished"


def test_bad_settings_are_shown_not_raised(home, tiny_model):
    launcher = Launcher(api.build_config(model=tiny_model))
    launcher.preflight.source.value = "/no/such.jsonl"
    assert launcher.submit() is None
    # The launcher says why nothing was launched; the pre-flight above it says what is wrong with the data.
    assert "the data could not be checked — see above" in launcher.error.value
    assert "cannot check:</b> data file not found: /no/such.jsonl" in launcher.preflight.status.value


def test_early_stopping_setting_needs_an_eval_interval(home, tiny_model):
    launcher = Launcher(api.build_config(model=tiny_model))
    launcher.preflight.check(wait=True)
    launcher.early_stopping.value = 3
    assert launcher.submit() is None and "needs eval.every" in launcher.error.value
    launcher.eval_every.value = 10
    config = launcher.config()
    assert (config.eval.every, config.eval.early_stopping, config.eval.early_stopping_metric) == (10, 3, "eval_loss")


def test_bare_magic_opens_the_launcher(home, ip):
    assert isinstance(ip.run_line_magic("finetune", ""), Launcher)


def test_modal_choice_gives_a_dated_cost_estimate_and_config(home, tiny_model):
    launcher = Launcher(api.build_config(model=tiny_model))
    launcher.preflight.check(wait=True)
    launcher.backend.value, launcher.gpu.value, launcher.gpu_count.value, launcher.budget.value = "modal", "H100", 2, 5.0
    assert "on Modal" in launcher.estimate.value and "prices of 2026-07-01" in launcher.estimate.value
    config = launcher.config()
    assert (config.backend, config.gpu, config.budget_usd) == ("modal", "H100:2", 5.0)


def test_estimate_includes_evaluation_and_follows_the_eval_fields(home, tiny_model):
    import re

    launcher = Launcher(api.build_config(model=tiny_model))
    launcher.preflight.check(wait=True)
    launcher.steps.value, launcher.eval_every.value, launcher.eval_samples.value = 40, 10, 24
    text = launcher.estimate.value
    assert "for 5 evaluations of 24 generated answers" in text  # base, steps 10/20/30/40
    minutes = int(re.search(r"\+ (\d+) min for", text).group(1))
    assert minutes >= 6  # 5 x 24 answers x 3.2 s
    launcher.eval_samples.value = 0
    assert "for 5 evaluations of 0 generated answers" in launcher.estimate.value
    launcher.eval_every.value = 0
    assert "for 2 evaluations" in launcher.estimate.value  # base and final

def test_settings_rows_wrap_and_modal_settings_show_only_for_modal(home, tiny_model):
    launcher = Launcher(api.build_config(model=tiny_model))
    settings = launcher.children[2]
    assert all(row.layout.flex_flow == "row wrap" for row in settings.children)
    assert launcher.modal_settings.layout.display == "none"  # local backend: no GPU, no budget
    assert launcher.gpu in launcher.modal_settings.children and launcher.budget in launcher.modal_settings.children
    launcher.backend.value = "modal"
    assert launcher.modal_settings.layout.display is None


@pytest.mark.train
def test_the_saved_output_is_the_launched_runs_dashboard(home, tiny_model):
    launcher = api.launcher(model=tiny_model)
    assert "New fine-tune" in launcher._repr_mimebundle_()["text/html"]
    launcher.steps.value = 2
    run = launcher.submit()
    assert run.wait(timeout=120, progress=False).status == "finished"
    bundle = launcher._repr_mimebundle_()
    assert bundle["text/plain"] == f"<launcher: run {run.id}>"
    assert "finished" in bundle["text/html"] and "data:image/svg+xml" in bundle["text/html"]
