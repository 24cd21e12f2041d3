"""The argument parser of every command: a bad argument is one line on stderr and exit status 2.

argparse prints the whole usage before its error, a dozen lines for `multiverse eval`; the usage stays one
`--help` away.
"""

from __future__ import annotations

import argparse
import sys


class OneLineParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line, `prog: message`, and exit 2.

    >>> parser = OneLineParser(prog="multiverse eval")
    >>> _ = parser.add_argument("--batching", choices=("auto", "static"))
    >>> parser.parse_args(["--batching", "foo"])  # doctest: +SKIP
    multiverse eval: argument --batching: invalid choice: 'foo' (choose from 'auto', 'static')
    """

    def error(self, message: str):
        print(f"{self.prog}: {message}", file=sys.stderr)
        sys.exit(2)
