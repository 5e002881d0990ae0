"""One lifetime rule for qwenbench and every process it starts: a child never outlives us, and a stop by
signal is a stop like Ctrl-C.

- SIGTERM and SIGHUP (`kill`, `timeout`, a closed terminal) raise `Terminated`, a KeyboardInterrupt, so every
  path that stops its child on Ctrl-C and keeps what finished does the same for them. Only the first one
  raises: a second signal while the rows are being written would tear them.
- A child dies with its parent even when the parent cannot clean up (SIGKILL, a crash): on Linux the kernel
  sends it SIGKILL (the parent-death signal, which survives exec); elsewhere a thread in a Python child
  watches for its parent to go. Python children call `die_with_parent` themselves; other programs (llama-server)
  start through `guarded_argv`, which sets the signal and then execs them.

Stdlib only: the runner child imports this before llama_cpp.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from typing import Any

PR_SET_PDEATHSIG = 1
STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s)
_received: list[int] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled where Ctrl-C is."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _on_stop_signal(signum: int, frame: Any) -> None:
    _received.append(signum)
    if len(_received) == 1:
        raise Terminated(signum)


def install_stop_handlers() -> None:
    """Make SIGTERM and SIGHUP stop this process as Ctrl-C does (from the main thread). A signal already ignored
    stays ignored: `nohup qwenbench bench ...` asks to outlive the terminal."""
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _on_stop_signal)


def stop_signal(exc: BaseException | None = None) -> int:
    """The signal that stopped us: the Terminated's, else the first stop signal received, else SIGINT."""
    if isinstance(exc, Terminated):
        return exc.signum
    return _received[0] if _received else int(signal.SIGINT)


def stop_reason(signum: int) -> str:
    """How a stopped run's rows say why."""
    if signum == signal.SIGINT:
        return "interrupted by the user (Ctrl-C)"
    return f"stopped by {signal.Signals(signum).name}"


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number (Ctrl-C: 130)."""
    return 128 + signum


def die_with_parent(parent_pid: int) -> None:
    """End this process when `parent_pid` goes away, however it goes."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # it died before the signal was armed
                    os._exit(1)
                return
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="parent-watch").start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)


def guarded_argv(argv: list[str]) -> list[str]:
    """argv started so that it dies with this process (see `main`)."""
    return [sys.executable, "-m", "qwenbench.lifetime", str(os.getpid()), *argv]


def main() -> None:
    """`python -m qwenbench.lifetime PARENT_PID PROGRAM ARGS...`: arm the parent-death signal, become PROGRAM."""
    parent, *argv = sys.argv[1:]
    die_with_parent(int(parent))
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"qwenbench: cannot start {argv[0]}: {exc.strerror or exc}", file=sys.stderr)
        os._exit(127)


if __name__ == "__main__":
    main()
