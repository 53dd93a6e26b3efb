"""Command-line parsing shared by every ``fdistill`` command: one-line errors instead of argparse's usage block."""

from __future__ import annotations

import argparse


class ArgumentError(Exception):
    """A bad command line; the command's ``main`` prints it in one line and returns 2."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors raise :class:`ArgumentError` instead of printing the usage block and
    exiting, so ``main`` reports bad input in one line and returns 2 (``--help`` still exits 0)."""

    def error(self, message: str) -> None:
        raise ArgumentError(message)


def one_line(message: object) -> str:
    """``message`` as one printable line: line breaks and other control characters (from user input quoted in an
    error) are shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message).strip())
