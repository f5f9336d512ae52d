"""Servers that die with the process that started them: a session of their own, and a watchdog on the parent.

A server started for a test, a benchmark or a notebook (vLLM, JupyterLab) runs in a session of its own,
so that stopping it ends every process it spawned (vLLM's API server, engine core and workers) with one
``killpg``.  But a session of its own also means that when the parent is killed from outside — a
time-out that kills the test run's process group, ``kill -9``, a closed terminal — nothing ends the
server: it lives on with parent 1, holding its port and gigabytes of memory.

:func:`spawn` closes that gap with a **watchdog**: a small process (this file, standard library only)
in a session of its own, that checks every ``0.2`` s whether the parent is still alive — by its
``/proc`` start time on Linux, so neither a zombie nor a recycled pid fools it — and, once it is not,
sends the server's process group ``SIGTERM``, then ``SIGKILL`` after a grace period.  It exits by
itself as soon as the server's group is gone.  A parent-death signal (``prctl(PR_SET_PDEATHSIG)``)
was not used: it fires when the *thread* that started the child ends, so a server started from a
worker thread (a notebook's, a test runner's) would die with that thread, and it would reach only the
first process, not the engine processes under it.

    python guard.py PARENT_PID GROUP_ID [GRACE_SECONDS]     # what spawn() runs; not for people
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["spawn", "stop_group", "process_alive", "WATCH_INTERVAL", "GRACE"]

WATCH_INTERVAL = 0.2  # seconds between looks at the parent
GRACE = 10.0  # seconds between SIGTERM and SIGKILL


def _start_time(pid: int) -> str | None:
    """The process's start time from ``/proc`` (``None`` where there is no ``/proc`` or no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else fields[19]  # a zombie is dead, however long it waits to be reaped


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` is alive (and, given its ``/proc`` start time, still the same process)."""
    if Path("/proc/self/stat").exists():
        now = _start_time(pid)
        return now is not None and (start is None or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(group: int, grace: float = GRACE) -> None:
    """``SIGTERM`` to every process of ``group``, then ``SIGKILL`` to whatever is left after ``grace`` seconds."""
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _group_alive(group):
            return
        time.sleep(0.05)
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


def watch(parent: int, group: int, grace: float = GRACE, start: str | None = None) -> int:
    """Wait until ``parent`` dies (then stop ``group``) or ``group`` ends by itself; the watchdog's loop."""
    start = start or _start_time(parent)
    while process_alive(parent, start):
        if not _group_alive(group):
            return 0
        time.sleep(WATCH_INTERVAL)
    stop_group(group, grace)
    return 0


def spawn(cmd: list[str], *, grace: float = GRACE, **popen) -> subprocess.Popen:
    """Start ``cmd`` in a session of its own, watched: it (and everything it starts) ends when this process dies.

    ``popen`` goes to :class:`subprocess.Popen` (``stdout``, ``env``, ``cwd`` …).  The returned process
    has a ``watchdog`` attribute (the watchdog's :class:`subprocess.Popen`); stop the server with
    :func:`stop_group` on its pid, which the watchdog then notices and exits.
    """
    if os.name != "posix":
        raise OSError("spawn needs a POSIX system (process groups); on Windows start the server by hand")
    popen.pop("start_new_session", None)
    process = subprocess.Popen(cmd, start_new_session=True, **popen)
    start = _start_time(os.getpid())
    watchdog = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), str(os.getpid()), str(process.pid), str(grace), start or ""],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in our process group: a kill of that group must not take it along
        close_fds=True,
    )
    process.watchdog = watchdog
    return process


if __name__ == "__main__":
    parent_pid, group_id = int(sys.argv[1]), int(sys.argv[2])
    grace_s = float(sys.argv[3]) if len(sys.argv) > 3 else GRACE
    parent_start = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] else None
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the parent's terminal is the parent's to handle
    sys.exit(watch(parent_pid, group_id, grace_s, parent_start))
