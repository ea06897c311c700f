"""WorkerPool on real forked processes, under asyncio and uvloop.

Every pool is started from the pytest main thread before its event loop exists, as the
module requires; the worker side never returns into pytest (``os._exit`` in a ``finally``).
Synchronisation uses pipes the workers write to, never sleeps; every wait has a timeout so
a bug fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import select
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import pytest
import uvloop

from nfbuilder.runtime import workers
from nfbuilder.runtime.workers import WorkerDied, WorkerError, WorkerPool

TIMEOUT = 20.0  # generous: only reached when something is broken
Runner = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def runner(request: pytest.FixtureRequest) -> Runner:
    """Runs a coroutine to completion on a fresh loop of either kind, with a timeout."""
    run: Runner = asyncio.run if request.param == "asyncio" else uvloop.run

    def drive(coro: Coroutine[Any, Any, Any]) -> Any:
        return run(asyncio.wait_for(coro, TIMEOUT))

    return drive


@pytest.fixture
def make_pool() -> Iterator[Callable[..., WorkerPool]]:
    """Start pools (forking now, before any loop) and stop them all at teardown."""
    pools: list[WorkerPool] = []

    def make(answer: Callable[[bytes], bytes], processes: int = 2) -> WorkerPool:
        pool = WorkerPool(answer, processes, name="test-step")
        pools.append(pool)
        pool.start()
        return pool

    yield make
    for pool in pools:
        pool.stop()


def tag_pid(request: bytes) -> bytes:
    """The request, with the pid of the worker that answered it."""
    return request + b"@" + str(os.getpid()).encode()


def pid_of(answer: bytes) -> int:
    return int(answer.rsplit(b"@", 1)[1])


def spin(rounds: int) -> int:
    """Pure-Python CPU work (about 1 ms for 20,000 rounds)."""
    total = 0
    for i in range(rounds):
        total += i * i % 7
    return total


async def numbered(count: int, prefix: bytes = b"") -> AsyncIterator[bytes]:
    for i in range(count):
        yield prefix + str(i).encode()


def blocking_answer(report_fd: int) -> Callable[[bytes], bytes]:
    """An answer that, for b"block", reports its worker's pid on ``report_fd`` and then
    blocks until the worker is killed; any other request is answered at once."""

    def answer(request: bytes) -> bytes:
        if request == b"block":
            os.write(report_fd, f"{os.getpid()}\n".encode())
            while True:
                signal.pause()
        return tag_pid(request)

    return answer


async def read_pid(fd: int) -> int:
    """The first pid a worker wrote on pipe ``fd``, without blocking the loop."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[bytes] = loop.create_future()

    def on_readable() -> None:
        if not ready.done():
            ready.set_result(os.read(fd, 64))

    loop.add_reader(fd, on_readable)
    try:
        return int((await ready).split()[0])
    finally:
        loop.remove_reader(fd)


def assert_reaped(pids: list[int]) -> None:
    for pid in pids:
        with pytest.raises(ChildProcessError):  # not our child any more: we reaped it
            os.waitpid(pid, os.WNOHANG)
        assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} lingers"


# -- run(): ordered batches -----------------------------------------------------------------


def test_run_answers_in_order_in_contiguous_chunks(runner: Runner, make_pool: Any) -> None:
    pool = make_pool(tag_pid, 2)
    requests = [str(i).encode() for i in range(1000)]

    answers = runner(pool.run(requests))

    assert [a.rsplit(b"@", 1)[0] for a in answers] == requests
    pids = [pid_of(a) for a in answers]
    first, second = pool.pids
    assert pids == [first] * 500 + [second] * 500  # both worked, each a contiguous half


def test_run_smaller_than_pool_and_empty(runner: Runner, make_pool: Any) -> None:
    pool = make_pool(tag_pid, 3)

    async def main() -> tuple[list[bytes], list[bytes]]:
        return await pool.run([]), await pool.run([b"only"])

    empty, one = runner(main())
    assert empty == []
    assert one == [b"only@" + str(pool.pids[0]).encode()]


def test_cpu_bound_answers_match_direct_calls(runner: Runner, make_pool: Any) -> None:
    def answer(request: bytes) -> bytes:
        return str(spin(20_000) + int(request)).encode()

    pool = make_pool(answer, 2)
    requests = [str(i).encode() for i in range(400)]

    assert runner(pool.run(requests)) == [answer(r) for r in requests]


def test_large_request_and_response_round_trip(runner: Runner, make_pool: Any) -> None:
    pool = make_pool(lambda request: request[::-1], 2)
    big = os.urandom(3 * 1024 * 1024)

    async def main() -> tuple[list[bytes], list[bytes]]:
        ordered = await pool.run([big, b"small", big[:1000]])
        streamed = [a async for a in pool.stream(_items([big, big[1:]]))]
        return ordered, streamed

    ordered, streamed = runner(main())
    assert ordered == [big[::-1], b"llams", big[:1000][::-1]]
    assert sorted(streamed) == sorted([big[::-1], big[1:][::-1]])


async def _items(items: list[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


# -- stream(): unordered ----------------------------------------------------------------------


def test_stream_answers_every_request_once(runner: Runner, make_pool: Any) -> None:
    pool = make_pool(tag_pid, 2)

    async def main() -> list[bytes]:
        return [a async for a in pool.stream(numbered(2000))]

    answers = runner(main())

    requests = [str(i).encode() for i in range(2000)]
    assert collections.Counter(a.rsplit(b"@", 1)[0] for a in answers) == collections.Counter(
        requests)
    assert {pid_of(a) for a in answers} == set(pool.pids)


def test_stream_reads_input_at_most_a_window_ahead(runner: Runner, make_pool: Any) -> None:
    pool = make_pool(lambda request: spin(4_000) and request, 2)
    window = pool.stream_window
    assert window == workers.STREAM_CHUNK * (workers.STREAM_DEPTH * 2 + 1)
    pulled = 0

    async def requests() -> AsyncIterator[bytes]:
        nonlocal pulled
        for i in range(2000):
            pulled += 1
            yield str(i).encode()

    async def main() -> tuple[int, int]:
        received = ahead = 0
        async for _ in pool.stream(requests()):
            received += 1
            ahead = max(ahead, pulled - received)
        return received, ahead

    received, ahead = runner(main())
    assert received == 2000
    assert ahead <= window
    # the input never waits, so the stream does read ahead to keep both workers fed
    assert ahead > workers.STREAM_CHUNK


def test_empty_stream_ends(runner: Runner, make_pool: Any) -> None:
    pool = make_pool(tag_pid, 2)

    async def main() -> list[bytes]:
        return [a async for a in pool.stream(numbered(0))]

    assert runner(main()) == []


def test_streams_and_run_share_the_pool(runner: Runner, make_pool: Any) -> None:
    pool = make_pool(lambda request: request.upper(), 2)

    async def collect(prefix: bytes) -> list[bytes]:
        return [a async for a in pool.stream(numbered(700, prefix))]

    async def main() -> list[Any]:
        batch = [b"r%d" % i for i in range(300)]
        return list(await asyncio.gather(collect(b"a"), collect(b"b"), pool.run(batch)))

    a, b, ordered = runner(main())
    assert sorted(a) == sorted(b"A%d" % i for i in range(700))
    assert sorted(b) == sorted(b"B%d" % i for i in range(700))
    assert ordered == [b"R%d" % i for i in range(300)]


def test_stream_propagates_an_input_error(runner: Runner, make_pool: Any) -> None:
    pool = make_pool(tag_pid, 2)

    async def requests() -> AsyncIterator[bytes]:
        yield b"1"
        raise KeyError("input broke")

    async def main() -> None:
        async for _ in pool.stream(requests()):
            pass

    with pytest.raises(KeyError, match="input broke"):
        runner(main())


# -- errors ---------------------------------------------------------------------------------


def fussy(request: bytes) -> bytes:
    if request == b"bad":
        raise ValueError("boom")
    return request.upper()


def test_answer_error_raises_worker_error_and_pool_recovers(
        runner: Runner, make_pool: Any) -> None:
    pool = make_pool(fussy, 2)

    async def main() -> tuple[WorkerError, list[bytes]]:
        with pytest.raises(WorkerError) as caught:
            await pool.run([b"a", b"b", b"bad", b"c"])
        return caught.value, await pool.run([b"x", b"y", b"z"])

    error, later = runner(main())
    assert str(error) == error.message == "ValueError('boom')"
    assert "Traceback (most recent call last)" in error.traceback_text
    assert "in fussy" in error.traceback_text
    assert "ValueError: boom" in error.traceback_text
    assert later == [b"X", b"Y", b"Z"]


def test_answer_error_ends_the_stream(runner: Runner, make_pool: Any) -> None:
    pool = make_pool(fussy, 2)

    async def requests() -> AsyncIterator[bytes]:
        for i in range(500):
            yield b"bad" if i == 250 else b"ok"

    async def main() -> list[bytes]:
        with pytest.raises(WorkerError, match=r"ValueError\('boom'\)"):
            async for _ in pool.stream(requests()):
                pass
        return [a async for a in pool.stream(numbered(100))]

    assert sorted(runner(main())) == sorted(str(i).encode() for i in range(100))


def test_killed_worker_fails_run_promptly(runner: Runner, make_pool: Any) -> None:
    report_r, report_w = os.pipe()
    pool = make_pool(blocking_answer(report_w), 2)

    async def main() -> WorkerDied:
        call = asyncio.ensure_future(pool.run([b"quick", b"block"]))
        victim = await read_pid(report_r)
        assert victim == pool.pids[1]
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(WorkerDied) as caught:
            await asyncio.wait_for(call, TIMEOUT)
        with pytest.raises(WorkerDied):  # the pool is broken for good
            await pool.run([b"again"])
        return caught.value

    try:
        died = runner(main())
    finally:
        os.close(report_r)
        os.close(report_w)
    assert died.index == 1 and died.pid == pool.pids[1]
    assert f"worker 1 (pid {pool.pids[1]})" in str(died)
    assert "killed by SIGKILL" in str(died)
    pool.stop()
    assert_reaped(pool.pids)


def test_killed_worker_fails_stream_promptly(runner: Runner, make_pool: Any) -> None:
    report_r, report_w = os.pipe()
    pool = make_pool(blocking_answer(report_w), 2)

    async def requests() -> AsyncIterator[bytes]:
        for i in range(200):
            yield b"block" if i == 150 else b"quick"

    async def consume() -> None:
        async for _ in pool.stream(requests()):
            pass

    async def main() -> WorkerDied:
        call = asyncio.ensure_future(consume())
        victim = await read_pid(report_r)
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(WorkerDied) as caught:
            await asyncio.wait_for(call, TIMEOUT)
        return caught.value

    try:
        died = runner(main())
    finally:
        os.close(report_r)
        os.close(report_w)
    assert died.pid in pool.pids
    assert f"(pid {died.pid})" in str(died) and "killed by SIGKILL" in str(died)


# -- lifecycle ------------------------------------------------------------------------------


def test_stop_reaps_the_workers_and_is_idempotent(runner: Runner) -> None:
    pool = WorkerPool(tag_pid, 2)
    pool.start()
    try:
        assert len(runner(pool.run([b"a", b"b"]))) == 2
        pids = pool.pids
        assert len(pids) == 2 and all(os.path.exists(f"/proc/{pid}") for pid in pids)
    finally:
        pool.stop()
    assert_reaped(pids)
    pool.stop()


def test_stop_kills_a_stuck_worker_and_fails_its_call(
        runner: Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "STOP_TIMEOUT", 0.1)
    report_r, report_w = os.pipe()
    pool = WorkerPool(blocking_answer(report_w), 1)
    pool.start()

    async def main() -> None:
        call = asyncio.ensure_future(pool.run([b"block"]))
        await read_pid(report_r)
        pool.stop()  # the worker never reads its EOF: stop must SIGKILL it
        with pytest.raises(WorkerDied, match="stopped"):
            await asyncio.wait_for(call, TIMEOUT)

    try:
        runner(main())
    finally:
        pool.stop()
        os.close(report_r)
        os.close(report_w)
    assert_reaped(pool.pids)


def test_stop_without_start_and_misuse_errors(runner: Runner) -> None:
    pool = WorkerPool(tag_pid, 2)
    pool.stop()
    pool.stop()
    assert pool.pids == [] and pool.processes == 2

    fresh = WorkerPool(tag_pid, 1)
    with pytest.raises(RuntimeError, match="call start"):
        runner(fresh.run([b"x"]))

    async def start_inside_loop() -> None:
        fresh.start()

    with pytest.raises(RuntimeError, match="before the event loop starts"):
        runner(start_inside_loop())
    assert fresh.pids == []

    fresh.start()
    try:
        with pytest.raises(RuntimeError, match="already called"):
            fresh.start()
    finally:
        fresh.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        runner(fresh.run([b"x"]))


@pytest.mark.parametrize("processes", [0, -1, 1.5, True])
def test_processes_must_be_a_positive_int(processes: Any) -> None:
    with pytest.raises(ValueError, match="processes must be an int >= 1"):
        WorkerPool(tag_pid, processes)


def _set_child_subreaper(on: bool) -> None:
    """Orphans of our descendants come to us (not to PID 1, which may never reap them)."""
    import ctypes

    pr_set_child_subreaper = 36
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, int(on), 0, 0, 0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_worker_dies_with_its_front() -> None:
    """A busy worker (not reading its socket, so no EOF can save it) exits when its front is
    SIGKILLed: PR_SET_PDEATHSIG."""
    report_r, report_w = os.pipe()
    _set_child_subreaper(True)
    front = os.fork()
    if front == 0:  # the front: never returns into pytest
        try:
            pool = WorkerPool(blocking_answer(report_w), 1)
            pool.start()
            asyncio.run(pool.run([b"block"]))
        finally:
            os._exit(0)
    worker = 0
    try:
        readable, _, _ = select.select([report_r], [], [], TIMEOUT)
        assert readable, "the worker never started"
        worker = int(os.read(report_r, 64).split()[0])
        pidfd = os.pidfd_open(worker)
        try:
            os.kill(front, signal.SIGKILL)
            os.waitpid(front, 0)
            exited, _, _ = select.select([pidfd], [], [], TIMEOUT)
            assert exited, f"worker {worker} outlived its front"
        finally:
            os.close(pidfd)
        _, status = os.waitpid(worker, 0)  # ours now, as the subreaper
        assert os.waitstatus_to_exitcode(status) == -signal.SIGTERM
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(front, signal.SIGKILL)
            os.waitpid(front, 0)
        if worker:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(worker, signal.SIGKILL)
                os.waitpid(worker, 0)
        _set_child_subreaper(False)
        os.close(report_r)
        os.close(report_w)
