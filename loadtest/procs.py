"""Child processes of the load tools: start in their own process group, always stop.

Also the few /proc readings the tools report (CPU time, resident memory,
open file descriptors), and a runner that uses uvloop when it is installed.
Linux only for the /proc readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
PYTHON = sys.executable
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on uvloop when it is installed (as uvicorn picks it), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (another process may take it before we do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen[Any] | None = None) -> None:
    """Return once 127.0.0.1:`port` accepts a connection; raises RuntimeError on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout_s:g} s")


def stop(proc: subprocess.Popen[Any], grace_s: float = 5.0) -> None:
    """SIGTERM the child's process group, then SIGKILL it if it outlives `grace_s`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s)
    # The leader may be gone while its workers linger: the group gets SIGKILL either way.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace_s)


@contextlib.contextmanager
def spawned(
    args: Sequence[str],
    *,
    port: int | None = None,
    ready_timeout_s: float = 20.0,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `args` in a new process group; wait for `port` to listen; stop it on exit."""
    log = open(log_path, "wb") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        list(args),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
    )
    try:
        if port is not None:
            try:
                wait_for_port(port, ready_timeout_s, proc)
            except RuntimeError as exc:
                tail = log_path.read_text(errors="replace")[-2000:] if log_path else ""
                raise RuntimeError(f"{exc}\n{tail}") from None
        yield proc
    finally:
        stop(proc)
        if log_path is not None and not isinstance(log, int):
            log.close()


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """User plus system CPU seconds used so far by `pids` (the ones still alive)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS_PER_S


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid`."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES


def open_fds(pid: int) -> int:
    """Open file descriptors of `pid`."""
    return len(os.listdir(f"/proc/{pid}/fd"))
