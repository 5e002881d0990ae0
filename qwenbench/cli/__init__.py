"""The qwenbench command line: thin commands over the library, and the only place that prints.

One module per command group (plan.py: models, probe, calibrate, plan; hub.py: synth, pull; run.py: run, demo;
quality.py: quality; bench.py: bench, report, compare; serve.py: serve, bench-serve, chat; worker.py: worker), what
they share in common.py. Imports stay light (no llama_cpp, numpy or pandas) so `qwenbench --help` starts fast; each
command imports what it needs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys

from rich.markup import escape

from .. import lifetime
from ..errors import Interrupted, QwenbenchError

# each command group registers its commands on the app as it is imported
from . import bench, hub, plan, quality, run, serve, worker  # noqa: F401
from .common import app, err

__all__ = ["app", "main"]

# --help lists them along the data flow: what is here, the model, a measurement, suites, serving, workers
HELP_ORDER = ("models", "probe", "calibrate", "plan", "synth", "pull", "run", "demo", "quality", "bench", "report",
              "compare", "serve", "bench-serve", "chat", "worker")
app.registered_commands.sort(key=lambda command: HELP_ORDER.index(command.name) if command.name in HELP_ORDER
                             else len(HELP_ORDER))


def _tolerant_streams() -> None:
    """Text that cannot be encoded or decoded (a Latin-1 byte on stdin, PYTHONIOENCODING=ascii) becomes a
    replacement character instead of a UnicodeError after the work is done."""
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="replace")


def main() -> None:
    """Entry point: every QwenbenchError becomes one line and a hint, never a traceback; Ctrl-C, SIGTERM and
    SIGHUP stop the work the same way (what finished is kept) with the shell's exit code for that signal."""
    _tolerant_streams()
    lifetime.install_stop_handlers()
    try:
        app()
    except QwenbenchError as exc:
        err.print(f"[red]error:[/red] {escape(exc.message)}", highlight=False)
        if exc.hint:
            err.print(f"[dim]hint:[/dim] {escape(exc.hint)}", highlight=False)
        code = lifetime.exit_code(lifetime.stop_signal()) if isinstance(exc, Interrupted) else exc.exit_code
        sys.exit(code)
    except KeyboardInterrupt as exc:
        signum = lifetime.stop_signal(exc)
        err.print(lifetime.stop_reason(signum))
        sys.exit(lifetime.exit_code(signum))
    except OSError as exc:
        if exc.errno not in (errno.EPIPE, errno.EIO):
            raise
        # the reader of our output went away (`| head`, a closed terminal): nothing left to say it to
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
