"""A widget shown together with a static HTML copy of itself, in one output.

Live frontends draw the widget; everything else — a reopened (untrusted) notebook, nbviewer, GitHub, an
HTML export, VS Code without the kernel — shows the HTML instead of `Preflight(children=(VBox(...`.
The copy is refreshed through the output's display id when the widget's content changes."""

from __future__ import annotations

from typing import Any


class StaticCopy:
    """Mixin for ipywidgets classes: subclasses say what their static copy is."""

    _static_handle: Any = None

    def static_html(self) -> str:
        raise NotImplementedError

    def static_text(self) -> str:
        return f"<{type(self).__name__}>"

    def mimebundle(self) -> dict[str, Any]:
        return {"application/vnd.jupyter.widget-view+json": {"version_major": 2, "version_minor": 0,
                                                             "model_id": self.model_id},  # type: ignore[attr-defined]
                "text/html": self.static_html(), "text/plain": self.static_text()}

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return self.mimebundle()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        self._static_handle = display(self.mimebundle(), raw=True, display_id=True)

    def refresh_static(self) -> None:
        if self._static_handle is not None:
            self._static_handle.update(self.mimebundle(), raw=True)
