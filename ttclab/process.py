"""The operating-system side of a run: who runs it (host, PID, PID start time), whether that process
still lives, SIGTERM treated like Ctrl-C, advisory file locks between processes of one machine, and
an allocator that keeps freed tensor memory.

Standard library only, so tracking, stages and sweeps can all use it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path


class Terminated(KeyboardInterrupt):
    """SIGTERM (sent by `kill`, `timeout`, schedulers) raised as an interrupt: every `except
    KeyboardInterrupt` cleanup path (a run ends KILLED) covers it; the CLI exits 128 + 15 = 143."""

    exit_code = 143


def raise_on_sigterm() -> None:
    """Turn the first SIGTERM into `Terminated` in the main thread; later ones are ignored while the
    cleanup that the first one started closes the run (kill -9 still ends a process that hangs)."""

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
        signal.signal(signal.SIGTERM, handler)


def start_time(pid: int) -> str | None:
    """Process start time (clock ticks since boot, /proc/<pid>/stat field 22) or None when the process
    is gone or a zombie; comparing it with the recorded one guards against a recycled PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name in (...) may contain spaces
    return None if fields[0] in ("Z", "X") else fields[19]


def identity() -> dict[str, str]:
    """Tags naming this process: `ttclab.host`, `ttclab.pid`, `ttclab.pid_start`."""
    pid = os.getpid()
    return {"ttclab.host": socket.gethostname(), "ttclab.pid": str(pid), "ttclab.pid_start": str(start_time(pid))}


def is_dead(tags: dict) -> bool:
    """True only when `tags` name a process of this host that is gone (or whose PID was reused).
    A process of another host cannot be judged from here, so it counts as alive."""
    if tags.get("ttclab.host") != socket.gethostname() or not str(tags.get("ttclab.pid", "")).isdigit():
        return False
    started = start_time(int(tags["ttclab.pid"]))
    return started is None or started != str(tags.get("ttclab.pid_start"))


@contextmanager
def file_lock(path: str | Path):
    """Exclusive `flock` on `path` (created if missing) for the duration of the block. The kernel
    drops the lock when its holder dies, so a kill -9 never leaves it stuck."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_forwarding(cmd: list[str], grace_s: float = 10.0) -> int:
    """Run `cmd` as its own process group and wait for it; SIGTERM or SIGINT sent to this process is
    passed on to the whole group (a server and the workers it starts), which gets `grace_s` to exit
    before SIGKILL. Returns the child's exit code, or 128 + the signal when one was forwarded."""
    import subprocess

    child = subprocess.Popen(cmd, start_new_session=True)
    got: list[tuple[int, float]] = []  # (signal, when)

    def signal_group(signum: int) -> None:
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    def forward(signum, frame):
        got.append((signum, time.monotonic()))
        signal_group(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                code = child.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if got and time.monotonic() - got[0][1] > grace_s:
                    signal_group(signal.SIGKILL)
        signal_group(signal.SIGTERM)  # workers the server may have left behind
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return 128 + got[0][0] if got else code



class Usage:
    """What one `own_usage()` block cost this process, nested blocks left out: its peak resident
    memory (MB) and its wall seconds."""

    peak_mb: float = 0.0
    seconds: float = 0.0


_OPEN: list[Usage] = []  # the open own_usage blocks, outermost first


def _high_water_mb() -> float:
    """VmHWM, the process's peak resident set since it started or was last reset (Linux); elsewhere
    the lifetime peak from getrusage (KB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _reset_high_water() -> None:
    """Reset VmHWM to the current resident set (`/proc/self/clear_refs` = 5, Linux >= 4.0). Where
    that is not possible the mark keeps the process's peak so far: an upper bound."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


@contextmanager
def own_usage():
    """Yields a `Usage` holding, once the block ends, the peak resident memory and wall time of its
    own parts: a block nested in it (an upstream stage run on demand inside a run) is measured on
    its own and left out of the enclosing one. Linux keeps one high-water mark per process, so each
    block boundary hands the mark so far to the block it closes a part of and resets it."""
    if _OPEN:
        _OPEN[-1].peak_mb = max(_OPEN[-1].peak_mb, _high_water_mb())
    _reset_high_water()
    usage, start = Usage(), time.perf_counter()
    _OPEN.append(usage)
    try:
        yield usage
    finally:
        _OPEN.pop()
        usage.peak_mb = max(usage.peak_mb, _high_water_mb())
        usage.seconds += time.perf_counter() - start
        if _OPEN:
            _OPEN[-1].seconds -= time.perf_counter() - start
        _reset_high_water()


# Keep freed tensor memory in the process instead of handing it back to the OS (glibc only).
#
# A TTC step allocates candidate batches of a few MB (N x B x width x cells floats), far above
# glibc's initial 128 KB mmap threshold, and frees them a moment later. Each such buffer is then a
# fresh mmap whose pages the kernel faults in and zeroes on first touch, and is unmapped on free: in
# a new process (a CLI stage, a sweep worker) that made a TTC trial 1.37x slower than the same trial
# in a long-lived process whose allocator had adapted (2.8 vs 2.05 s, benchmarks/sweep_workers.py).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest accepted value on 64-bit
TRIM_THRESHOLD = 1024 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Serve blocks up to 32 MB from the heap and trim it only above 1 GB free, so freed tensor pages
    stay mapped between steps (peak RSS unchanged; it is just not given back). False without glibc
    or with TTCLAB_MALLOC=system (the opt-out benchmarks/sweep_workers.py compares against)."""
    if os.environ.get("TTCLAB_MALLOC", "tuned") == "system":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # musl, macOS, Windows: their allocator stays as it is
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
