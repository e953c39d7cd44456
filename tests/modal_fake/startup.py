"""What Modal does when a container starts for a function: it rebuilds the function by importing the app's
module in the container — whose environment is the image's ENV plus the attached secrets, nothing of the
deploying machine's — and hydrates the function's dependencies (secrets, image, volumes) with the object
ids of the deployed definition. When the container's import defines other dependencies, the container
refuses to start, with Modal's message (modal 1.6.4: `_container_entrypoint.hydrate_function`, and
`_Object._hydrate` for an id of the wrong kind). Run as a script, this file is that import."""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .server import FakeModal, Function

# (module, function tag, environment) -> the dependencies the container's import defines
_IMPORTED: dict[tuple[str, str, tuple[tuple[str, str], ...]], list[dict]] = {}


def image_env(fake: FakeModal, image_id: str) -> dict[str, str]:
    """The ENV lines of the image and its bases, as the deploying client sent them (ImageGetOrCreate)."""
    image = fake.images.get(image_id)
    if image is None:
        return {}
    env: dict[str, str] = {}
    for base in image.base_images:
        env.update(image_env(fake, base.image_id))
    for command in image.dockerfile_commands:
        if command.startswith("ENV "):
            key, _, value = command[4:].partition("=")
            env[key.strip()] = " ".join(shlex.split(value))
    return env


def container_env(fake: FakeModal, function: Function) -> dict[str, str]:
    """The container's environment: a bare process, the image's ENV, the secrets' values, and the app's
    source on the path (Modal mounts it, add_local_python_source)."""
    names = {secret_id: name for name, secret_id in fake.secret_ids.items()}
    env = {"PATH": "/usr/bin:/bin", "HOME": str(fake.root / "container-home"), "MODAL_IS_REMOTE": "1"}
    env.update(image_env(fake, function.definition.image_id))
    for secret_id in function.definition.secret_ids:
        env.update(fake.secrets.get(names.get(secret_id, ""), {}))
    env["PYTHONPATH"] = _source_root(function.definition.module_name)
    return env


def _source_root(module: str) -> str:
    """Where this process imports the app's package from: the source the deploy uploaded."""
    spec = importlib.util.find_spec(module.split(".")[0])
    assert spec is not None and spec.origin is not None, module
    return str(Path(spec.origin).parents[1])


def definition_error(fake: FakeModal, function: Function) -> str | None:
    """Modal's refusal to start a container for `function`, or None when its import matches the deploy."""
    definition = function.definition
    if not definition.module_name or not definition.object_dependencies:
        return None  # not one of ours (the tests' direct calls): nothing to rebuild
    env = container_env(fake, function)
    (fake.root / "container-home").mkdir(parents=True, exist_ok=True)
    key = (definition.module_name, definition.function_name, tuple(sorted(env.items())))
    if key not in _IMPORTED:
        # Run from an empty folder, so nothing but PYTHONPATH puts the app's source on the path.
        script = f"import sys; sys.argv[1:] = {[definition.module_name, definition.function_name]!r}; " \
                 f"exec(compile(open({__file__!r}).read(), 'startup.py', 'exec'), {{'__name__': '__main__'}})"
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                             env=env, cwd=fake.root / "container-home")
        if out.returncode != 0:
            return f"importing {definition.module_name} in the container failed:\n{out.stderr[-2000:]}"
        _IMPORTED[key] = json.loads(out.stdout.splitlines()[-1])
    code_deps = _IMPORTED[key]
    object_ids = [dep.object_id for dep in definition.object_dependencies]
    if len(code_deps) != len(object_ids):
        return (f"Function has {len(code_deps)} dependencies but container got {len(object_ids)} "
                "object ids.\n"
                f"Code deps: [{', '.join(d['repr'] for d in code_deps)}]\n"
                f"Object ids: {object_ids}\n\n"
                "This can happen if you are defining Modal objects under a conditional statement that "
                "evaluates differently in the local and remote environments.")
    for dep, object_id in zip(code_deps, object_ids, strict=True):
        if not any(object_id.startswith(prefix + "-") for prefix in dep["prefixes"]):
            return (f"Can not hydrate {dep['type']}:  it has type prefixes {dep['prefixes']} but the "
                    f"object_id starts with {object_id[:3]}. This usually means the object name was "
                    "previously used for a different type. Rename the object/app or stop the previous "
                    "deployment and redeploy.")
    return None


def _main(module_name: str, tag: str) -> None:
    """In the container: import the app module and list the function's dependencies as Modal does
    (`service_deps` in modal/_runtime/user_code_imports.py)."""
    import warnings

    warnings.simplefilter("ignore")
    from modal._utils.async_utils import synchronizer

    module = importlib.import_module(module_name)
    obj = synchronizer._translate_in(getattr(module, tag.removesuffix(".*")))
    service = obj._get_class_service_function() if tag.endswith(".*") else obj
    deps = service._deps_(only_explicit_mounts=True)
    print(json.dumps([{"prefixes": list(d._type_prefixes), "type": str(type(d)), "repr": repr(d)}
                      for d in deps]))


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
