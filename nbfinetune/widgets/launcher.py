"""Launcher: choose model, data (with its pre-flight check), LoRA and training settings, see an estimate,
and Launch — the launcher then turns into the run's live dashboard."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets

from ..config import RunConfig
from ..settings import BY_NAME, build_config
from .preflight import Preflight
from .static import StaticCopy

# Assumed local throughput for the estimate: measured on 2 CPU cores, fp32, SmolLM2-135M LoRA
# (bench/bench_trainer.py: 270 on varied data, 430 on the demo set). Stated next to the estimate,
# since other machines and data differ.
CPU_TOKENS_PER_S = 300
# Generating one evaluation answer (64 new tokens) on the same machine: the issue report measured 324 s for
# 100 prompts with SmolLM2-135M, ~3.2 s each. Eval loss is a forward pass only, ~3x the training rate.
CPU_S_PER_GENERATED_ANSWER = 3.2


# The fields that are settings of the table (nbfinetune.settings): each is the launcher's attribute of
# the same name, and its value is that setting's keyword; 0 leaves the settings below unset.
SETTING_FIELDS = ("steps", "lr", "batch_size", "r", "alpha", "eval_samples", "eval_every", "early_stopping",
                  "backend", "budget", "quantization", "name")
_ZERO_IS_UNSET = ("eval_every", "early_stopping", "budget")


def _number(setting: str, description: str, value: float, **limits: Any) -> widgets.Widget:
    """A number field for one setting: whole or real as the table types it, its help as the tooltip."""
    box = widgets.BoundedIntText if BY_NAME[setting].type is int else widgets.BoundedFloatText
    return box(value=value, description=description, tooltip=BY_NAME[setting].help,
               style={"description_width": "110px"}, layout=widgets.Layout(width="230px"), **limits)


class Launcher(StaticCopy, widgets.VBox):
    def __init__(self, defaults: RunConfig | None = None, launch: Any = None) -> None:
        config = defaults or RunConfig()
        self._launch = launch
        self._config_eval_fraction = config.data.eval_fraction
        self.run: Any = None
        self.preflight = Preflight(model=config.model, max_seq_len=config.data.max_seq_len)
        self.preflight.source.value = config.data.path
        self.steps = _number("steps", "steps", config.train.max_steps or 100, min=1, max=10_000_000)
        self.lr = _number("lr", "learning rate", config.train.lr, min=1e-7, max=1.0, step=1e-4)
        self.batch_size = _number("batch_size", "batch size", config.train.batch_size, min=1, max=4096)
        self.r = _number("r", "LoRA r", config.lora.r, min=1, max=1024)
        self.alpha = _number("alpha", "LoRA alpha", config.lora.alpha, min=0.01, max=4096)
        self.eval_samples = _number("eval_samples", "eval samples", config.eval.samples, min=0, max=10_000)
        self.eval_every = _number("eval_every", "eval every", config.eval.every or 0, min=0, max=10_000_000)
        self.early_stopping = _number("early_stopping", "early stop", config.eval.early_stopping or 0, min=0,
                                      max=1000)
        self.early_stopping.tooltip = ("stop after this many evaluations without a better eval loss "
                                       "and keep the best adapter (0: off; needs 'eval every')")
        from ..pricing import price_table

        self.backend = widgets.Dropdown(options=[("local (this machine)", "local"), ("Modal GPU", "modal")],
                                        value=config.backend, description="backend",
                                        style={"description_width": "110px"})
        self.gpu = widgets.Dropdown(options=list(price_table()["per_gpu_second"]),
                                    value=config.gpu.split(":")[0],
                                    description="GPU", style={"description_width": "60px"},
                                    layout=widgets.Layout(width="200px"))
        self.gpu_count = widgets.BoundedIntText(value=1, min=1, max=8, description="×",
                                                style={"description_width": "20px"},
                                                layout=widgets.Layout(width="90px"))
        self.budget = widgets.BoundedFloatText(value=0.0, min=0.0, max=100000.0, step=1.0,
                                               description="budget $",
                                               tooltip="Modal: cancel at this spend (0: no cap)",
                                               style={"description_width": "70px"},
                                               layout=widgets.Layout(width="170px"))
        self.quantization = widgets.Dropdown(options=[("base weights as stored (LoRA)", None),
                                                      ("4-bit NF4 (QLoRA)", "nf4")],
                                             value=config.train.quantization, description="weights",
                                             style={"description_width": "60px"})
        self.name = widgets.Text(description="run name", placeholder="optional",
                                 style={"description_width": "110px"})
        self.estimate = widgets.HTML()
        self.error = widgets.HTML()
        self.launch_button = widgets.Button(description="Launch", button_style="success", icon="rocket")
        self.launch_button.on_click(lambda _b: self.submit())
        self.eval_samples.tooltip = ("prompts answered by generation at each evaluation "
                                     "(base, every 'eval every' steps, and the end); 0: eval loss only")
        for control in (self.steps, self.batch_size, self.preflight.summary, self.backend, self.gpu,
                        self.gpu_count, self.eval_samples, self.eval_every):
            control.observe(lambda _change: self.update_estimate(), "value")
        # GPU and budget mean something only on Modal: hidden for the local backend.
        self.modal_settings = widgets.HBox([self.gpu, self.gpu_count, self.budget])
        self.backend.observe(lambda _change: self._show_backend_settings(), "value")
        self._show_backend_settings()
        wrap = widgets.Layout(flex_flow="row wrap")  # rows wrap in a narrow notebook instead of overflowing
        settings = widgets.VBox([
            widgets.HBox([self.steps, self.lr, self.batch_size], layout=wrap),
            widgets.HBox([self.r, self.alpha, self.eval_samples, self.eval_every, self.early_stopping],
                         layout=wrap),
            widgets.HBox([self.backend, self.modal_settings, self.quantization, self.name], layout=wrap),
        ])
        super().__init__([widgets.HTML("<h3>New fine-tune</h3>"), self.preflight, settings, self.estimate,
                          widgets.HBox([self.launch_button, self.error])])
        self.add_class("nbfinetune-launcher")
        self.update_estimate()

    def static_html(self) -> str:
        """Saved with the notebook: the launched run's dashboard copy, or what was being set up."""
        if self.run is not None and self.run._dashboard is not None:
            return self.run._dashboard.mimebundle()["text/html"]
        return ("<div><b>New fine-tune</b> (the launcher; run the cell to use it)</div>"
                + self.preflight.static_html())

    def static_text(self) -> str:
        return f"<launcher: run {self.run.id}>" if self.run is not None else "<launcher>"

    def _show_backend_settings(self) -> None:
        self.modal_settings.layout.display = None if self.backend.value == "modal" else "none"

    def config(self) -> RunConfig:
        from ..data.materialize import materialize

        settings = {name: getattr(self, name).value for name in SETTING_FIELDS}
        settings["name"] = settings["name"].strip() or None
        settings |= {name: settings[name] or None for name in _ZERO_IS_UNSET}
        data = self.preflight.selected_source()
        return build_config(
            model=self.preflight.model.value.strip(), data=materialize(data)[0],
            format=self.preflight.format.value, max_seq_len=self.preflight.max_seq_len.value,
            gpu=self.gpu_spec(), **settings)

    def gpu_spec(self) -> str:
        return self.gpu.value + (f":{self.gpu_count.value}" if self.gpu_count.value > 1 else "")

    def update_estimate(self) -> None:
        validation = self.preflight.validation
        tokens = validation.report.tokens if validation is not None else {}
        if not tokens:
            self.estimate.value = "<i>Check the data to see an estimate of tokens and time.</i>"
            return
        rows = max(1, validation.report.valid)
        per_step = tokens["total"] / rows * self.batch_size.value
        total = per_step * self.steps.value
        epochs = self.steps.value * self.batch_size.value / rows
        head = (f"<b>estimate:</b> ~{per_step:,.0f} tokens per step · {total:,.0f} tokens in all "
                f"(~{epochs:.2f} epochs) · ")
        if self.backend.value == "modal":
            from ..pricing import estimate

            guess = estimate(self.gpu_spec(), int(total), _parameters(self.preflight.model.value.strip()))
            self.estimate.value = head + f"on Modal: {html.escape(str(guess))}" + self._memory_note()
        else:
            evaluations = self.evaluations()
            eval_rows = max(1, round(rows * self._config_eval_fraction)) if validation else 0
            eval_s = evaluations * (self.eval_samples.value * CPU_S_PER_GENERATED_ANSWER
                                    + eval_rows * tokens["total"] / rows / (3 * CPU_TOKENS_PER_S))
            train_s = total / CPU_TOKENS_PER_S
            self.estimate.value = head + (
                f"local cost: $0 (your machine). On 2 CPU cores a 135M model trains "
                f"~{CPU_TOKENS_PER_S} tokens/s and answers an eval prompt in "
                f"~{CPU_S_PER_GENERATED_ANSWER:.0f} s, so this run takes about "
                f"{(train_s + eval_s) / 60:,.0f} min there ({train_s / 60:,.0f} min training "
                f"+ {eval_s / 60:,.0f} min for {evaluations} evaluations of {self.eval_samples.value} "
                "generated answers); a GPU is far faster.")

    def evaluations(self) -> int:
        """How many times the run evaluates: the base model, every `eval every` steps, and at the end."""
        every = self.eval_every.value
        periodic = self.steps.value // every if every else 0
        final = 0 if every and self.steps.value % every == 0 else 1  # the last periodic one may be it
        return 1 + periodic + final

    def _memory_note(self) -> str:
        """The memory planner's verdict for the chosen GPU, and the cheapest GPU that fits."""
        from ..planner import GIB, USABLE, DoesNotFit, choose_gpu, plan_memory
        from ..pricing import price_table

        try:
            config = build_config(model=self.preflight.model.value.strip(), batch_size=self.batch_size.value,
                                  max_seq_len=self.preflight.max_seq_len.value, r=self.r.value,
                                  quantization=self.quantization.value)
            plan = plan_memory(config.model, config)
            best = choose_gpu(config.model, config)
        except DoesNotFit as exc:
            return f"<br><span style='color:#dc3545'>memory: {html.escape(str(exc))}</span>"
        except Exception:  # an estimate must never stop the launcher
            return ""
        fits = plan.total <= price_table()["memory_gib"][self.gpu.value] * GIB * USABLE
        verdict = "fits" if fits else "<b>does not fit</b>"
        return (f"<br>memory: {html.escape(str(plan))} — {verdict} on {html.escape(self.gpu.value)}; "
                f"cheapest that fits: {html.escape(str(best))}")

    def submit(self) -> Any:
        # Pre-flight first: nothing is launched on data that has no usable row.
        self.preflight.validation = None
        self.preflight.check(wait=True)
        validation = self.preflight.validation
        problem = None
        if validation is None:
            problem = "the data could not be checked — see above"
        elif validation.report.valid == 0:
            problem = "no usable rows in the data — see the problems above"
        try:
            config = None if problem else self.config()
        except Exception as exc:  # settings a person can fix: shown here, not as a traceback
            problem = str(exc)
        if problem or config is None:
            self.error.value = f"<span style='color:#dc3545'>{html.escape(problem or '')}</span>"
            return None
        self.error.value = ""
        if self._launch is None:  # a view launches through what it was given: widgets don't import the API
            self.error.value = ("<span style='color:#dc3545'>this launcher was made without a launch "
                                "function: use nbfinetune.launcher()</span>")
            return None
        self.run = self._launch(config)
        dashboard = self.run.dashboard()
        self.children = [widgets.HTML(f"<b>launched run {html.escape(self.run.id)}</b>"), dashboard]
        dashboard._display_handle = self._static_handle  # the run's end refreshes this output's copy
        self.refresh_static()
        return self.run


def _parameters(model: str) -> int:
    """Parameter count from the model's config (no weights loaded); 135M when it cannot be read."""
    try:
        from transformers import AutoConfig

        from ..core.models import resolve_model

        config = AutoConfig.from_pretrained(resolve_model(model))
        hidden, layers = config.hidden_size, config.num_hidden_layers
        inner = getattr(config, "intermediate_size", 4 * hidden)
        return int(layers * (4 * hidden * hidden + 3 * hidden * inner) + config.vocab_size * hidden)
    except Exception:  # an estimate must never stop the launcher
        return 135_000_000
