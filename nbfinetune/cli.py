"""Command line: `nbfinetune train | runs | delete | validate | export | deploy | serve | prepare-model |
make-tiny-model`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .config import FORMATS, SAMPLE_DATA, ConfigError, default_model
from .settings import CLI, add_flags, flag_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbfinetune",
                                     description="LoRA fine-tuning from notebooks and the shell.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="run a fine-tune headless on the local backend and wait for it")
    # The same flags as `%finetune`, from the settings table (--max-steps stays as an alias of --steps).
    add_flags(train, CLI, defaults={"data": SAMPLE_DATA}, notes={"model": f"default: {default_model()}"})
    train.add_argument("--config", help="YAML file with settings; flags override it")
    train.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    runs = sub.add_parser("runs", help="list runs")
    runs.add_argument("--json", action="store_true")

    delete = sub.add_parser("delete",
                            help="delete a run's directory (events, adapter, checkpoints); not while it runs")
    delete.add_argument("run_id")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    export = sub.add_parser("export", help="merge a run's adapter into its base model and save it (verified)")
    export.add_argument("run_id")
    export.add_argument("--out", help="output directory (default: the run's merged/ folder)")

    check = sub.add_parser("validate",
                           help="check a dataset row by row before training (no GPU, no training)")
    check.add_argument("path", help="file, directory, hub dataset id, or sample:people")
    check.add_argument("--format", default="auto", choices=FORMATS)
    check.add_argument("--model", default=None,
                       help="whose tokenizer and chat template to check against "
                            f"(default: {default_model()}); 'none' skips token checks")
    check.add_argument("--max-seq-len", dest="max_seq_len", type=int, default=512)
    check.add_argument("--strict", action="store_true", help="exit non-zero when any row is bad")
    check.add_argument("--json", action="store_true", help="print one JSON object")

    sub.add_parser("deploy", help="deploy the Modal app (GPU trainer + chat server); needs Modal credentials")

    sub.add_parser("prepare-model", help="make the offline demo model ready (converts the shipped GGUF once)")
    serve = sub.add_parser("serve",
                           help="serve runs' adapters (and their base models) as an OpenAI-compatible API")
    serve.add_argument("run_ids", nargs="*", metavar="RUN", help="run ids (default: the latest run)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--backend", choices=("local", "modal"), default="local")
    serve.add_argument("--api-key-env", dest="api_key_env",
                       help="take the API key from this environment variable instead of generating one")

    tiny = sub.add_parser("make-tiny-model", help="write a tiny random chat model for smoke tests")
    tiny.add_argument("directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    # Rows may hold bytes that are not UTF-8 (kept as surrogates to report them): print them escaped.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (ConfigError, FileNotFoundError, LookupError, ValueError, RuntimeError) as exc:
        print(f"nbfinetune {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    from . import api

    base = open(args.config, encoding="utf-8").read() if args.config else None
    settings = {s.name: getattr(args, s.name) for s in flag_settings(CLI)}
    run = api.finetune(base, display=False, backend="local", **settings)
    if not args.json:
        print(f"run {run.id} started: {run.path}", flush=True)
    summary = run.wait(progress=not args.json)
    state = run.store.state(run.id)
    # A finished run's losses as its trainer reported them; a run that ended otherwise: as far as it got.
    kept = state.finished
    first = kept.first_loss if kept and kept.first_loss is not None else state.first_loss
    last = kept.last_loss if kept and kept.last_loss is not None else state.last_loss
    result: dict[str, Any] = {"run_id": run.id, "status": summary.status,
                              "adapter_path": summary.adapter_path, "first_loss": first, "last_loss": last,
                              "eval_loss": summary.eval_loss, "metrics": summary.metrics,
                              "base_metrics": summary.base_metrics, "error": summary.error}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"run id: {run.id}\nstatus: {summary.status}\nadapter: {summary.adapter_path}\n"
              f"loss: {result['first_loss']} -> {result['last_loss']}")
        if summary.error:
            print(f"error: {summary.error}", file=sys.stderr)
    return 0 if summary.status == "finished" else 1


def _runs(args: argparse.Namespace) -> int:
    from . import api

    listing = api.runs()
    print(json.dumps([s.to_dict() for s in listing.runs]) if args.json else repr(listing))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from .data.prepare import DataError
    from .data.validate import validate

    try:
        _require_local_data(args.path)  # before the model: a typo must not wait for a model conversion
        tokenizer = None
        if (args.model or "").lower() != "none":
            from .core.models import resolve_model
            from .core.setup import load_tokenizer

            tokenizer = load_tokenizer(resolve_model(args.model or default_model()))
        result = validate(args.path, args.format, tokenizer, args.max_seq_len)
    except (DataError, OSError, ValueError, RecursionError, UnicodeError) as exc:
        # Never a traceback for a bad file: one message, and a JSON object when asked for one.
        print(json.dumps({"error": str(exc)}) if args.json else f"nbfinetune validate: error: {exc}",
              file=sys.stdout if args.json else sys.stderr)
        return 2
    report = result.report
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"{args.path}: {report.format} format, {report.valid} of {report.rows} rows usable"
              + (f", {report.truncated} truncated" if report.truncated else ""))
        if report.tokens:
            t = report.tokens
            print(f"tokens per row: min {t['min']} · median {t['median']} · p95 {t['p95']} · "
                  f"max {t['max']} · {t['total']} per epoch")
        for problem in report.problems[:50]:
            print(f"  {problem}")
        if report.problem_count > 50:
            print(f"  ... and {report.problem_count - 50} more")
    bad = any(p.severity == "error" for p in report.problems)
    return 0 if result.ok and not (args.strict and bad) else 1


def _require_local_data(path: str) -> None:
    import os

    from .config import is_local_path
    from .data.prepare import DataError
    from .data.sources import resolve

    source, _ = resolve(path, None)
    if is_local_path(source, os.getcwd()) and not os.path.exists(os.path.expanduser(source)):
        raise DataError(f"data file not found: {source}")


def _export(args: argparse.Namespace) -> int:
    from . import api

    result = api.attach(args.run_id, display=False).export(args.out)
    print(json.dumps(result))
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from .backends.modal_backend import ModalSetupError, deploy

    try:
        print(f"deployed Modal app {deploy()!r}")
    except ModalSetupError as exc:
        print(f"nbfinetune deploy: {exc}", file=sys.stderr)
        return 2
    return 0


def _prepare_model(args: argparse.Namespace) -> int:
    from .config import DEFAULT_MODEL
    from .core.models import resolve_model

    print(resolve_model(DEFAULT_MODEL))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import os

    from . import api
    from .backends import get_backend

    # A server in this process takes the address and key, and lives as long as this command does;
    # a deployed one (Modal) outlives it.
    in_process = get_backend(args.backend).serves_in_process
    options: dict[str, Any] = {"host": args.host, "port": args.port} if in_process else {}
    if args.api_key_env:  # the key of a local server and of a Modal deployment alike
        if not os.environ.get(args.api_key_env):
            print(f"nbfinetune serve: --api-key-env: {args.api_key_env} is not set", file=sys.stderr)
            return 2
        options["api_key"] = os.environ[args.api_key_env]
    server = api.serve(args.run_ids or None, backend=args.backend, **options)
    if in_process:
        try:
            _wait_for_interrupt()
        except KeyboardInterrupt:
            server.stop()
    return 0


def _wait_for_interrupt() -> None:
    import threading

    threading.Event().wait()


def _make_tiny_model(args: argparse.Namespace) -> int:
    from .testing import make_tiny_model

    print(make_tiny_model(args.directory))
    return 0


def _delete(args: argparse.Namespace) -> int:
    from . import api

    run = api.Run(args.run_id)
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"nbfinetune delete: error: pass --yes to delete run {run.id} without a prompt",
                  file=sys.stderr)
            return 2
        answer = input(f"Delete run {run.id} ({run.summary().describe()}) and {run.path}? [y/N] ")
        if answer.strip().lower() != "y":
            print("nothing deleted")
            return 1
    try:
        path = api.delete(run)
    except api.RunIsRunning as exc:
        print(f"nbfinetune delete: error: {exc}", file=sys.stderr)
        return 2
    print(f"deleted run {run.id} ({path})")
    return 0


_COMMANDS = {"train": _train, "runs": _runs, "delete": _delete, "export": _export, "validate": _validate,
             "deploy": _deploy, "prepare-model": _prepare_model, "make-tiny-model": _make_tiny_model,
             "serve": _serve}

if __name__ == "__main__":
    sys.exit(main())
