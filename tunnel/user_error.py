"""Errors a user can cause and fix, and the one boundary where every command line prints them.

A `UserError` is a problem the person running a command can fix: a wrong configuration, a
missing kernel feature, not being root, an address already in use, a network that is not what
was asked for. Its str() is one sentence — what is wrong, then what to do — and it carries the
command's exit code: 2 for a usage or configuration mistake (`UsageError`), 1 for a runtime
failure. Every such error class of the project derives from one of the two, so a command line
never has to guess from a built-in exception type (a bare RuntimeError is a bug, not a user's
mistake).

`run_command(prog, main)` is the boundary each command (`qtun`, `qtlab`, the experiment runner,
`make demo`, `make bench`) runs its work through: a UserError becomes `prog: error: <sentence>`
on stderr and its exit code; Ctrl-C exits 130; anything else is a bug and keeps its traceback
(exit 1) so that it gets reported rather than mistaken for a user's mistake.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import ClassVar, Final, NoReturn

EXIT_OK: Final = 0
EXIT_RUNTIME: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130


class UserError(Exception):
    """Something the user can fix at run time; str() is one sentence (exit code 1)."""

    exit_code: ClassVar[int] = EXIT_RUNTIME


class UsageError(UserError):
    """A wrong command line or configuration; str() is one sentence (exit code 2)."""

    exit_code: ClassVar[int] = EXIT_USAGE


class RuntimeFailure(UserError):
    """A failure of the environment the user must fix (not root, address in use, no TUN,
    concentrator unreachable past the backoff...); exit code 1."""


class SentenceParser(argparse.ArgumentParser):
    """The ArgumentParser of every command: a mistake on its command line is a UsageError,
    `<what argparse says>: run `<prog> --help` for the usage` (argparse's own error() prints
    its whole usage block and exits), so parse inside run_command: one line, exit code 2. Its
    subparsers are SentenceParsers too (add_subparsers uses the parser's class)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}: run `{self.prog} --help` for the usage")


def run_command(prog: str, main: Callable[[], int], *, interrupted: str = "") -> int:
    """Run `main()` and turn what it raises into the exit code and stderr line of `prog`.
    `interrupted`: what to say after Ctrl-C (e.g. where the partial results are)."""
    try:
        return main()
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted{'; ' + interrupted if interrupted else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED


__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_RUNTIME",
    "EXIT_USAGE",
    "RuntimeFailure",
    "SentenceParser",
    "UsageError",
    "UserError",
    "run_command",
]
