"""Chat widget: multi-turn, streamed tokens, system prompt, sampling settings, stop, base-vs-tuned."""

from __future__ import annotations

import html
import threading
from typing import Any

import ipywidgets as widgets

from .static import StaticCopy


class ChatWidget(StaticCopy, widgets.VBox):
    def __init__(self, model: Any, checkpoints: dict[str, str] | None = None, name: str = "chat",
                 others: dict[str, Any] | None = None) -> None:
        """others: more answer sources for the side-by-side comparison, by label — e.g. an
        EndpointChatModel for the API model an app uses today (nbfinetune.serve.client)."""
        self.model = model
        self.checkpoints = checkpoints or {}
        self.others = others or {}
        self.name = name
        self.history: list[dict[str, str]] = []
        self._stop = threading.Event()
        self.info = widgets.HTML(f"<span style='color:#555'>{html.escape(model.describe())}</span>")
        self.transcript = widgets.HTML(layout=widgets.Layout(max_height="420px", overflow="auto"))
        self.system = widgets.Text(placeholder="system prompt (optional)",
                                   layout=widgets.Layout(width="100%"))
        self.prompt = widgets.Textarea(placeholder="Ask the fine-tuned model…",
                                       layout=widgets.Layout(width="100%"))
        self.temperature = widgets.FloatSlider(value=0.0, min=0.0, max=1.5, step=0.05,
                                               description="temperature",
                                               style={"description_width": "initial"})
        self.max_tokens = widgets.IntSlider(value=256, min=16, max=2048, step=16, description="max tokens",
                                             style={"description_width": "initial"})
        options = [("nothing", ""), ("the base model", "base")]
        options += [(f"checkpoint {n}", n) for n in self.checkpoints]
        options += [(label, label) for label in self.others]
        self.compare_with = widgets.Dropdown(options=options, value="", description="also answer with",
                                             style={"description_width": "initial"})
        self.save_button = widgets.Button(description="Save as eval cases", icon="save",
                                          tooltip="Write this conversation's turns as chat rows (JSONL)")
        self.save_button.on_click(lambda _b: self.save_transcript())
        self.saved = widgets.HTML()
        self.send = widgets.Button(description="Send", button_style="primary", icon="paper-plane")
        self.stop_button = widgets.Button(description="Stop", icon="stop", disabled=True)
        self.clear = widgets.Button(description="Clear", icon="trash")
        self.send.on_click(lambda _b: self.submit())
        self.stop_button.on_click(lambda _b: self._stop.set())
        self.clear.on_click(lambda _b: self.reset())
        controls = widgets.HBox([self.send, self.stop_button, self.clear, self.compare_with])
        settings = widgets.HBox([self.temperature, self.max_tokens, self.save_button, self.saved])
        super().__init__([self.info, self.transcript, self.system, self.prompt, controls, settings])
        self.add_class("nbfinetune-chat")
        self._turns: list[tuple[str, str]] = []

    def reset(self) -> None:
        self.history.clear()
        self._turns.clear()
        self._render()

    def submit(self, text: str | None = None, wait: bool = False) -> None:
        text = (text if text is not None else self.prompt.value).strip()
        if not text:
            return
        self.prompt.value = ""
        thread = threading.Thread(target=self._answer, args=(text,), daemon=True)
        thread.start()
        if wait:
            thread.join()

    def _answer(self, text: str) -> None:
        self._stop.clear()
        self.send.disabled, self.stop_button.disabled = True, False
        self.history.append({"role": "user", "content": text})
        system = [{"role": "system", "content": self.system.value}] if self.system.value.strip() else []
        messages = system + self.history
        self._turns.append(("user", text))
        try:
            answer = self._stream_into("fine-tuned", messages, "default")
            self.history.append({"role": "assistant", "content": answer})
            other = self.compare_with.value
            if other in self.others:
                self._stream_into(other, messages, "default", self.others[other])
            elif other and self.model.adapter_path:
                if other != "base":
                    self.model.add_checkpoint(other, self.checkpoints[other])
                self._stream_into("base" if other == "base" else f"checkpoint {other}", messages, other)
        except Exception as exc:  # shown in the transcript; the widget stays usable
            self._turns.append(("error", f"{type(exc).__name__}: {exc}"))
            self._render()
        finally:
            self.send.disabled, self.stop_button.disabled = False, True
            self.refresh_static()

    def save_transcript(self, path: str | None = None) -> str | None:
        """Each user turn with the answer it got becomes one chat row (the conversation so far as context),
        ready to use as eval data: nbft.finetune(..., eval_data=path)."""
        import json
        import time
        from pathlib import Path

        from ..config import nbfinetune_home

        rows = []
        system = [{"role": "system", "content": self.system.value}] if self.system.value.strip() else []
        for index, message in enumerate(self.history):
            if message["role"] == "assistant":
                rows.append({"messages": system + self.history[: index + 1]})
        if not rows:
            self.saved.value = "<i>nothing to save yet</i>"
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = Path(path) if path else Path(nbfinetune_home()) / "eval-cases" / f"{self.name}-{stamp}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        self.saved.value = f"saved {len(rows)} case(s) to <code>{html.escape(str(target))}</code>"
        return str(target)

    def _stream_into(self, who: str, messages: list[dict[str, str]], adapter: str, source: Any = None) -> str:
        self._turns.append((who, ""))
        text = ""
        for chunk in (source or self.model).stream(messages, max_new_tokens=self.max_tokens.value,
                                                   temperature=self.temperature.value, adapter=adapter,
                                                   stop=self._stop):
            text += chunk
            self._turns[-1] = (who, text)
            self._render()
        self._render()
        return text.strip()

    def static_html(self) -> str:
        """What the saved notebook shows: the model line and the conversation so far."""
        return f"<div class='nbft-chat-static'>{self.info.value}{self.transcript.value}</div>"

    def static_text(self) -> str:
        return f"<chat with {self.name}: {sum(who == 'user' for who, _ in self._turns)} question(s)>"

    def _render(self) -> None:
        # Checkpoints and other models: white.
        colors = {"user": "#eef", "fine-tuned": "#efe", "base": "#f4f4f4", "error": "#fdd"}
        self.transcript.value = "".join(
            f"<div style='background:{colors.get(who, '#fff')};padding:4px 8px;margin:2px 0;"
            f"border-radius:4px;white-space:pre-wrap'><b>{html.escape(who)}:</b> {html.escape(text)}</div>"
            for who, text in self._turns)
