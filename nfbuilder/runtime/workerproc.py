"""The worker side of a :class:`~nfbuilder.runtime.workers.WorkerPool`, and reaping workers.

A forked worker runs :func:`serve` on its end of the socketpair until EOF: a plain blocking
loop that reads a chunk of requests, answers each, writes one reply frame (the wire is
described in :mod:`nfbuilder.runtime.workers`). The front reaps its workers with :func:`reap`::

    status = serve(sock, answer, parent=os.getppid())     # in the worker, after fork
    gone, status = reap(pid, timeout=1.0)                 # in the front
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable

from nfbuilder.runtime.errors import describe

#: a frame's header: the length of the pickle that follows, 8 bytes little-endian
HEADER = struct.Struct("<Q")
_PR_SET_PDEATHSIG = 1


def serve(sock: socket.socket, answer: Callable[[bytes], bytes], parent: int) -> int:
    """The worker's loop: read a chunk, answer each request, write one reply; 0 on EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the front handles Ctrl-C and stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the front's handler: just go
    with contextlib.suppress(ValueError, OSError):
        signal.set_wakeup_fd(-1)
    _die_with_parent(parent)
    sock.setblocking(True)
    reader = sock.makefile("rb")
    try:
        while True:
            header = reader.read(HEADER.size)
            if len(header) < HEADER.size:
                return 0
            (size,) = HEADER.unpack(header)
            payload = reader.read(size)
            if len(payload) < size:
                return 0
            try:
                answers = [answer(request) for request in pickle.loads(payload)]
                out = pickle.dumps(("ok", answers), protocol=5)
            except Exception as exc:
                out = pickle.dumps(("error", *describe(exc)), protocol=5)
            header = HEADER.pack(len(out))
            sent = sock.sendmsg((header, out))
            if sent < len(header):
                sock.sendall(header[sent:])
                sent = len(header)
            if sent - len(header) < len(out):
                sock.sendall(memoryview(out)[sent - len(header):])
    except OSError:  # the front went away
        return 0


def _die_with_parent(parent: int) -> None:
    """Get SIGTERM when the front dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``); exit
    now if it already has."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(0)


def reap(pid: int, timeout: float) -> tuple[bool, int | None]:
    """Wait up to ``timeout`` s for child ``pid`` to exit: (reaped, wait status if known)."""
    deadline = time.monotonic() + timeout
    pidfd = _pidfd(pid)
    try:
        while True:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else
                return True, None
            if done:
                return True, status
            left = deadline - time.monotonic()
            if left <= 0:
                return False, None
            if pidfd is None:
                time.sleep(min(left, 0.005))
            else:
                select.select([pidfd], [], [], left)  # readable once the process exits
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _pidfd(pid: int) -> int | None:
    if sys.platform == "linux":
        try:
            return os.pidfd_open(pid)
        except OSError:
            return None
    return None


def exit_text(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"
