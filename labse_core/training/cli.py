"""The command line both trainers share: `--preset NAME`, `--config FILE.json`, `--set KEY=VALUE`...,
`--home DIR`, `--result FILE.json` (the whole result, read back by
labse_core.training.result.read_result); `--help` lists every valid --set key with its docstring."""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import importlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import NoReturn, TypeVar

from pydantic import BaseModel

from labse_core.training.config import ConfigError, load_config, settings_help
from labse_core.training.distributed import DistEnv
from labse_core.training.result import TrainResult
from storage.io import write_bytes_atomic
from storage.layout import Layout

C = TypeVar("C", bound=BaseModel)
R = TypeVar("R", bound=TrainResult)


class UsageError(Exception):
    """A bad command line or configuration, raised (``usage_errors_raised``) instead of argparse's usage
    text and exit."""


_RAISE_USAGE_ERRORS = contextvars.ContextVar("raise_usage_errors", default=False)


@contextlib.contextmanager
def usage_errors_raised() -> Iterator[None]:
    """Within it, a trainer's command-line or configuration error raises ``UsageError`` (its one-line
    message) instead of printing usage and exiting 2: ``labse pretrain|finetune`` say it in one line."""
    token = _RAISE_USAGE_ERRORS.set(True)
    try:
        yield
    finally:
        _RAISE_USAGE_ERRORS.reset(token)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        if _RAISE_USAGE_ERRORS.get():
            raise UsageError(message)
        super().error(message)


def train_main(
    argv: list[str] | None,
    module: str,
    config_cls: type[C],
    presets: Mapping[str, Callable[..., C]],
    run: Callable[[C, Layout], R],
    aliases: Mapping[str, str] | None = None,
) -> R:
    """`python -m <module>`: parse, build the config (a bad one: a one-line usage error, exit code
    2), run, and on rank 0 print the summary (without the per-step losses) and write it whole to
    --result. The description is the first line of the module's docstring."""
    doc = (importlib.import_module(module).__doc__ or "").strip().split("\n")[0]
    parser = _Parser(
        prog=f"python -m {module}",
        description=f"{doc} Several processes: torchrun ... -m {module}.",
        epilog=settings_help(config_cls, aliases),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", choices=sorted(presets), help="start from a named recipe")
    parser.add_argument("--config", help=f"JSON file of {config_cls.__name__} fields")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field (below)")
    parser.add_argument("--home", help="LABSE_HOME (default: $LABSE_HOME or ./labse_home)")
    parser.add_argument("--result", help="write the whole result as JSON here (rank 0, atomically)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(config_cls, presets, args.preset, args.config, args.set)
    except ConfigError as e:
        parser.error(f"bad configuration: {e}")
    result = run(cfg, Layout.from_env(args.home))
    if DistEnv.from_env().is_main:
        if args.result:  # atomic: a reader never sees half a file, even if this process dies here
            write_bytes_atomic(args.result, (json.dumps(result.to_json(), indent=2) + "\n").encode())
        print(json.dumps({k: v for k, v in result.summary().items() if k != "losses"}, indent=2))
    return result
