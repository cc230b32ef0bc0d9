"""The ``genroute`` command: run, plan, batch, providers (and providers reset), budget, cache, jobs.

Errors print what happened and what to do, with a distinct exit code per kind
(see :mod:`genroute.errors`); a traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import stat
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, BinaryIO, Literal, TextIO, Union, get_args, get_origin

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .config import load_settings
from .errors import GenrouteError, InvalidRequest, PluginError, UnexpectedError
from .media import MediaInput
from .money import fmt_usd
from .plugins import call_each, default_plugin_manager
from .provider import catalogue_tasks
from .router import BatchItem, Router, invalid_request_from
from .secrets import redact
from .store import ResultStore
from .types import REQUEST_TYPES, TASKS, TIERS, RequestModel, Result, parse_request, tasks_with_field

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
EXIT_PARTIAL = 10
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a command whose reader closed the pipe
EXIT_TERMINATED = 143  # 128 + SIGTERM: stopped by `kill`, `timeout`, `docker stop` or systemd

_MEDIA_FIELD = {
    "image-to-image": "image",
    "inpaint": "image",
    "upscale": "image",
    "remove-background": "image",
    "image-to-video": "image",
    "speech-to-text": "audio",
}
_TEXT_FIELD = {"text-to-speech": "text"}
_BY_TASK_NAME: dict[str, type[RequestModel]] = {str(t): c for t, c in REQUEST_TYPES.items()}  # by what users type


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code.

    A reader that goes away (``genroute batch … | head -1``) ends the command quietly with
    :data:`EXIT_BROKEN_PIPE`, as a Unix tool killed by SIGPIPE would; work in flight is cancelled on the way out,
    so its reservations are released or settled. SIGTERM is taken as Ctrl-C is (:class:`_Termination`) and ends
    with :data:`EXIT_TERMINATED`.
    """
    termination = _Termination()
    try:
        with termination.handled():
            return _main(argv, termination)
    except BrokenPipeError:
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE


class _Termination:
    """SIGTERM stops a command as Ctrl-C does: work in flight is cancelled (remote predictions too), and its
    reservations are settled for what was billed or released, instead of the process vanishing mid-call."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def handled(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.requested = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # between event loops: stop where it stands, as Ctrl-C would
            raise KeyboardInterrupt from None
        # Inside a command's event loop: cancel its tasks, as asyncio does on Ctrl-C, so each request's own
        # cleanup runs (the remote prediction cancelled, the reservation settled or released).
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.call_soon_threadsafe(lambda: None)  # wake the loop if it sleeps waiting for I/O


def _stdout_to_devnull() -> None:
    """Point standard output at the null device, so the interpreter's flush at exit does not fail on the
    closed pipe again (the recipe of the Python docs, "Note on SIGPIPE")."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no file descriptor: nothing to flush
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _main(argv: Sequence[str] | None, termination: _Termination | None = None) -> int:
    try:
        parser = _parser()  # loads plugins, which may fail: that is a plugin error, said in one line
    except GenrouteError as exc:
        print(f"genroute: error: {redact(exc.message)} — {redact(exc.hint)}", file=sys.stderr)
        return exc.exit_code
    args = parser.parse_args(argv)
    out = _Console(highlight=False, soft_wrap=True)
    if not out.is_terminal:  # pipes and files get whole lines, not an 80-column wrap
        out = _Console(highlight=False, soft_wrap=True, width=200)
    err = _Console(stderr=True, highlight=False, soft_wrap=True)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_RedactingFilter())
    try:
        return int(args.handler(args, out, err))
    except GenrouteError as exc:
        # One line says what happened and what to do; details (say, each rejected offer) follow it.
        first, _, details = redact(exc.message).partition("\n")
        err.print(f"genroute: error: {first.rstrip(':')} — {redact(exc.hint)}", markup=False)
        if details:
            err.print(details, markup=False)
        if args.debug:
            err.print(redact(traceback.format_exc()), markup=False)
        return exc.exit_code
    except (KeyboardInterrupt, asyncio.CancelledError):
        if termination is not None and termination.requested:  # SIGTERM: its tasks were cancelled
            err.print("genroute: terminated", markup=False)
            return EXIT_TERMINATED
        if not isinstance(sys.exc_info()[1], KeyboardInterrupt):
            raise  # a cancellation nobody asked for: a bug, not an interruption
        err.print("genroute: interrupted", markup=False)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        raise  # the reader of our output went away: not a bug, see main()
    except Exception as exc:  # a bug: say so plainly, keep the traceback for --debug
        err.print(f"genroute: internal error: {redact(f'{type(exc).__name__}: {exc}')}", markup=False)
        if args.debug:
            err.print(redact(traceback.format_exc()), markup=False)
        else:
            err.print("  what to do: run again with --debug and report the traceback", markup=False)
        return EXIT_INTERNAL


class _Console(Console):
    """A rich Console whose closed pipe ends the command as main() says (rich's own exits with code 1)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True  # nothing more to write there
        raise BrokenPipeError


class _RedactingFilter(logging.Filter):
    """Mask tokens in every log line, tracebacks included (they quote exception messages)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip())
            record.exc_info = None
        return True


def _common_options(defaults: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after the command name.

    Sub-commands get them with suppressed defaults, so ``genroute --profile dev run`` is not undone by
    the sub-command's own default.
    """
    common = argparse.ArgumentParser(add_help=False)
    kw: dict[str, Any] = {} if defaults else {"default": argparse.SUPPRESS}
    common.add_argument(
        "--config", type=_config_path, help="plugins.toml (default: $GENROUTE_CONFIG, ./plugins.toml)", **kw
    )
    common.add_argument(
        "--profile",
        type=_profile_name,
        help="profile (default: $GENROUTE_PROFILE, then the file's default)",
        **kw,
    )
    flag: dict[str, Any] = {"action": "store_true", **kw}
    common.add_argument("--json", help="machine-readable output", **flag)
    common.add_argument("--debug", help="verbose logs and tracebacks", **flag)
    return common


def _profile_name(text: str) -> str:
    """``--profile``'s value: a name, not empty (an empty one would silently mean the default profile)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a profile, not be empty (leave --profile out for the default)")
    return text


def _config_path(text: str) -> Path:
    """``--config``'s value: a path, not empty (``Path("")`` would be the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a plugins.toml file, not be empty")
    return Path(text)


def _at_least_one(text: str) -> int:
    """A count option's value (``--concurrency``): a whole number of at least 1, refused as a bad command line."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    common = _common_options(defaults=False)
    parser = argparse.ArgumentParser(
        prog="genroute",
        description="Route generative-AI requests to the cheapest provider within budget.",
        parents=[_common_options(defaults=True)],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[common], help="run one request")
    run.add_argument("prompt", nargs="?", help="the prompt (or the text to speak)")
    run.add_argument("--task", choices=TASKS, default=None, help="default: text-to-image")
    run.add_argument("--tier", choices=TIERS, default=None)
    # Strings, not Paths: a Path would fold the "//" of an http(s) URL.
    run.add_argument("--input", help="input image or audio (file or http(s) URL) for tasks that take one")
    run.add_argument("--mask", help="mask image for inpaint (white = repaint)")
    run.add_argument("--seed", type=int)
    run.add_argument("--num-outputs", type=int)
    run.add_argument("--aspect-ratio")
    run.add_argument("--provider", dest="pin_provider", help="pin one provider")
    run.add_argument("--model", dest="pin_model", help="pin one model")
    run.add_argument("--cache", choices=["use", "refresh", "bypass"], default=None)
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="any request field; repeatable")
    run.add_argument("--output-dir", type=Path, default=Path("out"), help="where files are written (default: out/)")
    run.set_defaults(handler=cmd_run)

    plan = sub.add_parser("plan", parents=[common], help="where each request of a JSONL file would go; spends nothing")
    plan.add_argument("file", type=Path)
    plan.set_defaults(handler=cmd_plan)

    batch = sub.add_parser("batch", parents=[common], help="run every request of a JSONL file")
    batch.add_argument("file", type=Path)
    batch.add_argument("--concurrency", type=_at_least_one, default=8, help="requests in flight at once (default: 8)")
    batch.add_argument("--results", type=_output_path, help="append JSONL results here (default or -: stdout)")
    batch.add_argument("--no-progress", action="store_true")
    batch.set_defaults(handler=cmd_batch)

    providers = sub.add_parser(
        "providers",
        parents=[common],
        help="installed providers, tasks, tiers, prices; `providers reset NAME` brings one back into rotation",
        usage="%(prog)s [options] [reset PROVIDER [PROVIDER ...]]",
        description="List the providers with their status and catalogue; `reset` brings providers back into rotation.",
    )
    providers.set_defaults(handler=cmd_providers)
    # prog: without it argparse builds each action's name from the usage above ("… [reset …] reset").
    providers_actions = providers.add_subparsers(dest="providers_action", metavar="ACTION", prog=providers.prog)
    reset = providers_actions.add_parser(
        "reset",
        parents=[common],
        help="bring providers back into rotation now (after adding credit, say)",
        description="Forget that each PROVIDER withdrew itself (say, out of credit) and its cooldown after "
        "repeated failures, in every process sharing the ledger, so it serves again at once.",
    )
    reset.add_argument("names", nargs="+", metavar="PROVIDER", help="a provider's name, as `genroute providers` lists")
    reset.set_defaults(handler=cmd_providers_reset)

    budget = sub.add_parser("budget", parents=[common], help="spent, reserved and left per scope and period")
    budget.add_argument("--export-csv", type=_output_path, help="also write the full report as CSV (-: stdout)")
    budget.add_argument("--export-json", type=_output_path, help="also write it as JSON (-: stdout)")
    budget.set_defaults(handler=cmd_budget)

    cache = sub.add_parser("cache", parents=[common], help="result store: stats | clear")
    cache.add_argument("action", choices=["stats", "clear"])
    cache.set_defaults(handler=cmd_cache)

    jobs = sub.add_parser(
        "jobs",
        parents=[common],
        help="requests waiting for (or done by) a webhook; `jobs sync` completes those whose webhook never came",
        usage="%(prog)s [options] [--status STATUS] [sync [JOB_ID]]",
        description="List the jobs submitted for completion by webhook; `sync` asks their providers for the "
        "remote state and completes the finished ones.",
    )
    jobs.add_argument("--status", choices=["pending", "succeeded", "failed", "canceled"])
    jobs.set_defaults(handler=cmd_jobs)
    jobs_actions = jobs.add_subparsers(dest="jobs_action", metavar="ACTION", prog=jobs.prog)
    sync = jobs_actions.add_parser(
        "sync",
        parents=[common],
        help="ask the providers for pending jobs' state; complete the finished ones (the receiver was down)",
        description="Ask each pending job's provider (or only JOB_ID's) for the state of its remote work and "
        "complete the finished ones as their webhook delivery would have: settle, store, mark finished. A "
        "delivery arriving later is then a replay and changes nothing.",
    )
    sync.add_argument("job_id", nargs="?", metavar="JOB_ID", help="a job id, or its first characters (default: all)")
    sync.set_defaults(handler=cmd_jobs_sync)

    # Plugins add their own commands (say, a webhook receiver) through the same hook mechanism.
    call_each(default_plugin_manager(), "genroute_register_commands", subparsers=sub, common=common)
    return parser


def router_from_args(args: argparse.Namespace) -> Router:
    """The Router a command's ``--config`` and ``--profile`` ask for (for plugin commands too)."""
    return Router(load_settings(args.config, profile=args.profile))


_router = router_from_args


# -- run ------------------------------------------------------------------------------------------------
def _run_request(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, str] = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"{item!r} is not KEY=VALUE", field="--param")
        params[key.strip().replace("-", "_")] = value
    # The named options win over --param, --task included.
    task: Any = args.task or (_json_or_text(params["task"], "task") if "task" in params else "text-to-image")
    if not isinstance(task, str):
        raise InvalidRequest("must be a task name", field="task", hint=f"one of: {', '.join(TASKS)}")
    args.task = task
    data: dict[str, Any] = {key: _param_value(task, key, value) for key, value in params.items()}
    data["task"] = task
    _refuse_options_for_other_tasks(args)
    if args.prompt is not None:
        data[_TEXT_FIELD.get(args.task, "prompt")] = args.prompt
    if args.input is not None:
        if args.task not in _MEDIA_FIELD:
            raise InvalidRequest(f"{args.task} takes no input file", field="--input")
        data[_MEDIA_FIELD[args.task]] = str(args.input)
    elif args.task in _MEDIA_FIELD and _MEDIA_FIELD[args.task] not in data:
        raise InvalidRequest(f"{args.task} needs an input file", field="--input", hint="pass --input FILE")
    options = {
        "mask": str(args.mask) if args.mask else None,
        "tier": args.tier,
        "seed": args.seed,
        "num_outputs": args.num_outputs,
        "aspect_ratio": args.aspect_ratio,
        "provider": args.pin_provider,
        "model": args.pin_model,
        "cache": args.cache,
    }
    data.update({k: v for k, v in options.items() if v is not None})
    return data


# Named options of `run` that only some tasks take: option → the request field it fills.
_TASK_OPTIONS = {"--mask": "mask", "--num-outputs": "num_outputs", "--aspect-ratio": "aspect_ratio"}


def _refuse_options_for_other_tasks(args: argparse.Namespace) -> None:
    """A PROMPT, --mask, --num-outputs or --aspect-ratio the task has no field for is refused, naming the option."""
    fields = _BY_TASK_NAME[args.task].model_fields if args.task in _BY_TASK_NAME else None
    if fields is None:
        return  # an unknown task: the request's validation names it
    if args.prompt is not None and _TEXT_FIELD.get(args.task, "prompt") not in fields:
        takers = [t for t in TASKS if _TEXT_FIELD.get(t, "prompt") in REQUEST_TYPES[t].model_fields]
        raise InvalidRequest(
            f"{args.task} takes no prompt; only {', '.join(takers)} do", field="PROMPT", hint="drop the prompt"
        )
    for option, name in _TASK_OPTIONS.items():
        if getattr(args, name) is not None and name not in fields:
            raise InvalidRequest(
                f"does not apply to {args.task}, only to {', '.join(tasks_with_field(name))}",
                field=option,
                hint=f"drop {option}, or pick a task it applies to",
            )


def _param_value(task: str, key: str, text: str) -> Any:
    """A ``--param`` VALUE as the request field ``key`` wants it.

    It is read as JSON when it parses (``2``, ``0.5``, ``true``, ``null``, lists), else as text; then, because
    request fields refuse the wrong JSON types, text for a number field is read as a number (``.5``, ``08``)
    and a number for a text field (a voice, a language, a prompt) is kept as the text it was typed as.
    """
    cls = _BY_TASK_NAME.get(task)
    field = cls.model_fields.get(key) if cls is not None else None
    kinds = _value_types(field.annotation) if field is not None else set()
    try:
        value = _json_or_text(text, key)
    except InvalidRequest:
        if str in kinds:
            return text  # a text field takes it as typed (a prompt of 5000 digits, of 10000 "[")
        raise
    if field is None:
        return value  # no such field for this task: the request's validation says so
    numeric = kinds & {int, float}
    if isinstance(value, str) and numeric and str not in kinds:
        try:
            return float(value) if float in kinds else int(value)
        except ValueError:
            return value  # still text: refused by the field, which names it
    if isinstance(value, int | float) and str in kinds and not numeric:  # bool is an int too
        return text
    return value


def _json_or_text(value: str, key: str) -> Any:
    """``value`` read as JSON when it parses, else the text itself; JSON that cannot be taken in is refused."""
    try:
        return _loads(value)
    except json.JSONDecodeError:
        return value
    except _UnreadableJson as exc:
        raise InvalidRequest(exc.reason, field=f"--param {key}", hint=exc.hint) from None


class _UnreadableJson(ValueError):
    """JSON text that parses as JSON yet cannot be taken in: ``reason`` says why, ``hint`` what to do."""

    def __init__(self, reason: str, hint: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _UnreadableJson(
                f"the key {json.dumps(key)} appears twice in one object",
                hint="keep one of them",
            )
        data[key] = value
    return data


def _loads(text: str) -> Any:
    """``json.loads``, refusing what it would take in wrongly or fail on with a Python error.

    Raises ``json.JSONDecodeError`` for text that is not JSON, and :class:`_UnreadableJson` for an object with
    a key twice (``json`` would keep the last silently), a number longer than Python reads (its
    ``sys.get_int_max_str_digits()``) and nesting deeper than the parser can follow.
    """
    try:
        return json.loads(text, object_pairs_hook=_no_repeated_keys)
    except (json.JSONDecodeError, _UnreadableJson):
        raise
    except RecursionError:
        raise _UnreadableJson("nested too deeply to read", hint="nest lists and objects less deeply") from None
    except ValueError as exc:
        if "digits" in str(exc):
            digits = sys.get_int_max_str_digits()
            raise _UnreadableJson(
                f"a number has more than {digits} digits", hint=f"write numbers with at most {digits} digits"
            ) from None
        raise _UnreadableJson(str(exc), hint="fix the JSON") from None


def _value_types(annotation: Any) -> set[type]:
    """The plain types a field's annotation takes: ``int | None`` → {int, NoneType}, a Literal of names → {str}."""
    origin = get_origin(annotation)
    if origin is Literal:
        return {type(arg) for arg in get_args(annotation)}
    if origin in (Union, UnionType, Annotated):
        args = get_args(annotation)
        return set().union(*(_value_types(arg) for arg in (args[:1] if origin is Annotated else args)))
    if annotation is MediaInput:
        return {str}  # a path or URL
    return {annotation} if isinstance(annotation, type) else set()


def cmd_run(args: argparse.Namespace, out: Console, err: Console) -> int:
    data = _run_request(args)
    _check_writable_dir(args.output_dir, "--output-dir")  # before any money moves; made only to hold a file
    return _run(args, data, out, err)


def _run(args: argparse.Namespace, data: dict[str, Any], out: Console, err: Console) -> int:
    with _router(args) as router:
        request = router.parse(data)
        if request.task_name == "text-generation" and not args.json:
            return _run_streaming(router, request, out, err)
        result = router.run(request)
        try:
            files = _save_outputs(result, args.output_dir)
        except _NotSaved as exc:  # after the money moved: say where the result is and what a re-run costs
            raise _not_saved_error(exc, router, request, result) from None
    if args.json:
        payload = json.loads(result.model_dump_json())
        payload["saved"] = [str(p) for p in files]
        out.print(json.dumps(payload, indent=2), markup=False)
        return 0
    if result.text:
        out.print(result.text, markup=False)
    _print_result_summary(result, files, err)
    return 0


def _run_streaming(router: Router, request: RequestModel, out: Console, err: Console) -> int:
    stream = router.stream(request)
    for piece in stream:
        out.file.write(piece)
        out.file.flush()
    out.file.write("\n")
    out.file.flush()
    if stream.result is not None:
        _print_result_summary(stream.result, [], err)
    return 0


def _check_writable_dir(directory: Path, option: str) -> None:
    """Make sure, before any work (and any money spent), that files can be written in ``directory``.

    Creates nothing: a missing directory is judged by its nearest existing parent, where it would be made
    once there is a file to write (a text result writes none).
    """
    hint = "give a directory you can write"
    try:
        existing = next(d for d in (directory, *directory.parents) if d.exists() or d.is_symlink())
        is_dir, writable = existing.is_dir(), os.access(existing, os.W_OK | os.X_OK)
    except StopIteration:  # no parent exists: not even the root or the current directory
        raise InvalidRequest(f"cannot create {directory}", field=option, hint=hint) from None
    except OSError as exc:  # a parent that cannot be searched
        raise InvalidRequest(f"cannot use {directory}: {exc.strerror}", field=option, hint=hint) from None
    if existing == directory:
        if not is_dir:
            raise InvalidRequest(f"{directory} is not a directory", field=option, hint="give a directory")
        if not writable:
            raise InvalidRequest(f"cannot write in {directory}", field=option, hint=hint)
    elif not is_dir:
        raise InvalidRequest(f"cannot create {directory}: {existing} is not a directory", field=option, hint=hint)
    elif not writable:
        raise InvalidRequest(f"cannot create {directory}: cannot write in {existing}", field=option, hint=hint)


def _missing_dirs(directory: Path) -> list[Path]:
    """``directory`` and those of its parents that do not exist yet (what saving a file there would create)."""
    missing: list[Path] = []
    for d in (directory, *directory.parents):
        try:
            if d.exists():
                break
        except OSError:
            break
        missing.append(d)
    return missing


def _remove_empty(directories: list[Path]) -> None:
    """Remove the directories a refused or failed command created, if they are still empty (deepest first)."""
    for directory in sorted(directories, key=lambda d: len(d.parts), reverse=True):
        with contextlib.suppress(OSError):
            directory.rmdir()


STDOUT = Path("-")
"""What an output option (``--results``, ``--export-csv``, ``--export-json``) holds when given ``-``: standard
output. Told by identity, as ``Path("./-")`` (a file named ``-``) compares equal to it."""


def _output_path(text: str) -> Path:
    """An output option's PATH: :data:`STDOUT` for ``-``, else the path (``./-`` is a file named ``-``)."""
    return STDOUT if text == "-" else Path(text)


def _is_stdout(target: Path | None) -> bool:
    """Whether an output option's PATH is ``-``, standard output."""
    return target is STDOUT


def _check_writable_file(target: Path, option: str) -> None:
    if target.is_dir():
        raise InvalidRequest(f"{target} is a directory", field=option, hint="give a file name")
    _check_writable_dir(target.parent, option)


def _save_outputs(result: Result, directory: Path) -> list[Path]:
    """Copy the result's files (and a transcript's subtitles) to ``directory``; :class:`_NotSaved` names a
    file that could not be written."""
    stem = f"{result.task}-{result.request_key[:12]}"
    saved: list[Path] = []
    made = _missing_dirs(directory) if result.artifacts or result.segments is not None else []
    try:
        for i, artifact in enumerate(result.artifacts):
            name = stem if len(result.artifacts) == 1 else f"{stem}-{i + 1}"
            with _saving(directory / f"{name}{artifact.suffix()}"):
                saved.append(artifact.save(directory, name))
        if result.segments is not None:
            for suffix, text in ((".srt", result.to_srt()), (".vtt", result.to_webvtt())):
                target = directory / f"{stem}{suffix}"
                with _saving(target):
                    directory.mkdir(parents=True, exist_ok=True)
                    target.write_text(text, encoding="utf-8")
                saved.append(target)
    except BaseException:  # Ctrl-C or a write that failed: leave no empty directory behind
        _remove_empty(made)
        raise
    return saved


class _NotSaved(Exception):
    """An output file of a result that ran (and was paid for) could not be written."""

    def __init__(self, target: Path, reason: str) -> None:
        super().__init__(f"{target}: {reason}")
        self.target = target
        self.reason = reason


_PARTIAL_WRITE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}


@contextlib.contextmanager
def _saving(target: Path) -> Iterator[None]:
    """Turn a failure to write ``target`` into :class:`_NotSaved`, removing what a full disk left of it."""
    try:
        yield
    except (OSError, InvalidRequest) as exc:  # Artifact.save refuses a directory where the file goes
        if target.is_dir():
            reason = os.strerror(errno.EISDIR)
        elif isinstance(exc, OSError):
            reason = exc.strerror or type(exc).__name__
            if exc.errno in _PARTIAL_WRITE:
                with contextlib.suppress(OSError):
                    target.unlink()  # cut short: not a file anyone can use
        else:
            reason = exc.message
        raise _NotSaved(target, reason) from None


def _not_saved_error(exc: _NotSaved, router: Router, request: RequestModel, result: Result) -> InvalidRequest:
    kept = router.store is not None and router.store.get(result.request_key) is not None
    if kept and request.cache == "refresh":
        hint = "the result is kept in the store: make room for that file (or give another --output-dir) and run"
        hint += " again without --cache refresh, which costs nothing"
    elif kept:
        hint = "the result is kept in the store: make room for that file (or give another --output-dir) and run"
        hint += " again, which costs nothing"
    else:
        where = ", ".join(str(a.path) for a in result.artifacts) or "nowhere"
        hint = f"the result is not kept in the store; its files are at {where}: copy them from there"
    return InvalidRequest(f"cannot write {exc.target}: {exc.reason}", field="--output-dir", hint=hint)


def _print_result_summary(result: Result, files: list[Path], err: Console) -> None:
    source = "store (cached, no charge)" if result.cached else f"{result.provider} · {result.model} · {result.tier}"
    err.print(
        f"{source}  cost {fmt_usd(result.actual_cost)} (estimated {fmt_usd(result.estimated_cost)})  "
        f"{result.latency_seconds * 1000:.0f} ms  attempts {result.attempts}",
        markup=False,
    )
    for path in files:
        err.print(f"  wrote {path}", markup=False)


# -- plan and batch -------------------------------------------------------------------------------------
STDIN = "-"
"""The FILE argument of ``plan`` and ``batch`` that means standard input."""


def _own_stdin() -> BinaryIO:
    """Standard input as a file object of our own, over a duplicate of its descriptor.

    A batch reads it in a daemon thread (:class:`_LineReader`); were that thread still blocked in a read of
    ``sys.stdin`` when the command ends early (Ctrl-C, SIGTERM, a full disk), the interpreter's shutdown would
    abort on the lock of ``sys.stdin``'s buffer. Closing the duplicate leaves standard input itself open.
    """
    try:
        return os.fdopen(os.dup(sys.stdin.fileno()), "rb")
    except (OSError, ValueError, AttributeError):  # no file descriptor (a test's stand-in for stdin)
        return sys.stdin.buffer


class _Jsonl:
    """The JSONL requests of ``plan`` and ``batch``: a file, or standard input for ``-``.

    Iterating gives (line number, request dict or the error that line has), blank lines and # comments
    skipped. The input is read once; only a regular file, which can be rewound, may also be counted
    first (a pipe, a FIFO or a terminal read twice would be empty the second time).
    """

    def __init__(self, path: Path) -> None:
        self.stdin = str(path) == STDIN
        self.reading = False  # a batch's reader thread is reading it (see _LineReader)
        self.label = "<stdin>" if self.stdin else str(path)  # how messages name it: "<stdin>:3: …"
        if self.stdin:
            self._handle: BinaryIO = _own_stdin()
        else:
            try:
                self._handle = path.open("rb")
            except OSError as exc:
                raise InvalidRequest(
                    f"cannot read {path}: {exc.strerror}", field="FILE", hint="check the path"
                ) from None
        try:
            self.regular = stat.S_ISREG(os.fstat(self._handle.fileno()).st_mode)
        except (OSError, ValueError):  # no file descriptor (a test's stand-in for stdin): read it once
            self.regular = False

    def __enter__(self) -> _Jsonl:
        return self

    def __exit__(self, *exc: object) -> None:
        # A batch's reader thread still blocked in a read (the batch stopped early) keeps the file: closing it
        # under that read would wait for the read to end.
        if self._handle is not sys.stdin.buffer and not self.reading:
            self._handle.close()

    def count(self) -> int | None:
        """How many request lines a regular file holds (read, then rewound); None for anything else."""
        if not self.regular:
            return None
        start = self._handle.tell()
        try:
            return sum(1 for _ in self._texts())
        finally:
            self._handle.seek(start)

    def _texts(self) -> Iterator[tuple[int, str | InvalidRequest]]:
        for number, raw in enumerate(self._handle, start=1):
            try:
                # utf-8-sig: a byte order mark before line 1 (as Notepad writes) is no part of the request
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
            except UnicodeDecodeError:
                yield number, InvalidRequest(f"{self.label}:{number}: not UTF-8 text", hint="save the file as UTF-8")
                continue
            if text and not text.startswith("#"):
                yield number, text

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any] | InvalidRequest]]:
        for number, text in self._texts():
            if isinstance(text, InvalidRequest):
                yield number, text
                continue
            try:
                data = _loads(text)
            except json.JSONDecodeError as exc:
                yield number, self._invalid(number, f"not valid JSON ({exc.msg})")
                continue
            except _UnreadableJson as exc:  # a key twice, a number too long, nesting too deep: this line only
                yield number, self._invalid(number, exc.reason, hint=f"fix that line: {exc.hint}")
                continue
            if not isinstance(data, dict):
                yield number, self._invalid(number, "expected a JSON object")
                continue
            yield number, data

    def _invalid(self, number: int, message: str, hint: str = "fix that line") -> InvalidRequest:
        return InvalidRequest(f"{self.label}:{number}: {message}", hint=hint)


def _validated(label: str, number: int, data: dict[str, Any] | InvalidRequest) -> RequestModel | InvalidRequest:
    if isinstance(data, InvalidRequest):
        return data
    from pydantic import ValidationError

    try:
        return parse_request(data)
    except ValidationError as exc:
        error = invalid_request_from(exc)
        return InvalidRequest(f"{label}:{number}: {error.message}", hint="fix that line")


def cmd_plan(args: argparse.Namespace, out: Console, err: Console) -> int:
    rows: list[dict[str, Any]] = []
    totals: dict[str, Decimal] = {}  # every budget scope the spend would count in → estimated sum
    kinds: set[str] = set()  # the scopes of the chosen offers' kinds of money: shown even without a limit
    # A request that repeats → the latest line so far that stores its result (the one a later "use" line is
    # served from): the first "use" line of it, or a later "refresh" line, which stores a new result over it.
    stored_by: dict[str, int] = {}
    with _Jsonl(args.file) as source, _router(args) as router:
        merges = router.store is not None  # batch runs a repeated request once, then serves it from the store
        for number, data in source:
            request = _validated(source.label, number, data)
            if isinstance(request, InvalidRequest):
                rows.append({"line": number, "error": redact(request.message)})
                continue
            try:
                plan = router.plan(request)
            except GenrouteError as exc:
                rows.append({"line": number, "error": redact(f"{source.label}:{number}: {exc.message}")})
                continue
            row: dict[str, Any] = {"line": number, "task": request.task_name, "tier": request.tier}
            # A "refresh" line stores its result too, so a later "use" line of the same request is served from it.
            identity = _repeat_identity(request) if merges and request.cache in ("use", "refresh") else None
            if plan.cached:
                row.update(route="store (cached)", estimate="0")
            elif plan.chosen is not None and request.cache == "use" and identity in stored_by:
                row.update(
                    route=f"{plan.chosen.provider} · {plan.chosen.model}",
                    estimate="0",
                    billing=plan.chosen.billing,
                    same_as=stored_by[identity],
                )
            elif plan.chosen is not None:
                if identity is not None:
                    stored_by[identity] = number  # the first "use", or a "refresh": it stores the result
                estimate = plan.chosen.estimate or Decimal(0)
                scopes = router.budget_scopes(plan.chosen)
                kinds.add(scopes[0])
                for scope in scopes:
                    totals[scope] = totals.get(scope, Decimal(0)) + estimate
                row.update(
                    route=f"{plan.chosen.provider} · {plan.chosen.model}",
                    estimate=str(estimate),
                    billing=plan.chosen.billing,
                )
            else:
                row["error"] = "no route: " + "; ".join(str(r) for r in plan.rejections)
            row["rejected"] = [str(r) for r in plan.rejections]
            rows.append(row)
        budgets: list[dict[str, Any]] = []
        for scope, total in sorted(totals.items()):
            left = router.ledger.headroom((scope,))
            if left is None and scope not in kinds:
                continue  # a provider's scope with no limit: its kind of money's line says it all
            fits = left is None or total <= left
            budgets.append(
                {"scope": scope, "estimated": str(total), "left": None if left is None else str(left), "fits": fits}
            )
    repeats = sum(1 for r in rows if "same_as" in r)
    summary = {
        "requests": len(rows),
        "unroutable": sum(1 for r in rows if "error" in r),
        "repeats": repeats,
        "budgets": budgets,
        "fits_budget": all(b["fits"] for b in budgets),
    }
    if args.json:
        out.print(json.dumps({"requests": rows, "summary": summary}, indent=2), markup=False)
    else:
        table = Table("line", "task", "tier", "route", "estimate")
        for row in rows:
            line, task, tier = str(row["line"]), row.get("task", ""), row.get("tier", "")
            if "error" in row:
                table.add_row(line, task, tier, Text(row["error"], style="red"), "")
                continue
            route = row["route"] + (f" (same as line {row['same_as']}: paid once)" if "same_as" in row else "")
            table.add_row(line, task, tier, Text(route), fmt_usd(Decimal(row["estimate"])))
        out.print(table)
        if repeats:
            out.print(
                f"{repeats} line(s) repeat an earlier line's request: counted once, as batch runs it once and"
                " serves the repeats from the store",
                markup=False,
            )
        for b in budgets:
            left_text = "no limit" if b["left"] is None else fmt_usd(Decimal(b["left"]))
            verdict = "fits" if b["fits"] else "DOES NOT FIT"
            out.print(
                f"{b['scope']}: estimated {fmt_usd(Decimal(b['estimated']))} · left {left_text} · {verdict}",
                markup=False,
            )
    return 0 if summary["unroutable"] == 0 and summary["fits_budget"] else EXIT_PARTIAL


def _repeat_identity(request: RequestModel) -> str:
    """What makes two lines the same request for ``plan`` and ``batch``: every field but how it is carried out
    (``cache``, ``deadline_seconds``), with an input file as its path or URL (so no file is read for it)."""
    fields = request.model_dump(mode="json", exclude=set(request.NON_KEY_FIELDS))
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same path, or through ``./``, ``..``, a symlink or a hard link."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet) or cannot be examined: compare where the paths lead
        pass
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # a symlink loop: not a file to read or write anyway
        return False


def cmd_batch(args: argparse.Namespace, out: Console, err: Console) -> int:
    if _is_stdout(args.results):
        args.results = None  # `--results -`: standard output, as without the option
    if args.results is not None and str(args.file) != STDIN and _same_file(args.results, args.file):
        raise InvalidRequest(
            f"{args.results} is the input file {args.file}: results would be appended to the requests",
            field="--results",
            hint="give --results another file, or leave it out to write the results to standard output",
        )
    if args.results is not None:
        _check_writable_file(args.results, "--results")  # before any request runs; missing directories are made
    with _Jsonl(args.file) as source:
        total = source.count()  # None for a pipe: it is read once, as the requests run
        cut_short = args.results is not None and _ends_mid_line(args.results)
        try:
            if args.results is not None:
                args.results.parent.mkdir(parents=True, exist_ok=True)
            sink: TextIO = args.results.open("a", encoding="utf-8") if args.results else sys.stdout
        except OSError as exc:
            raise InvalidRequest(
                f"cannot write {args.results}: {exc.strerror}", field="--results", hint="give a file you can write"
            ) from None
        try:
            if cut_short:  # the partial record stays a line of its own: the new ones must not be glued to it
                _write_results(sink, "\n", args.results)
                err.print(
                    f"note: {args.results} ended in the middle of a line (a record cut short by an earlier run);"
                    " the new results start on a new line",
                    markup=False,
                )
            tally = _run_batch(args, source, total, sink, err)
        finally:
            if args.results:
                with contextlib.suppress(OSError):  # every line was flushed: a failed one has been reported
                    sink.close()
    err.print(
        f"{tally.ok}/{tally.ok + tally.failed} done ({tally.cached} from the store), {tally.failed} failed, "
        f"spent {fmt_usd(tally.cost)}",
        markup=False,
    )
    return 0 if tally.failed == 0 else EXIT_PARTIAL


def _write_results(sink: TextIO, text: str, results: Path | None) -> None:
    """Write and flush result lines; a failure (a full disk) stops the batch with a genroute error."""
    try:
        sink.write(text)
        sink.flush()
    except BrokenPipeError:
        raise  # the reader went away: main() ends quietly
    except OSError as exc:
        where = str(results) if results is not None else "the results to standard output"
        retry = "give --results another file" if results is not None else "give --results a file"
        raise InvalidRequest(
            f"cannot write {where}: {exc.strerror or type(exc).__name__}; the batch stopped",
            field="--results" if results is not None else None,
            hint=f"free some space (or {retry}) and run the batch again: the results already produced are kept"
            " in the store, so their lines then cost nothing",
        ) from None


def _ends_mid_line(path: Path) -> bool:
    """Whether the regular file ``path`` has text after its last newline; False when missing, empty or unreadable."""
    try:
        with path.open("rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return False
            end = handle.seek(0, os.SEEK_END)
            if end == 0:
                return False
            handle.seek(end - 1)
            return handle.read(1) != b"\n"
    except OSError:
        return False


@dataclass
class _Tally:
    """What a batch did, counted from the records it wrote."""

    ok: int = 0
    failed: int = 0
    cached: int = 0
    cost: Decimal = Decimal(0)


def _run_batch(args: argparse.Namespace, source: _Jsonl, total: int | None, sink: TextIO, err: Console) -> _Tally:
    tally = _Tally()

    def emit(line: int, item: BatchItem | None, error: GenrouteError | None = None) -> None:
        record: dict[str, Any] = {"line": line}
        if item is not None and item.result is not None:
            result = item.result
            record.update(
                status="ok",
                provider=result.provider,
                model=result.model,
                tier=result.tier,
                cached=result.cached,
                cost=str(result.actual_cost),
                files=[str(a.path) for a in result.artifacts],
                text=result.text,
                request_key=result.request_key,
            )
            tally.ok += 1
            tally.cost += result.actual_cost
            tally.cached += result.cached
        else:
            problem = error or (item.error if item else None)
            record.update(status="error", error=redact(str(problem)), kind=type(problem).__name__)
            tally.failed += 1
        _write_results(sink, json.dumps(record) + "\n", args.results)
        progress.update(bar, advance=1, cost=fmt_usd(tally.cost))

    progress = Progress(
        TextColumn("[bold]batch"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[cost]}"),
        TimeElapsedColumn(),
        console=err,
        disable=args.no_progress or args.json,
        transient=False,
    )
    with _router(args) as router, progress:
        bar = progress.add_task("batch", total=total, cost="$0")

        async def run_one(number: int, request: RequestModel) -> BatchItem:
            # A line repeating a request still running is paid once: the router makes it wait for that one and
            # serves it from the store (Router.arun).
            try:
                return BatchItem(number, result=await router.arun(request))
            except GenrouteError as exc:
                return BatchItem(number, error=exc)
            except Exception as exc:  # a bug must fail this line only: the others (maybe paid for) carry on
                logging.getLogger(__name__).debug("line %d", number, exc_info=True)
                error = UnexpectedError(f"line {number} failed unexpectedly: {redact(f'{type(exc).__name__}: {exc}')}")
                error.__cause__ = exc
                return BatchItem(number, error=error)

        async def drive() -> None:
            # The input is read by a thread of its own (a slow pipe must not stall the requests in flight), at most
            # `concurrency` lines ahead; each result is written as soon as its request ends, whatever is being read.
            reader = _LineReader(source, asyncio.get_running_loop(), ahead=args.concurrency)
            running: dict[asyncio.Future[BatchItem], int] = {}  # request → its input line
            pulling: asyncio.Future[_ReadItem] | None = None
            failure: Exception | None = None
            ended = False
            try:
                while True:
                    if not ended and pulling is None and len(running) < args.concurrency:
                        pulling = asyncio.ensure_future(reader.get())
                    waiting: set[asyncio.Future[Any]] = {*running, *([pulling] if pulling else [])}
                    if not waiting:
                        break
                    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    if pulling is not None and pulling in done:
                        item, pulling = pulling.result(), None
                        if item is None:
                            ended = True
                        elif isinstance(item, Exception):  # reading failed: the started requests still end
                            ended, failure = True, item
                        else:
                            number, data = item
                            request = _validated(source.label, number, data)
                            if isinstance(request, InvalidRequest):
                                emit(number, None, request)
                            else:
                                running[asyncio.ensure_future(run_one(number, request))] = number
                    for task in done:
                        if task in running:
                            emit(running.pop(task), task.result())
                if failure is not None:
                    raise failure
            finally:
                reader.stop()
                if pulling is not None:
                    pulling.cancel()
                for task in running:
                    task.cancel()
                if running:
                    await asyncio.gather(*running, return_exceptions=True)

        router._sync().run(drive())
        progress.update(bar, total=tally.ok + tally.failed)  # known at last when the input was a pipe
    return tally


_ReadItem = tuple[int, dict[str, Any] | InvalidRequest] | Exception | None
"""What :class:`_LineReader` hands over: a line (number, request or its error), a read that failed, or the end."""


class _LineReader:
    """Reads a batch's input in a daemon thread, so that blocking reads (a slow pipe, a FIFO, a terminal) never
    stall the event loop, and hands the lines to it through an asyncio queue, at most ``ahead`` lines ahead.

    The thread reads the :class:`_Jsonl` exactly as iterating it on the loop did (blank lines and comments
    skipped, the byte order mark, bad lines as errors). :meth:`stop` lets it end at its next line; a thread still
    blocked in a read when the command ends is left to the process's exit (the input is then not closed).
    """

    def __init__(self, source: _Jsonl, loop: asyncio.AbstractEventLoop, *, ahead: int) -> None:
        self._source = source
        self._loop = loop
        self._queue: asyncio.Queue[_ReadItem] = asyncio.Queue()
        self._room = threading.Semaphore(ahead)
        self._stopped = threading.Event()
        source.reading = True
        threading.Thread(target=self._read, name="genroute-batch-input", daemon=True).start()

    def _read(self) -> None:
        try:
            for item in self._source:
                self._room.acquire()
                if self._stopped.is_set():
                    return
                self._put(item)
            self._put(None)
        except Exception as exc:  # an input that could not be read: raised once the requests started have ended
            self._put(exc)
        finally:
            self._source.reading = False

    def _put(self, item: _ReadItem) -> None:
        if not self._stopped.is_set():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for lines any more
                self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def get(self) -> _ReadItem:
        item = await self._queue.get()
        self._room.release()
        return item

    def stop(self) -> None:
        self._stopped.set()
        self._room.release()  # a thread waiting for room wakes up, sees it is stopped, and ends


# -- inspection -----------------------------------------------------------------------------------------
def cmd_providers(args: argparse.Namespace, out: Console, err: Console) -> int:
    with _router(args) as router:
        settings = router.settings
        rows: list[dict[str, Any]] = []
        for name in sorted(set(router.providers) | set(settings.providers)):
            provider = router.providers.get(name)
            section = settings.provider(name)
            if provider is None:
                status = router.unregistered_reason(name)
            elif not section.enabled:
                status = "disabled in config"
            else:
                why = router.unavailable_reason(name)  # one that raises is reported, not a crash
                status = f"unavailable: {why}" if why else "available"
            models = [
                {"task": task, "tier": tier, "model": model, "unit": entry.unit, "price": str(entry.price)}
                for task, tier, model in catalogue_tasks(section)
                for entry in [section.models[task][tier]]
            ]
            in_profile = name in settings.active.providers
            rows.append(
                {
                    "provider": name,
                    "plugin": router.plugin_of.get(name),
                    "status": status,
                    "in_profile": in_profile,
                    "models": models,
                }
            )
    if args.json:
        out.print(json.dumps({"profile": settings.profile, "providers": rows}, indent=2), markup=False)
        return 0
    out.print(f"profile {settings.profile}: {', '.join(settings.active.providers)}", markup=False)
    for row in rows:
        note = "" if row["in_profile"] else " (not in profile)"
        plugin = f" [plugin {row['plugin']}]" if row["plugin"] else ""
        out.print(Text.assemble("\n", (row["provider"], "bold"), f" — {row['status']}{note}{plugin}"))
        table = Table("task", "tier", "model", "price")
        for m in row["models"]:
            table.add_row(m["task"], m["tier"], m["model"], f"{fmt_usd(Decimal(m['price']))}/{m['unit']}")
        if row["models"]:
            out.print(table)
    return 0


def cmd_providers_reset(args: argparse.Namespace, out: Console, err: Console) -> int:
    with _router(args) as router:
        names = list(dict.fromkeys(args.names))
        unknown = [name for name in names if name not in router.providers]
        if unknown:
            which = ", ".join(repr(name) for name in unknown)
            raise InvalidRequest(
                f"{which} {'is' if len(unknown) == 1 else 'are'} not an installed provider",
                field="PROVIDER",
                hint=f"name one of {', '.join(sorted(router.providers))} (see `genroute providers`)",
            )
        rows = [_reset_provider(router, name) for name in names]
    if args.json:
        out.print(json.dumps({"providers": rows}, indent=2), markup=False)
        return 0
    for row in rows:
        forgot = f"forgot {'; '.join(row['forgot'])}" if row["forgot"] else "nothing to forget"
        now = "now " if row["forgot"] and row["status"] == "available" else ""
        still = "still " if row["status"] != "available" else ""
        out.print(f"{row['provider']}: {forgot} — {now}{still}{row['status']}", markup=False)
    return 0


def _reset_provider(router: Router, name: str) -> dict[str, Any]:
    """Forget provider ``name``'s cooldown (in the ledger, for every process) and its own withdrawal."""
    forgot: list[str] = []
    provider = router.providers[name]
    try:
        said: object = provider.forget_withdrawal(router.settings)
    except GenrouteError:
        raise
    except Exception as exc:  # a plugin's bug: say whose, and that nothing else was touched
        raise PluginError(
            f"provider {name}: forget_withdrawal raised {type(exc).__name__}: {exc} "
            f"(plugin {router.plugin_of.get(name, '?')}); its cooldown was left as it was",
            hint="fix or uninstall the plugin named in the message",
        ) from exc
    if said is not None and not isinstance(said, str):
        raise PluginError(
            f"provider {name}: forget_withdrawal returned {type(said).__name__}, not a str or None "
            f"(plugin {router.plugin_of.get(name, '?')}); its cooldown was left as it was",
        )
    if said:
        forgot.append(said)
    until = router.ledger.cooldown_until(name)
    if until is not None and until > time.time():
        router.ledger.post_cooldown(name, 0.0)  # every process sharing the ledger reads it within a second
        forgot.append(f"the cooldown after repeated failures, until {_utc(until)}")
    why = router.unavailable_reason(name)
    return {"provider": name, "forgot": forgot, "status": f"unavailable: {why}" if why else "available"}


def _utc(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def cmd_budget(args: argparse.Namespace, out: Console, err: Console) -> int:
    csv_out, json_out = _is_stdout(args.export_csv), _is_stdout(args.export_json)
    if csv_out and json_out:
        raise InvalidRequest(
            "is standard output, as --export-csv is: the two reports would be mixed",
            field="--export-json",
            hint="send at most one export to standard output (-), the other to a file",
        )
    for target, option in ((args.export_csv, "--export-csv"), (args.export_json, "--export-json")):
        if target is not None and not _is_stdout(target):
            _check_writable_file(target, option)
    if (
        args.export_csv is not None
        and args.export_json is not None
        and not (csv_out or json_out)
        and _same_file(args.export_csv, args.export_json)
    ):
        raise InvalidRequest(
            f"is the same file as --export-csv ({args.export_csv}): the JSON would replace the CSV",
            field="--export-json",
            hint="give the two exports different file names",
        )
    with _router(args) as router:
        report = router.ledger.report()
        # A file export first (made atomically, its missing parent directories created); one to standard
        # output is then all that is written there: no table, no --json, so a pipe gets the report alone.
        if args.export_csv is not None and not csv_out:
            router.ledger.export_csv(args.export_csv, field="--export-csv")
            err.print(f"wrote {args.export_csv}", markup=False)
        if args.export_json is not None and not json_out:
            router.ledger.export_json(args.export_json, field="--export-json")
            err.print(f"wrote {args.export_json}", markup=False)
    if csv_out or json_out:
        text = report.to_csv() if csv_out else report.to_json() + "\n"
        out.file.write(text)  # a closed pipe raises BrokenPipeError: main() ends quietly with 141
        out.file.flush()
        return 0
    if args.json:
        out.print(report.to_json(), markup=False)
        return 0
    table = Table("scope", "period", "limit", "spent", "reserved", "left")
    for usage in report.usage:
        table.add_row(
            usage.scope,
            f"{usage.period} {usage.period_key}" if usage.period != "total" else "total",
            "—" if usage.limit is None else fmt_usd(usage.limit),
            fmt_usd(usage.spent),
            fmt_usd(usage.reserved),
            ("—" if usage.left is None else fmt_usd(usage.left)) + (" (used up)" if usage.exhausted else ""),
        )
    out.print(table)
    for usage in report.usage:
        if usage.exhausted:
            out.print(
                f"{usage.scope} refuses all spending until the {usage.period} period {usage.period_key} ends:"
                f" {usage.exhausted}",
                markup=False,
            )
    out.print(f"saved by the store: {fmt_usd(report.savings)} over {report.saved_requests} request(s)", markup=False)
    return 0


def cmd_cache(args: argparse.Namespace, out: Console, err: Console) -> int:
    with _router(args) as router:
        if router.store is None:
            raise GenrouteError("the result store is disabled", hint="set [store] enabled = true in plugins.toml")
        if args.action == "clear":
            return _clear_store(router.store, out, as_json=args.json)
        stats = router.store.stats()
    if args.json:
        out.print(stats.model_dump_json(indent=2), markup=False)
    else:
        out.print(
            f"{stats.entries} result(s), {stats.bytes / 1e6:.1f} MB of {stats.max_bytes / 1e6:.0f} MB; "
            f"{stats.hits} hit(s), {stats.misses} miss(es); saved {fmt_usd(stats.saved_usd)}",
            markup=False,
        )
    return 0


def _clear_store(store: ResultStore, out: Console, *, as_json: bool) -> int:
    """Clear the store and say what went: its results, the files of its scratch folder, and the bytes freed.

    ``ResultStore.clear`` counts only results, yet it empties ``scratch/`` too (the files of results the store
    did not keep: ``cache = "bypass"``, results over ``max_bytes``), so the folder is measured before and after.
    """
    scratch = store.path / "scratch"
    held_before, scratch_before = store.stats().bytes, _files_in(scratch)
    results = store.clear()
    held_after, scratch_after = store.stats().bytes, _files_in(scratch)
    gone = {name: size for name, size in scratch_before.items() if name not in scratch_after}
    freed = max(0, held_before - held_after) + sum(gone.values())
    if as_json:
        out.print(json.dumps({"removed": results, "scratch_files": len(gone), "bytes_freed": freed}), markup=False)
    else:
        out.print(f"removed {results} result(s) and {len(gone)} scratch file(s); {_size(freed)} freed", markup=False)
    return 0


def _files_in(folder: Path) -> dict[str, int]:
    """The files directly in ``folder`` with their sizes; empty when it is missing or cannot be listed."""
    files: dict[str, int] = {}
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):  # removed meanwhile
                if entry.is_file(follow_symlinks=False):
                    files[entry.name] = entry.stat(follow_symlinks=False).st_size
    return files


def _size(count: int) -> str:
    """A byte count for people: ``512 bytes``, ``24.9 kB``, ``3.1 MB``, ``2.1 GB``."""
    if count < 1000:
        return f"{count} byte{'s' if count != 1 else ''}"
    for unit, scale in (("kB", 1e3), ("MB", 1e6)):
        if count < scale * 1000:
            return f"{count / scale:.1f} {unit}"
    return f"{count / 1e9:.1f} GB"


def cmd_jobs(args: argparse.Namespace, out: Console, err: Console) -> int:
    with router_from_args(args) as router:
        jobs = router.jobs.list(args.status)
    if args.json:
        out.print(json.dumps([json.loads(job.model_dump_json()) for job in jobs], indent=2), markup=False)
        return 0
    table = Table("job", "status", "provider", "model", "remote id", "created", "cost")
    for job in jobs:
        cost = "—" if job.cost is None else fmt_usd(job.cost)
        created = job.created_at.strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(job.id[:12], job.status, job.provider, job.model, job.remote_id or "—", created, cost)
    out.print(table)
    return 0


def cmd_jobs_sync(args: argparse.Namespace, out: Console, err: Console) -> int:
    """One line per job: what its provider said and what was done. Exit 10 when some job is still unknown."""
    with router_from_args(args) as router:
        synced = router.reconcile_jobs(args.job_id)
    if args.json:
        rows = [
            {
                "job": s.job.id,
                "provider": s.job.provider,
                "remote_id": s.job.remote_id,
                "remote_status": s.remote_status,
                "action": s.action,
                "status": s.job.status,
                "cost": None if s.job.cost is None else str(s.job.cost),
                "reservation_reclaimed": s.reservation_reclaimed,
                "message": s.message,
            }
            for s in synced
        ]
        out.print(json.dumps(rows, indent=2), markup=False)
    elif not synced:
        out.print("no pending jobs", markup=False)
    else:
        for s in synced:
            out.print(f"{s.job.id[:12]}  {s.message}", markup=False)
    return 0 if all(s.ok for s in synced) else 10


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
