"""`import nbfinetune` and `%load_ext nbfinetune` must stay instant: no heavy imports at load time."""

import subprocess
import sys

HEAVY = ("torch", "transformers", "modal", "plotly", "peft", "datasets")


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_import_is_light():
    assert _loaded_after("import nbfinetune") == []


def test_load_ext_and_api_are_light():
    code = ("from IPython.testing.globalipapp import start_ipython\nip = start_ipython()\n"
            "ip.run_line_magic('load_ext', 'nbfinetune')\nimport nbfinetune.api, nbfinetune.cli")
    assert _loaded_after(code) == []


def test_lazy_attributes():
    import nbfinetune

    assert callable(nbfinetune.finetune)
    assert nbfinetune.RunConfig().model
