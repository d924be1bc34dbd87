"""The console every `labse` command prints through.

On a terminal: rich's usual output (colour, spinners, wrapping at the terminal's width). Not a terminal
(a log file, a pipe, CI): plain text, no wrapping at 80 columns (a long path or a ``try: labse sql "..."``
line stays one line that can be copied), no truncated table cells, no colour codes, no spinners.
Errors do not go through it: ``flows.cli_errors`` writes them to stderr as one plain line.
"""

from __future__ import annotations

import contextlib
import sys

from rich.console import Console

INTERACTIVE = sys.stdout.isatty()
console = Console() if INTERACTIVE else Console(soft_wrap=True, width=100_000, color_system=None)


def status(text: str):
    """A spinner on a terminal; nothing in a log (rich would print nothing useful there anyway)."""
    return console.status(text, spinner="dots") if INTERACTIVE else contextlib.nullcontext()


PRECISION_HELP = ("Encoder precision: fp32, bf16, int8 (CPU; `labse quantize MODEL` writes its files) or auto "
                  "(bf16 where the CPU/GPU multiplies bf16, else int8 when the folder has it, else fp32); the one "
                  "used is printed and recorded.")
