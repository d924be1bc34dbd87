"""Log lines: numbers rounded for people (labse_core.logfmt), and no Markdown in any log or console call
of the platform's code (Markdown belongs in the Prefect artifacts, where it is rendered)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from labse_core.logfmt import num, numbers

REPO = Path(__file__).resolve().parents[2]
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}


@pytest.mark.parametrize(("value", "spec", "want"), [
    (0.9390000000000001, None, "0.939"),  # (0.94 + 0.938) / 2: what the fine-tuning log used to print
    (0.9390000000000001, ".3f", "0.939"),
    (1.0192837, None, "1.019"),
    (4075.68602210583, None, "4076"),
    (1762593.0, None, "1762593"),
    (2e-05, None, "2e-05"),
    (np.float32(0.1), None, "0.1"),  # numpy scalars are numbers too (float32 0.1 is 0.10000000149...)
    (np.float64(0.8504), ".3f", "0.850"),
    (40, ".4f", "40"),  # counts stay counts even where a float format is asked for
    (np.int64(7), None, "7"),
    (True, None, "True"),
    (None, ".3f", "none"),
    (float("nan"), ".3f", "nan"),
    ("cpu", None, "cpu"),
])
def test_num_rounds_floats_and_leaves_the_rest(value, spec, want):
    assert num(value, spec) == want


def test_numbers_formats_a_metrics_dict_in_order():
    metrics = {"eval/acc": 0.9390000000000001, "eval/acc_src2tgt": 0.94, "eval/n": 500}
    assert numbers(metrics) == "eval/acc 0.939, eval/acc_src2tgt 0.94, eval/n 500"
    assert numbers({"de": 0.23847238, "fr": 1.0}, ".3f") == "de 0.238, fr 1.000"
    assert numbers({}) == ""


def _log_calls(tree: ast.AST):
    """Calls that write a line a person reads in a log or on the console."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id == "print":
            yield node
        elif isinstance(f, ast.Attribute):
            owner = f.value
            name = owner.id if isinstance(owner, ast.Name) else ""
            called = isinstance(owner, ast.Call) and getattr(owner.func, "id", "") == "get_run_logger"
            if f.attr in LOG_METHODS and (name in ("log", "logger", "logging") or called):
                yield node
            elif (f.attr, name) in (("print", "console"), ("echo", "typer")):
                yield node


def _texts(call: ast.Call, assigned: dict[str, list[ast.AST]]) -> list[str]:
    """The string constants a log call writes: its own, and those of the values assigned in the same
    function to the names it passes (``verdict = f"**now ...**"; log.info("%s", verdict)``)."""
    nodes = [call]
    for n in ast.walk(call):
        if isinstance(n, ast.Name):
            nodes += assigned.get(n.id, [])
    return [c.value for node in nodes for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)]


def _markdown_in_log_lines(tree: ast.AST) -> list[int]:
    lines = []
    for fn in [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))]:
        assigned: dict[str, list[ast.AST]] = {}
        for n in ast.walk(fn):
            if isinstance(n, ast.Assign):
                for target in n.targets:
                    if isinstance(target, ast.Name):
                        assigned.setdefault(target.id, []).append(n.value)
        for call in _log_calls(fn):
            if any("**" in t for t in _texts(call, assigned)):
                lines.append(call.lineno)
    return sorted(set(lines))


def test_no_markdown_in_log_or_console_lines():
    found = []
    for package in ("flows", "labse_core", "beam_jobs", "storage"):
        for path in sorted((REPO / package).rglob("*.py")):
            for line in _markdown_in_log_lines(ast.parse(path.read_text(encoding="utf-8"))):
                found.append(f"{path.relative_to(REPO)}:{line}")
    assert not found, f"Markdown bold in log/console lines (put it in a Prefect artifact instead): {found}"


def test_the_scan_sees_log_calls_and_the_names_they_log():
    # The scan above must be able to fail: bold text written directly, or through a variable.
    sample = ast.parse(
        'log.info("**%s**", x)\nget_run_logger().warning("a **b**")\nconsole.print(f"**{x}**")\n'
        'def stage(p):\n    verdict = f"**now {p}**" if p else "kept"\n    logger.info("register: %s", verdict)\n'
        'def fine(p):\n    shown = f"**{p}**"\n    logger.info("register: %s", p)\n'
    )
    assert len(list(_log_calls(sample))) == 5
    assert _markdown_in_log_lines(sample) == [1, 2, 3, 6]
