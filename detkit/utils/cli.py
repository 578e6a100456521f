"""What every script in tools/ does the same way: its argument parser, logging, and user errors.

A tool is::

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout without pip install
    from detkit.utils.cli import tool_main, tool_parser

    def parse_args(argv):
        p = tool_parser(__doc__)        # description: the docstring's first line; epilog: the rest
        ...

    @tool_main                          # logging to the console, user errors as one line
    def main(argv=None) -> int:
        ...

    if __name__ == "__main__":
        sys.exit(main())

Errors a user can fix (``detkit.errors.DetkitError``: config, dataset, checkpoint, export, video
source... and a missing file) end the tool with their message alone and exit status 1; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import sys
from typing import Callable, Iterator, Optional, Sequence, Tuple, Type

from detkit.errors import DetkitError

from .logger import restored_logger, setup_logging

USER_ERRORS: Tuple[Type[BaseException], ...] = (DetkitError, FileNotFoundError)


class UserExit(SystemExit):
    """The ``SystemExit`` raised after a user error was logged: it ends a script with its status,
    and :func:`tool_main` turns it into ``main``'s return value."""


@contextlib.contextmanager
def user_errors(exit_code: int = 1, also: Sequence[Type[BaseException]] = ()) -> Iterator[None]:
    """Log a user error (``DetkitError``, ``FileNotFoundError`` and the types in ``also``) as one
    line, ``TypeName: message``, and exit with ``exit_code`` (:class:`UserExit`). Anything else
    keeps its traceback.

    Under torchrun only rank 0 writes the line to the console: a bad config or a missing dataset
    fails every rank alike, and an error on another rank reaches rank 0 as ``TrainingError``
    quoting it. The other ranks log it to their ``log_rank<r>.txt`` once they have one.
    """
    try:
        yield
    except (*USER_ERRORS, *also) as e:
        logger = logging.getLogger("detkit")
        if logger.handlers:
            logger.error("%s: %s", type(e).__name__, e)
        elif _rank() == 0:
            sys.stderr.write(f"{type(e).__name__}: {e}\n")
        raise UserExit(exit_code) from None


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def tool_parser(doc: str) -> argparse.ArgumentParser:
    """A parser whose ``--help`` shows the tool's docstring: the first line as the description,
    the rest (the usage examples) verbatim."""
    first, _, rest = doc.strip().partition("\n")
    return argparse.ArgumentParser(
        description=first,
        epilog=rest.strip("\n") or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_detections_source(parser: argparse.ArgumentParser, results_help: str) -> None:
    """The options of the tools that read detections against a ground truth (tools/evaluate.py,
    tools/analyze.py): ``--gt`` (COCO JSON) or ``--voc`` (a devkit folder), ``--results``, and the
    VOC-only ``--split`` and ``--prefix`` (see :func:`reject_voc_only`)."""
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--gt", help="COCO ground-truth JSON (instances_*.json)")
    mode.add_argument("--voc", help="a VOCdevkit/VOC20xx folder (Annotations/, ImageSets/Main/)")
    parser.add_argument("--results", required=True, help=results_help)
    parser.add_argument(
        "--split", default="test", help="VOC image set (ImageSets/Main/<split>.txt)"
    )
    parser.add_argument("--prefix", default="comp4_det_test_", help="VOC result file prefix")


def reject_voc_only(
    parser: argparse.ArgumentParser, args: argparse.Namespace, names: Sequence[str] = ()
) -> None:
    """A usage error when ``--gt`` is given with a VOC-only option (``--split``, ``--prefix`` and
    ``names``, argparse destinations) changed from its default."""
    names = ["split", "prefix", *names]
    if args.gt and any(getattr(args, k) != parser.get_default(k) for k in names):
        flags = "/".join("--" + k.replace("_", "-") for k in names)
        parser.error(f"{flags} apply to --voc only")


def tool_main(
    func: Optional[Callable[..., Optional[int]]] = None,
    *,
    exit_code: int = 1,
    also: Sequence[Type[BaseException]] = (),
):
    """Decorate a tool's ``main(argv=None)``: set up the ``detkit`` console log (rank 0 under
    torchrun) for the duration of the call, run it, and return its exit status (0 when it returns
    None, ``exit_code`` after a user error, logged as one line; see :func:`user_errors`). ``main``
    returns instead of exiting, and puts the logger back, so tests can call it in-process."""

    def decorate(fn: Callable[..., Optional[int]]) -> Callable[..., int]:
        @functools.wraps(fn)
        def main(argv: Optional[Sequence[str]] = None) -> int:
            # the handlers live as long as this call: a main run in-process leaves no state behind
            with restored_logger():
                setup_logging(rank=_rank())
                try:
                    with user_errors(exit_code, also):
                        status = fn(argv)
                except UserExit as e:
                    return e.code
            return 0 if status is None else int(status)

        return main

    return decorate(func) if func is not None else decorate
