"""A pool of forked worker processes that answer a stateless step's requests on K cores.

A ``to_parallel`` step's vertex serves gRPC on one asyncio (uvloop) loop, the *front*; the
step's CPU-bound Python code runs in K processes forked from it. The front only frames,
pickles and routes **chunks** of requests (one pickle and one write per chunk, no task or
future per message); each worker is a plain blocking loop: read a chunk, call ``answer`` on
each request, write one reply (:mod:`nfbuilder.runtime.workerproc`, with the reaping).

Wire (one ``socket.socketpair()`` per worker): a frame is an 8-byte little-endian length and
that many bytes of ``pickle.dumps(..., protocol=5)``. The front sends ``list[bytes]``
(requests); the worker replies ``("ok", list[bytes])`` (one answer per request, in order) or
``("error", message, traceback_text)`` if ``answer`` raised on one of them. A worker answers
its frames in the order it gets them, so the front matches replies to a FIFO per worker.

Bounds: :meth:`WorkerPool.stream` sends a worker at most :data:`STREAM_CHUNK` requests per
chunk and keeps at most :data:`STREAM_DEPTH` chunks outstanding per worker; it pulls a new
request only while fewer than :attr:`WorkerPool.stream_window` requests are pulled but not yet
yielded (``STREAM_CHUNK * (STREAM_DEPTH * K + 1)``).

Example::

    pool = WorkerPool(lambda request: request.upper(), 2, name="shout")
    pool.start()                  # before any event loop or thread exists in this process
    try:
        answers = uvloop.run(pool.run([b"a", b"b", b"c"]))   # [b"A", b"B", b"C"]
    finally:
        pool.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import socket
import sys
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from nfbuilder.runtime.workerproc import HEADER, exit_text, reap, serve

#: Most requests :meth:`WorkerPool.stream` puts in one chunk.
STREAM_CHUNK = 64
#: Most chunks :meth:`WorkerPool.stream` keeps outstanding per worker (one being answered, one
#: waiting in its socket, so a worker never waits for the front between chunks).
STREAM_DEPTH = 2
#: How long :meth:`WorkerPool.stop` waits for the workers to exit on EOF before SIGKILL.
STOP_TIMEOUT = 1.0

_RECV_BYTES = 256 * 1024


class WorkerError(Exception):
    """A worker's ``answer`` raised: carries the worker-side message and traceback text.

    Example::

        try:
            await pool.run([b"bad"])
        except WorkerError as exc:
            log.error("step failed: %s\\n%s", exc.message, exc.traceback_text)
    """

    def __init__(self, message: str, traceback_text: str) -> None:
        super().__init__(message)
        self.message = message
        self.traceback_text = traceback_text


class WorkerDied(Exception):
    """A worker process exited, or its connection closed, while the pool was in use.

    The message names the step, the worker index and pid and the exit status when known. The
    pool is then broken for good (a process with threads cannot fork a replacement): every
    later call raises this error again, and the vertex should exit.

    Example::

        raise WorkerDied("step 'parse': worker 1 (pid 42) killed by SIGKILL", index=1, pid=42)
    """

    def __init__(self, message: str, *, index: int | None = None,
                 pid: int | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.pid = pid


class _Job(Protocol):
    """Whoever waits for a chunk's reply: a :meth:`WorkerPool.run` call or a stream."""

    def reply(self, tag: int, answers: list[bytes]) -> None: ...

    def fail(self, error: BaseException) -> None: ...


class _Worker:
    """The front's side of one worker: its socket end, its FIFO of outstanding chunks and
    the bytes not yet written or not yet parsed."""

    __slots__ = ("index", "pid", "sock", "pending", "out", "inbuf", "attached", "reaped")

    def __init__(self, index: int, pid: int, sock: socket.socket) -> None:
        self.index = index
        self.pid = pid
        self.sock = sock
        self.pending: deque[tuple[_Job, int]] = deque()
        self.out = bytearray()
        self.inbuf = bytearray()
        self.attached = False
        self.reaped = False


class _Run:
    """One :meth:`WorkerPool.run` call: a slot per chunk, one future for the whole call."""

    __slots__ = ("future", "parts", "left")

    def __init__(self, future: asyncio.Future[list[list[bytes]]], chunks: int) -> None:
        self.future = future
        self.parts: list[list[bytes]] = [[] for _ in range(chunks)]
        self.left = chunks

    def reply(self, tag: int, answers: list[bytes]) -> None:
        if self.future.done():  # failed or cancelled: the other chunks' replies are dropped
            return
        self.parts[tag] = answers
        self.left -= 1
        if not self.left:
            self.future.set_result(self.parts)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class _Stream:
    """One :meth:`WorkerPool.stream` call: requests not yet sent, answers not yet yielded."""

    __slots__ = ("loop", "window", "unsent", "ready", "outstanding", "error", "input_done",
                 "waiter", "space", "queued", "closed")

    def __init__(self, loop: asyncio.AbstractEventLoop, window: int) -> None:
        self.loop = loop
        self.window = window
        self.unsent: list[bytes] = []
        self.ready: list[bytes] = []
        self.outstanding = 0  # pulled from the input, not yet yielded
        self.error: BaseException | None = None
        self.input_done = False
        self.waiter: asyncio.Future[None] | None = None  # the consumer, waiting for answers
        self.space: asyncio.Future[None] | None = None  # the feeder, waiting for the window
        self.queued = False  # in the pool's queue of streams with unsent requests
        self.closed = False

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def reply(self, tag: int, answers: list[bytes]) -> None:
        if not self.closed:
            self.ready.extend(answers)
            self.wake()

    def fail(self, error: BaseException) -> None:
        if not self.closed and self.error is None:
            self.error = error
            self.wake()


class WorkerPool:
    """K forked processes answering one step's requests, driven from the front's event loop.

    ``answer`` (one serialized request -> one serialized response) runs in the workers; it is
    inherited by ``fork``, never pickled. :meth:`start` must be called before any event loop
    or thread is started in this process; :meth:`run` and :meth:`stream` then work on the one
    event loop that first calls them. :meth:`run` calls are serialized (an ``asyncio.Lock``);
    streams may run alongside each other and a :meth:`run` call, sharing the workers.

    Example::

        pool = WorkerPool(step.answer, 2, name="parse")
        pool.start()
        try:
            uvloop.run(serve(pool))   # awaits pool.run(batch) / iterates pool.stream(requests)
        finally:
            pool.stop()
    """

    def __init__(self, answer: Callable[[bytes], bytes], processes: int, *,
                 name: str = "step") -> None:
        if not callable(answer):
            raise TypeError(f"WorkerPool {name!r}: answer must be callable, got {answer!r}")
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise ValueError(f"WorkerPool {name!r}: processes must be an int >= 1, "
                             f"got {processes!r}")
        self._answer = answer
        self._processes = processes
        self._name = name
        self._workers: list[_Worker] = []
        self._started = False
        self._stopped = False
        self._broken: WorkerDied | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._streams: set[_Stream] = set()
        self._waiting: deque[_Stream] = deque()  # streams with unsent requests
        self._pump_scheduled = False

    @property
    def processes(self) -> int:
        """K, the number of worker processes (``WorkerPool(f, 2).processes == 2``)."""
        return self._processes

    @property
    def pids(self) -> list[int]:
        """The workers' pids, in worker-index order; ``[]`` before :meth:`start`."""
        return [w.pid for w in self._workers]

    @property
    def stream_window(self) -> int:
        """Most requests a :meth:`stream` call holds pulled but not yet yielded
        (``STREAM_CHUNK * (STREAM_DEPTH * processes + 1)``: 320 for 2 processes)."""
        return STREAM_CHUNK * (STREAM_DEPTH * self._processes + 1)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Fork the K workers, each connected to the front by its own socketpair.

        Call it before any event loop or thread exists in this process (a forked child keeps
        only the calling thread; ``PR_SET_PDEATHSIG`` follows that thread too). A second call
        raises ``RuntimeError``. Example: ``pool.start(); uvloop.run(main(pool))``.
        """
        if self._started:
            raise RuntimeError(f"WorkerPool {self._name!r}: start() was already called")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(f"WorkerPool {self._name!r}: start() forks, so call it before "
                               "the event loop starts, not from a running loop")
        self._started = True
        for stream in (sys.stdout, sys.stderr):  # or the children would print it again
            with contextlib.suppress(AttributeError, OSError, ValueError):
                stream.flush()
        try:
            for index in range(self._processes):
                self._workers.append(self._fork(index))
        except BaseException:
            self.stop()
            raise

    def _fork(self, index: int) -> _Worker:
        front, back = socket.socketpair()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the caller's code
            status = 1
            try:
                front.close()
                for other in self._workers:  # or a dead worker's EOF would never show
                    other.sock.close()
                status = serve(back, self._answer, parent)
            except BaseException:
                traceback.print_exc()
            finally:
                try:
                    for stream in (sys.stdout, sys.stderr):
                        stream.flush()
                finally:
                    os._exit(status)
        back.close()
        return _Worker(index, pid, front)

    def stop(self) -> None:
        """Close the sockets (the workers see EOF and exit), reap the workers, SIGKILL those
        still running after :data:`STOP_TIMEOUT`. Calls still waiting for answers get
        :class:`WorkerDied`. Safe to call twice or without :meth:`start`: ``pool.stop()``.
        """
        if self._stopped:
            return
        self._stopped = True
        live = self._loop is not None and not self._loop.is_closed()
        self._detach_all()
        for w in self._workers:
            with contextlib.suppress(OSError):
                w.sock.shutdown(socket.SHUT_RDWR)
            w.sock.close()
        deadline = time.monotonic() + STOP_TIMEOUT
        for w in self._workers:
            if w.reaped:
                continue
            gone, _ = reap(w.pid, max(0.0, deadline - time.monotonic()))
            if not gone:
                try:
                    os.kill(w.pid, signal.SIGKILL)
                    os.waitpid(w.pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
            w.reaped = True
        if live:
            self._fail_all(WorkerDied(f"step {self._name!r}: the worker pool was stopped"))

    # -- ordered batches --------------------------------------------------------------------

    async def run(self, requests: Sequence[bytes]) -> list[bytes]:
        """Answer ``requests`` in order: contiguous chunks of about n/K, one per worker, all
        answered at once. Raises :class:`WorkerError` if ``answer`` raised (the pool stays
        usable) or :class:`WorkerDied`. Example: ``answers = await pool.run(batch)``.
        """
        loop = self._attach()
        if not requests:
            return []
        assert self._lock is not None
        async with self._lock:
            self._check_usable()
            count = len(requests)
            chunks = min(self._processes, count)
            size, extra = divmod(count, chunks)
            job = _Run(loop.create_future(), chunks)
            begin = 0
            for tag in range(chunks):
                end = begin + size + (tag < extra)
                self._send(self._workers[tag], requests[begin:end], job, tag)
                begin = end
            parts = await job.future
        answers: list[bytes] = []
        for part in parts:
            answers.extend(part)
        return answers

    # -- unordered streams ------------------------------------------------------------------

    async def stream(self, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Yield one answer per request of ``requests``, in completion order, while requests
        keep arriving; ends once the input has ended and every answer is yielded.

        Requests queue up while every worker has :data:`STREAM_DEPTH` chunks outstanding and
        go out as one chunk when a worker frees up; reading ``requests`` pauses while
        :attr:`stream_window` requests are pulled but not yet yielded. Raises
        :class:`WorkerError`, :class:`WorkerDied`, or what ``requests`` raised.

        Example::

            async for answer in pool.stream(requests_from_numa()):
                await send(answer)
        """
        loop = self._attach()
        self._check_usable()
        job = _Stream(loop, self.stream_window)
        self._streams.add(job)
        feeder = loop.create_task(self._feed(requests, job))
        try:
            while True:
                if job.error is not None:
                    raise job.error
                if job.ready:
                    batch, job.ready = job.ready, []
                    for answer in batch:
                        yield answer
                        job.outstanding -= 1
                        if job.space is not None:
                            space, job.space = job.space, None
                            if not space.done():
                                space.set_result(None)
                    continue
                if job.input_done and not job.outstanding:
                    return
                job.waiter = loop.create_future()
                await job.waiter
        finally:
            job.closed = True
            job.unsent.clear()
            self._streams.discard(job)
            if job.queued:
                self._waiting.remove(job)
                job.queued = False
            feeder.cancel()

    async def _feed(self, requests: AsyncIterator[bytes], job: _Stream) -> None:
        """Pull ``requests`` into ``job`` while its window has room; schedule a dispatch."""
        loop = job.loop
        try:
            async for request in requests:
                job.unsent.append(request)
                job.outstanding += 1
                if not job.queued:
                    job.queued = True
                    self._waiting.append(job)
                if not self._pump_scheduled:
                    # later in this loop pass, so requests arriving together share a chunk
                    self._pump_scheduled = True
                    loop.call_soon(self._pump)
                while job.outstanding >= job.window and not job.closed:
                    job.space = loop.create_future()
                    await job.space
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            job.fail(exc)
        else:
            job.input_done = True
            job.wake()

    def _pump(self) -> None:
        """Send the queued streams' requests to workers below :data:`STREAM_DEPTH`: idle
        workers first, sharing what is queued between them, at most STREAM_CHUNK each."""
        self._pump_scheduled = False
        waiting = self._waiting
        workers = self._workers
        while waiting and self._broken is None and not self._stopped:
            job = waiting[0]
            unsent = job.unsent
            if not unsent:
                waiting.popleft()
                job.queued = False
                continue
            worker = min(workers, key=lambda w: len(w.pending))
            busy = len(worker.pending)
            if busy >= STREAM_DEPTH:
                return
            if busy:
                size = min(STREAM_CHUNK, len(unsent))
            else:
                idle = sum(1 for w in workers if not w.pending)
                size = min(STREAM_CHUNK, -(-len(unsent) // idle))
            chunk = unsent[:size]
            del unsent[:size]
            if len(waiting) > 1:
                waiting.rotate(-1)  # streams take turns
            self._send(worker, chunk, job, 0)

    # -- the front's I/O --------------------------------------------------------------------

    def _attach(self) -> asyncio.AbstractEventLoop:
        """The running loop, watching the workers' sockets from the first call on."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return loop
        if not self._started or self._stopped:
            state = "stopped" if self._stopped else "not started"
            raise RuntimeError(f"WorkerPool {self._name!r} is {state}: call start() first "
                               "(once, before the event loop starts)")
        if self._loop is not None:
            raise RuntimeError(f"WorkerPool {self._name!r} already serves another event loop")
        self._loop = loop
        self._lock = asyncio.Lock()
        for w in self._workers:
            w.sock.setblocking(False)
            loop.add_reader(w.sock.fileno(), self._on_readable, w)
            w.attached = True
        return loop

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise self._broken
        if self._stopped:
            raise RuntimeError(f"WorkerPool {self._name!r} is stopped")

    def _send(self, worker: _Worker, chunk: Sequence[bytes], job: _Job, tag: int) -> None:
        if self._broken is not None:  # a worker died while this call was sending
            job.fail(self._broken)
            return
        payload = pickle.dumps(chunk, protocol=5)
        header = HEADER.pack(len(payload))
        worker.pending.append((job, tag))
        if worker.out:  # the socket is full: append behind what waits
            worker.out += header
            worker.out += payload
            return
        try:
            sent = worker.sock.sendmsg((header, payload))
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._lost(worker, f"its connection failed ({exc})")
            return
        if sent < len(header) + len(payload):
            if sent < len(header):
                worker.out += header[sent:]
                worker.out += payload
            else:
                worker.out += memoryview(payload)[sent - len(header):]
            assert self._loop is not None
            self._loop.add_writer(worker.sock.fileno(), self._on_writable, worker)

    def _on_writable(self, worker: _Worker) -> None:
        try:
            sent = worker.sock.send(worker.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(worker, f"its connection failed ({exc})")
            return
        del worker.out[:sent]
        if not worker.out and self._loop is not None:
            self._loop.remove_writer(worker.sock.fileno())

    def _on_readable(self, worker: _Worker) -> None:
        try:
            data: bytes | bytearray = worker.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._lost(worker, "closed its connection")
            return
        if worker.inbuf:
            worker.inbuf += data
            data = worker.inbuf
        pos, total = 0, len(data)
        try:
            with memoryview(data) as view:
                while total - pos >= HEADER.size:
                    end = pos + HEADER.size + HEADER.unpack_from(view, pos)[0]
                    if end > total:
                        break
                    reply: tuple[Any, ...] = pickle.loads(view[pos + HEADER.size:end])
                    pos = end
                    job, tag = worker.pending.popleft()
                    if reply[0] == "ok":
                        job.reply(tag, reply[1])
                    else:
                        job.fail(WorkerError(reply[1], reply[2]))
        except Exception as exc:  # a garbled frame: nothing after it can be trusted
            self._lost(worker, f"sent an unreadable reply ({exc!r})")
            return
        if data is worker.inbuf:
            del worker.inbuf[:pos]
        elif pos < total:
            worker.inbuf += data[pos:]
        if self._waiting:
            self._pump()

    def _lost(self, worker: _Worker, what: str) -> None:
        """``worker`` is gone: fail every call in progress and break the pool for good."""
        if self._broken is not None or self._stopped:
            return
        outstanding = len(worker.pending)
        gone, status = reap(worker.pid, 0.05)  # its socket closes just before it exits
        worker.reaped = gone
        if status is not None:
            what = f"exited ({exit_text(status)})"
        elif gone:
            what = f"{what}, exited (exit status unknown)"
        self._broken = WorkerDied(
            f"step {self._name!r}: worker {worker.index} (pid {worker.pid}) {what} with "
            f"{outstanding} chunk(s) outstanding; the worker pool cannot continue",
            index=worker.index, pid=worker.pid)
        self._detach_all()
        self._fail_all(self._broken)

    def _detach_all(self) -> None:
        loop = self._loop
        live = loop is not None and not loop.is_closed()
        for w in self._workers:
            if w.attached and live:
                assert loop is not None
                loop.remove_reader(w.sock.fileno())
                loop.remove_writer(w.sock.fileno())
            w.attached = False

    def _fail_all(self, error: BaseException) -> None:
        for w in self._workers:
            pending, w.pending = w.pending, deque()
            for job, _ in pending:
                job.fail(error)
        for job in list(self._streams):
            job.fail(error)
        for job in self._waiting:
            job.queued = False
        self._waiting.clear()


# -- the worker process ---------------------------------------------------------------------
