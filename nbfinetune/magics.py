"""IPython magics: parse the line, call the Python API, display. Nothing else lives here.

    %load_ext nbfinetune
    %finetune                                             # the launcher widget
    run = %finetune --data sample:people --steps 40      # launch; live dashboard in the cell
    %%finetune --steps 100                                # the cell body is a YAML config
    %finetune check [DATA]                                # pre-flight view of a dataset
    %finetune compare RUN RUN ...                         # overlaid curves, a table of settings and metrics
    %finetune runs | attach [RUN] | cancel [RUN] [--hard] | resume [RUN] | export [RUN] [--out DIR]
    %finetune delete RUN [--yes]                          # remove a run's directory (not while it runs)
    %finetune chat [RUN] [message]
    server = %finetune serve [RUN ...] [--backend local|modal] [--port P]   # an OpenAI-compatible API
    %chat What is 2 + 2?                                  # ask the latest run's adapter, streamed
    %%chat --run RUN                                      # the cell body is the (multi-line) message
    %chat --endpoint URL --model M [--key-env VAR] [--run RUN] message
                                                          # any OpenAI-compatible API, or beside a run
"""

from __future__ import annotations

import argparse
import re
import shlex
from typing import Any, NoReturn

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from traitlets import Unicode

from . import api
from .config import SAMPLE_DATA, ConfigError, default_model
from .settings import MAGIC, add_flags, flag_settings

SUBCOMMANDS = ("runs", "compare", "check", "attach", "cancel", "resume", "export", "chat", "delete", "serve")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no SystemExit, no traceback wall
        raise UsageError(f"{self.prog}: {message}")


def train_parser() -> _Parser:
    parser = _Parser(prog="%finetune", add_help=False,
                     description="Launch a LoRA fine-tune. Subcommands: check [DATA], runs, attach [RUN], "
                                 "cancel [RUN] [--hard], resume [RUN], export [RUN] [--out DIR], "
                                 "chat [RUN] [message], delete RUN [--yes].")
    add_flags(parser, MAGIC, notes={"model": "default: %%config FinetuneMagics.default_model"})
    add = parser.add_argument
    add("--no-dashboard", dest="dashboard", action="store_false")
    add("--background", action="store_true",
        help="in a terminal (no widgets), return at once instead of showing progress until the run ends")
    add("-h", "--help", action="store_true")
    return parser


@magics_class
class FinetuneMagics(Magics):
    default_model = Unicode(help="model used when --model is not given").tag(config=True)
    default_data = Unicode(SAMPLE_DATA, help="data used when --data is not given").tag(config=True)
    default_backend = Unicode("local", help="backend used when --backend is not given").tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell, **kwargs)
        if not self.default_model:
            self.default_model = default_model()

    @line_cell_magic
    def finetune(self, line: str, cell: str | None = None) -> Any:
        """%finetune [flags] | SUBCOMMAND ...; as %%finetune, the cell body is a YAML config and the line's
        flags override it."""
        words = _split(line)
        if cell is not None and cell.strip():
            return self._handle_train(words, yaml_config=cell)
        if not words:
            return api.launcher(model=self.default_model, data=self.default_data)
        if words[0] in ("-h", "--help", "help"):
            print(train_parser().format_help())
            return None
        if words[0] in SUBCOMMANDS:
            return getattr(self, f"_handle_{words[0]}")(words[1:])
        return self._handle_train(words)

    @line_cell_magic
    def chat(self, line: str, cell: str | None = None) -> Any:
        """%chat [--run RUN] [--max-tokens N] [--temperature T] message — stream the adapter's answer.

        As a cell magic (%%chat), the cell body is the message, so it may span lines.
        Without a message, opens the chat widget."""
        parser = _Parser(prog="%chat", add_help=False)
        parser.add_argument("--run")
        parser.add_argument("--max-tokens", dest="max_new_tokens", type=int, default=256)
        parser.add_argument("--temperature", type=float, default=0.0)
        parser.add_argument("--system")
        parser.add_argument("--endpoint", help="an OpenAI-compatible base URL: alone, chat with it; "
                                               "with --run, it answers beside the run")
        parser.add_argument("--model", help="the endpoint's model name")
        parser.add_argument("--key-env", dest="key_env", default="OPENAI_API_KEY",
                            help="environment variable holding the endpoint's API key")
        parser.add_argument("message", nargs="*")
        args = parser.parse_args(_split(line))
        message = cell.strip() if cell and cell.strip() else (" ".join(args.message) or None)
        sampling = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                    "system": args.system}
        endpoints = []
        if args.endpoint:
            if not args.model:
                raise UsageError("%chat --endpoint needs --model NAME (the endpoint's model)")
            endpoints = [api.endpoint(args.endpoint, args.model, args.key_env)]
            if not args.run:
                return _guard(lambda: api.chat(endpoints[0], message, **(sampling if message else {})))
        run = _named_run([args.run] if args.run else [])
        return _guard(lambda: run.chat(message, compare=endpoints, **sampling) if message
                      else run.chat(compare=endpoints))

    # --- handlers --------------------------------------------------------------------------------
    def _handle_train(self, words: list[str], yaml_config: str | None = None) -> api.Run | None:
        args = train_parser().parse_args(words)
        if args.help:
            print(train_parser().format_help())
            return None
        settings = {s.name: getattr(args, s.name) for s in flag_settings(MAGIC)
                    if getattr(args, s.name) is not None}
        base = _yaml_settings(yaml_config) if yaml_config is not None else {}
        # The magic's defaults fill what neither the YAML cell nor the flags set.
        base.setdefault("model", self.default_model)
        base.setdefault("backend", self.default_backend)
        if not isinstance(base.setdefault("data", {}), dict):
            raise UsageError("'data' in the YAML config must be a mapping, e.g. data: {path: train.jsonl}")
        base["data"].setdefault("path", self.default_data)
        run = _guard(lambda: api.finetune(base, display=None if args.dashboard else False, **settings))
        if run is not None and args.dashboard and not args.background and not api._in_notebook():
            # No widgets here (terminal IPython, a script): show progress as text and end with a summary.
            print(f"run {run.id} started: {run.path}")
            run.wait(progress=True)
        if yaml_config is not None and getattr(run, "_dashboard", None) is not None:
            # A cell magic's value cannot be assigned, only shown: under the live dashboard it would be a
            # `<Run …: pending>` line that never changes. `nbft.attach()` gives the Run.
            return None
        return run

    def _handle_compare(self, words: list[str]) -> Any:
        if len(words) < 1:
            raise UsageError("%finetune compare RUN [RUN ...]")
        run_ids: list[str | api.Run] = list(words)  # api.compare takes ids or Runs
        return _guard(lambda: api.compare(run_ids))

    def _handle_runs(self, words: list[str]) -> api.RunList:
        return api.runs()

    def _handle_check(self, words: list[str]) -> Any:
        parser = _Parser(prog="%finetune check", add_help=False)
        parser.add_argument("data", nargs="?", default=self.default_data)
        parser.add_argument("--model", default=self.default_model)
        parser.add_argument("--max-seq-len", dest="max_seq_len", type=int, default=512)
        args = parser.parse_args(words)
        return api.preflight(args.data, args.model, args.max_seq_len)

    def _handle_attach(self, words: list[str]) -> api.Run:
        return _guard(lambda: api.attach(words[0] if words else None))

    def _handle_cancel(self, words: list[str]) -> None:
        hard = "--hard" in words
        ids = [w for w in words if w != "--hard"]
        run = _named_run(ids)
        run.cancel(hard=hard)
        print(f"{'killing' if hard else 'cancelling'} run {run.id}; events and checkpoints so far are kept")

    def _handle_resume(self, words: list[str]) -> api.Run:
        run = _named_run(words or [_guard(api.latest_resumable)])
        _guard(run.resume)
        return _guard(lambda: api.attach(run.id))

    def _handle_export(self, words: list[str]) -> dict[str, Any]:
        out = words[words.index("--out") + 1] if "--out" in words[:-1] else None
        ids = [w for w in words if w != "--out" and w != out]
        run = _named_run(ids)
        result = _guard(lambda: run.export(out))
        print(f"merged model saved to {result['path']} (verified: max logit difference "
              f"{result['max_logit_difference']:.1e})")
        return result

    def _handle_delete(self, words: list[str]) -> None:
        ids = [w for w in words if w != "--yes"]
        if len(ids) != 1:
            raise UsageError("%finetune delete RUN [--yes]: name exactly one run")
        run = _named_run(ids)
        if "--yes" not in words:
            print(f"This deletes run {run.id} ({run.summary().describe()}) and everything in {run.path}.\n"
                  f"To confirm: %finetune delete {run.id} --yes")
            return
        path = _guard(run.delete)
        print(f"deleted run {run.id} ({path})")

    def _handle_chat(self, words: list[str]) -> Any:
        run_id = words[0] if words and _is_run_id(words[0]) else None
        message = " ".join(words[1:] if run_id else words) or None
        run = _named_run([run_id] if run_id else [])
        return _guard(lambda: run.chat(message))

    def _handle_serve(self, words: list[str]) -> Any:
        parser = _Parser(prog="%finetune serve", add_help=False)
        parser.add_argument("run_ids", nargs="*")
        parser.add_argument("--backend", choices=("local", "modal"), default=self.default_backend)
        parser.add_argument("--port", type=int)
        parser.add_argument("--host")
        args = parser.parse_args(words)
        options = {k: v for k, v in (("port", args.port), ("host", args.host)) if v is not None}
        return _guard(lambda: api.serve(args.run_ids or None, backend=args.backend, **options))


# `%chat Who are you?`: IPython reads a trailing `?` as a help request ("Object `you` not found"). A chat
# line is a message, so it is turned into the magic call before the help transformer sees it.
_CHAT_LINE = re.compile(r"^(?P<indent>[ \t]*)(?:(?P<target>[\w.]+)[ \t]*=[ \t]*)?"
                        r"%(?P<magic>chat|finetune[ \t]+chat)"
                        r"(?P<args>[ \t]+.*\?)[ \t]*$")  # `%chat?` alone stays a help request


def keep_question_marks(lines: list[str]) -> list[str]:
    """IPython cleanup transform: `%chat ...?` and `x = %chat ...?` call the magic with the `?` kept."""
    if lines and lines[0].lstrip().startswith("%%"):
        return lines  # a cell magic: its body is not Python and is passed on as it is
    out = []
    for line in lines:
        match = _CHAT_LINE.match(line.rstrip("\n"))
        if match is None:
            out.append(line)
            continue
        magic, args = match["magic"].split()[0], match["args"].strip()
        if match["magic"] != "chat":  # %finetune chat ...
            args = f"chat {args}"
        call = f"get_ipython().run_line_magic({magic!r}, {args!r})"
        target = f"{match['target']} = " if match["target"] else ""
        out.append(f"{match['indent']}{target}{call}" + ("\n" if line.endswith("\n") else ""))
    return out


def register_transformers(shell: Any) -> None:
    transforms = shell.input_transformer_manager.cleanup_transforms
    if keep_question_marks not in transforms:
        transforms.append(keep_question_marks)


def _named_run(words: list[str]) -> api.Run:
    """The run named by the first word, or the latest run; no dashboard."""
    return _guard(lambda: api.attach(words[0] if words else None, display=False))


def _yaml_settings(text: str) -> dict[str, Any]:
    from .config import load_yaml

    try:
        values = load_yaml(text) or {}
    except ConfigError as exc:
        raise UsageError(str(exc).replace("the config", "the cell", 1)) from None
    if not isinstance(values, dict):
        raise UsageError("the cell must be a YAML mapping of settings, e.g. 'train: {lr: 2e-4}'")
    return values


def _is_run_id(word: str) -> bool:
    from .runs import RunStore

    try:
        return RunStore().exists(word)
    except ValueError:
        return False


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"cannot parse arguments: {exc}") from None


def _guard(action: Any) -> Any:
    """Turn the errors a user can fix into one-line UsageErrors instead of tracebacks."""
    from .data.prepare import DataError
    from .runs import RunNotFound

    try:
        return action()
    except (ConfigError, DataError, RunNotFound, LookupError, FileNotFoundError, ValueError,
            RuntimeError) as exc:
        raise UsageError(str(exc)) from None
