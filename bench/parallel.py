"""Parallel-step benchmark: CPU-bound steps on K worker processes, async steps awaiting together.

Two measurements, each a ratio taken in one run:

  processes   the ``burn`` vertex of bench/cpu_app.py (about 1 ms of pure Python per message)
              served by ``python -m nfbuilder serve --unordered`` with ``processes=1`` (the step
              runs in the server process) and then ``processes=2`` (two worker processes behind
              the one socket), each driven like numa: prebuilt requests in bursts of 500 on one
              HTTP/2 connection (bench/map_vertex.py's driver). Figure: messages per second;
              goal: K=2 at least 1.6x K=1 on 2 cores.
  async       apps/async_enrich.py on the embedded engine (every vertex a process, real TCP in
              and out): 100 orders whose lookup awaits 0.2 s each. Figure: the time until all
              100 are delivered against the 20 s they would take one at a time; goal: under a
              quarter of it.

    python bench/parallel.py                 # make bench-parallel
    python bench/parallel.py -n 1000 --only processes
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

from bench.engine import free_port  # noqa: E402
from bench.map_vertex import BurstDriver, prebuilt_bursts  # noqa: E402

APP_ARGS = ["--in", "127.0.0.1:7000", "--out", "127.0.0.1:7001"]
PROCESSES_GOAL = 1.6
ASYNC_GOAL = 0.25


def serve_burn(sock_dir: Path, processes: int, work: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NFBUILDER_SOCKET_DIR": str(sock_dir), "NUMAFLOW_UD_CONTAINER_TYPE": "udf",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    log = open(sock_dir / "server.log", "wb")  # noqa: SIM115 - the server's for its lifetime
    return subprocess.Popen(
        [sys.executable, "-m", "nfbuilder", "serve", "--unordered", "--app", "bench.cpu_app",
         "--vertex", "burn", "--", *APP_ARGS, "--processes", str(processes), "--work", str(work)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def messages_per_second(processes: int, n: int, work: int) -> float:
    """Drive the burn vertex with ``n`` messages (after a warm-up); messages per second."""
    from nfbuilder._proto import map_pb2
    from nfbuilder.local.serverinfo import wait_server_info

    payloads = [os.urandom(100) for _ in range(97)]
    warmup = prebuilt_bursts(500, 500, payloads, "warm")
    measured = prebuilt_bursts(n, 500, payloads, "bench")
    with tempfile.TemporaryDirectory(prefix="nfb-parallel-") as tmp:
        sock_dir = Path(tmp)
        proc = serve_burn(sock_dir, processes, work)
        try:
            asyncio.run(wait_server_info(sock_dir / "mapper-server-info", poll_s=0.05,
                                         deadline_s=60))
            driver = BurstDriver(sock_dir / "map.sock")
            driver.wait_ready()
            stream = driver.open_map()
            for wire, ids in warmup:
                driver.burst(stream, wire, len(ids))
            t0 = time.perf_counter()
            replies = [driver.burst(stream, wire, len(ids)) for wire, ids in measured]
            elapsed = time.perf_counter() - t0
            driver.close()
        except Exception:
            print((sock_dir / "server.log").read_text(errors="replace")[-2000:], file=sys.stderr)
            raise
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    got = sorted(map_pb2.MapResponse.FromString(r).id for burst in replies for r in burst)
    want = sorted(i for _, ids in measured for i in ids)
    if got != want:
        raise AssertionError(f"processes={processes}: not one reply per request")
    return n / elapsed


async def enrich_seconds(orders: int, lookup_ms: int) -> float:
    """apps/async_enrich.py on the engine: seconds until ``orders`` orders are delivered."""
    from apps.data import frame
    from nfbuilder.loader import load_app
    from nfbuilder.local.engine import Engine, EngineOptions
    from nfbuilder.local.tcptools import TcpReceiver, send_frames
    from nfbuilder.plan import PlanOptions

    rx = await TcpReceiver.start()
    port = free_port()
    loaded = load_app(str(ROOT / "apps" / "async_enrich.py"), [
        "--in", f"127.0.0.1:{port}", "--out", f"127.0.0.1:{rx.address[1]}",
        "--lookup-ms", str(lookup_ms)])
    with tempfile.TemporaryDirectory(prefix="nfb-parallel-engine-") as work_dir:
        engine = Engine(loaded, EngineOptions(PlanOptions(), quiet=True, work_dir=work_dir))
        await engine.start()
        try:
            t0 = time.perf_counter()
            await send_frames(("127.0.0.1", port),
                              [frame(f"c{i},{i}".encode()) for i in range(orders)])
            while engine.delivered < orders:
                if engine.failure:
                    raise RuntimeError(engine.failure)
                await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - t0
            await engine.drain()
        finally:
            await engine.stop_processes()
            await rx.close()
    lines = rx.data().decode().split("\n")[:-1]
    if sorted(line.split(",")[0] for line in lines) != sorted(f"c{i}" for i in range(orders)):
        raise AssertionError("async: not every order delivered exactly once")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="messages per processes run")
    parser.add_argument("--work", type=int, default=20_000,
                        help="iterations of the CPU-bound step per message (~1 ms at 20,000)")
    parser.add_argument("--orders", type=int, default=100)
    parser.add_argument("--lookup-ms", type=int, default=200)
    parser.add_argument("--only", choices=("processes", "async"))
    args = parser.parse_args(argv)
    ok = True
    print(f"cores: {os.cpu_count()}")
    if args.only in (None, "processes"):
        one = messages_per_second(1, args.n, args.work)
        two = messages_per_second(2, args.n, args.work)
        ratio = two / one
        ok &= ratio >= PROCESSES_GOAL
        print(f"processes  K=1 {one:8.0f} msg/s   K=2 {two:8.0f} msg/s   "
              f"K=2/K=1 {ratio:.2f}x  (goal >= {PROCESSES_GOAL}x: "
              f"{'met' if ratio >= PROCESSES_GOAL else 'MISSED'})")
    if args.only in (None, "async"):
        serial = args.orders * args.lookup_ms / 1000
        took = asyncio.run(enrich_seconds(args.orders, args.lookup_ms))
        ratio = took / serial
        ok &= ratio < ASYNC_GOAL
        print(f"async      {args.orders} orders awaiting {args.lookup_ms} ms each: {took:.2f} s "
              f"vs {serial:.0f} s one at a time = {ratio:.3f}x  (goal < {ASYNC_GOAL}x: "
              f"{'met' if ratio < ASYNC_GOAL else 'MISSED'})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
