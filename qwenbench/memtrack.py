"""Run a child process while sampling its memory from outside, with a timeout.

Peak RSS is the kernel's high-water mark of the child's own address space (VmHWM in /proc, which exec
resets), sampled here and reported by the child itself as it ends, so a spike between two samples is not
missed. wait4's ru_maxrss is not used on Linux: it carries the parent's RSS at the fork across the exec, so
a parent holding a large buffer would be measured as the child's peak. Sampling (psutil, and NVML for VRAM)
gives the rest. Nothing here imports llama_cpp.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

import psutil

from . import lifetime

# the kernel keeps the exact RSS peak (wait4); sampling only adds VRAM and non-Linux figures, and each
# wake-up of this process takes a core from llama.cpp's threads, so sample gently
SAMPLE_INTERVAL_S = 0.1


@dataclass(frozen=True)
class ChildOutcome:
    returncode: int
    peak_rss_bytes: int
    peak_vram_bytes: int | None
    timed_out: bool
    interrupted: bool
    wall_s: float
    stop_signal: int = 0  # with interrupted: SIGINT (Ctrl-C), SIGTERM or SIGHUP


class VramSampler:
    """Per-process GPU memory through NVML; silently absent where NVML is."""

    def __init__(self) -> None:
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._nvml = pynvml
        except Exception:
            self._handles = []

    @property
    def available(self) -> bool:
        return self._nvml is not None and bool(self._handles)

    def used_by(self, pid: int) -> int | None:
        if not self.available:
            return None
        total = 0
        for handle in self._handles:
            try:
                processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except Exception:
                continue
            for process in processes:
                if process.pid == pid and process.usedGpuMemory:
                    total += int(process.usedGpuMemory)
        return total

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()


def _reader(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def peak_rss_of(pid: int | str = "self") -> int | None:
    """The kernel's high-water mark of a live process's resident memory (Linux VmHWM), or None."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reap(process: subprocess.Popen[str]) -> tuple[bool, int, int]:
    """(exited, returncode, the kernel's max RSS in bytes or 0) without blocking."""
    if not hasattr(os, "wait4"):  # Windows: no rusage, the sampled peak stands
        code = process.poll()
        return code is not None, code or 0, 0
    waited, status, usage = os.wait4(process.pid, os.WNOHANG)
    if waited == 0:
        return False, 0, 0
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    if sys.platform.startswith("linux"):
        return True, process.returncode, 0  # ru_maxrss includes the parent's RSS at fork: see the module doc
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return True, process.returncode, usage.ru_maxrss * scale


def run_child(argv: list[str], stdin_data: str, log: IO[bytes], on_line: Callable[[str], None], *,
              timeout_s: float | None) -> ChildOutcome:
    """Run argv, feed stdin, hand each stdout line to on_line, and measure its peak memory.

    Ctrl-C, SIGTERM or SIGHUP in the parent (lifetime.Terminated) stops the child and returns with
    interrupted=True instead of raising, so the caller can still record what finished. The child learns our
    pid from QWENBENCH_PARENT_PID to die with us (lifetime.die_with_parent) if we cannot stop it.
    """
    start = time.monotonic()
    # its own process group (so Ctrl-C reaches only us, and a timeout kills it whole) but our session:
    # Linux's scheduler autogroups by session, and a session of its own would be scheduled apart from
    # the way `llama-bench` run from the same shell is
    group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    environment = {**os.environ, "QWENBENCH_PARENT_PID": str(os.getpid())}
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                               env=environment, **group)
    assert process.stdin is not None and process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    try:
        process.stdin.write(stdin_data)
        process.stdin.close()
        reader = threading.Thread(target=_reader, args=(process.stdout, lines), daemon=True)
        reader.start()
        vram = VramSampler()
    except BaseException:  # a stop before the watch loop: the child must not run on unwatched
        _kill(process)
        process.wait()
        raise
    try:
        watched: psutil.Process | None = psutil.Process(process.pid)
    except psutil.Error:
        watched = None
    peak_rss, peak_vram = 0, None
    timed_out = interrupted = False
    returncode = stopped_by = 0
    try:
        while True:
            try:
                exited, returncode, kernel_peak = _reap(process)
                if exited:
                    peak_rss = max(peak_rss, kernel_peak)
                    break
                own_peak = peak_rss_of(process.pid)
                if own_peak is not None:
                    peak_rss = max(peak_rss, own_peak)
                elif watched is not None:
                    with contextlib.suppress(psutil.Error):
                        peak_rss = max(peak_rss, watched.memory_info().rss)
                used = vram.used_by(process.pid)
                if used is not None:
                    peak_vram = max(peak_vram or 0, used)
                _drain(lines, on_line)
                if timeout_s is not None and time.monotonic() - start > timeout_s:
                    timed_out = True
                    _kill(process)
                time.sleep(SAMPLE_INTERVAL_S)
            except KeyboardInterrupt as stop:
                interrupted = True
                stopped_by = stopped_by or lifetime.stop_signal(stop)
                _kill(process)
    finally:
        vram.close()
    reader.join(timeout=5)
    _drain(lines, on_line)
    return ChildOutcome(returncode, peak_rss, peak_vram, timed_out, interrupted, time.monotonic() - start,
                        stopped_by)


def _drain(lines: queue.Queue[str | None], on_line: Callable[[str], None]) -> None:
    while True:
        try:
            line = lines.get_nowait()
        except queue.Empty:
            return
        if line is not None:
            on_line(line)


def _kill(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL) if hasattr(os, "killpg") else process.kill()
