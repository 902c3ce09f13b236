"""The ``llama-launcher`` command line: ``parser`` (argparse), ``commands`` (one thin handler
per command: parse -> ``launcher.app`` -> render) and ``render`` (what they print).

A ``LauncherError`` ends the program with its one-sentence message and no traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from launcher.cli.parser import build_parser
from launcher.errors import LauncherError


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else sys.argv[1:])
    handler: Callable[..., int] = args.handler
    try:
        return handler(args)
    except LauncherError as err:
        print(f"llama-launcher: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("llama-launcher: interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head, less, ...: not an error
        sys.stderr.close()
        return 0
    except OSError as err:  # a file the program needed: one sentence, never a traceback
        where = f" {err.filename}" if err.filename else ""
        print(
            f"llama-launcher: cannot use{where} ({err.strerror or err}); check that it exists, "
            "is writable and that the disk has space.",
            file=sys.stderr,
        )
        return 1
