"""Map-vertex CPU benchmark: server CPU per message of four map servers, driven like numa.

One run pushes N messages (default 20,000 of 100 bytes, 500 in flight) through each of:
  ours               ``python -m nfbuilder serve --app bench.identity_app --vertex <map>``
  pynumaflow-async   pynumaflow 0.14.0 ``MapAsyncServer`` with an identity handler
  pynumaflow-sync    pynumaflow 0.14.0 ``MapServer`` (thread pool) with an identity handler
  echo               a bare grpc.aio ``map.v1.Map`` servicer on our stubs (the floor)
Each server runs in its own process with its socket in a temp dir. The driver is nfbuilder's
numa-like MapClient (server-info checks, IsReady, handshake, one stream, bounded in-flight).
After a warm-up, it samples the server process's CPU (user+system, children included) around
the measured window. See bench/README.md for how to read the output.

    python bench/map_vertex.py                    # make bench-map
    python bench/map_vertex.py -n 5000 --only echo,pynumaflow-async
    python bench/map_vertex.py --ours-cmd "python my_server.py --dir {sock_dir}"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

SERVERS = ("ours", "pynumaflow-async", "pynumaflow-sync", "echo")
APP_ARGS = ["--in", "127.0.0.1:7000", "--out", "127.0.0.1:7001"]
GOALS = {"pynumaflow-async": 0.75, "echo": 1.15}  # ours / that server, at most


@attrs.frozen
class Measurement:
    server: str
    messages: int
    wall_s: float
    server_cpu_s: float
    driver_cpu_s: float

    @property
    def cpu_us(self) -> float:
        return self.server_cpu_s / self.messages * 1e6

    @property
    def rate(self) -> float:
        return self.messages / self.wall_s


# ---------------------------------------------------------------- servers (child processes)


def serve_pynumaflow(sock_dir: Path, sync: bool) -> None:
    from pynumaflow import mapper

    def identity(keys: list[str], datum: mapper.Datum) -> mapper.Messages:
        return mapper.Messages(mapper.Message(datum.value, keys=keys))

    async def identity_async(keys: list[str], datum: mapper.Datum) -> mapper.Messages:
        return mapper.Messages(mapper.Message(datum.value, keys=keys))

    files = {"sock_path": str(sock_dir / "map.sock"),
             "server_info_file": str(sock_dir / "mapper-server-info")}
    server: Any = (mapper.MapServer(identity, **files) if sync
                   else mapper.MapAsyncServer(identity_async, **files))
    server.start()


def serve_echo(sock_dir: Path) -> None:
    """The floor: handshake + echo each id with its value, nothing else."""
    import json

    import grpc.aio

    from nfbuilder._proto import map_pb2, map_pb2_grpc

    class Echo(map_pb2_grpc.MapServicer):
        async def MapFn(self, requests: Any, context: Any) -> AsyncIterator[Any]:
            Response, Result = map_pb2.MapResponse, map_pb2.MapResponse.Result
            async for request in requests:
                if request.HasField("handshake"):
                    yield Response(handshake=map_pb2.Handshake(sot=True))
                else:
                    yield Response(id=request.id, results=[Result(value=request.request.value)])

        async def IsReady(self, request: Any, context: Any) -> Any:
            return map_pb2.ReadyResponse(ready=True)

    async def main() -> None:
        server = grpc.aio.server()
        map_pb2_grpc.add_MapServicer_to_server(Echo(), server)
        server.add_insecure_port(f"unix://{sock_dir / 'map.sock'}")
        await server.start()
        info = {"protocol": "uds", "language": "python", "minimum_numaflow_version": "1.4.0-z",
                "version": "0.14.0", "metadata": {"MAP_MODE": "unary-map"}}
        (sock_dir / "mapper-server-info").write_bytes(json.dumps(info).encode()
                                                      + b"U+005C__END__")
        await server.wait_for_termination()

    try:
        import uvloop
        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def map_vertex_name() -> str:
    """The map vertex of bench/identity_app.py, as the planner names it."""
    from nfbuilder.loader import load_app
    from nfbuilder.plan import MapVertex, plan

    graph = plan(load_app("bench.identity_app", APP_ARGS).app)
    return next(v.name for v in graph.vertices() if isinstance(v, MapVertex))


def server_command(name: str, sock_dir: Path, ours_cmd: str | None) -> list[str]:
    if name == "ours":
        if ours_cmd:
            return shlex.split(ours_cmd.format(sock_dir=sock_dir))
        return [sys.executable, "-m", "nfbuilder", "serve", "--app", "bench.identity_app",
                "--vertex", map_vertex_name(), "--", *APP_ARGS]
    return [sys.executable, str(Path(__file__).resolve()), "--serve", name,
            "--sock-dir", str(sock_dir)]


# ---------------------------------------------------------------- driver


async def drive(client: Any, count: int, in_flight: int, payloads: list[bytes],
                prefix: str) -> None:
    """Push ``count`` messages with at most ``in_flight`` outstanding and check the echoes."""
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            value = payloads[i % len(payloads)]
            results = await client.map(f"{prefix}-{i}-0", (), value, time.time_ns())
            if len(results) != 1 or results[0].value != value:
                raise AssertionError(f"message {i}: expected the value echoed, got {results!r}")

    await asyncio.gather(*(worker() for _ in range(min(in_flight, count))))


def cpu_seconds(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


@contextlib.contextmanager
def running(
    name: str, sock_dir: Path, args: argparse.Namespace
) -> Iterator[subprocess.Popen[bytes]]:
    """Start one server process with its socket in ``sock_dir``; stop it afterwards."""
    env = {**os.environ, "NFBUILDER_SOCKET_DIR": str(sock_dir), "NUMAFLOW_UD_CONTAINER_TYPE": "udf",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(sock_dir / "server.log", "wb") as log:
        proc = subprocess.Popen(server_command(name, sock_dir, args.ours_cmd), cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def measure(name: str, args: argparse.Namespace) -> Measurement:
    from nfbuilder._proto import map_pb2_grpc
    from nfbuilder.local.clients import MapClient, connect, wait_ready
    from nfbuilder.local.serverinfo import ServerInfoError, wait_server_info

    with tempfile.TemporaryDirectory(prefix=f"nfb-bench-{name}-") as tmp:
        sock_dir = Path(tmp)
        with running(name, sock_dir, args) as proc:
            try:
                await wait_server_info(sock_dir / "mapper-server-info", poll_s=0.05,
                                       deadline_s=args.start_timeout)
            except ServerInfoError as exc:
                tail = (sock_dir / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} did not start (exit code {proc.poll()}): {exc}\n"
                                   f"{tail}") from None
            channel = await connect(sock_dir / "map.sock", retry_s=0.05, deadline_s=10)
            await wait_ready(map_pb2_grpc.MapStub(channel), retry_s=0.05, deadline_s=10)
            client = await MapClient.open(channel, max_in_flight=args.in_flight)
            payloads = [os.urandom(args.size) for _ in range(997)]
            await drive(client, args.warmup, args.in_flight, payloads, "warm")
            ps = psutil.Process(proc.pid)
            cpu0, drv0, t0 = cpu_seconds(ps), time.process_time(), time.perf_counter()
            await drive(client, args.n, args.in_flight, payloads, "bench")
            t1, drv1, cpu1 = time.perf_counter(), time.process_time(), cpu_seconds(ps)
            await client.close()
            await channel.close()
    return Measurement(name, args.n, t1 - t0, cpu1 - cpu0, drv1 - drv0)


def report(results: dict[str, Measurement], failures: dict[str, str], rounds: int) -> None:
    if rounds > 1:
        print(f"\nmedian of {rounds} rounds (by server CPU per message)")
    print(f"\n{'server':<18} {'msgs/s':>10} {'server CPU µs/msg':>18} {'driver CPU µs/msg':>18}")
    for name in SERVERS:
        if name in results:
            m = results[name]
            driver_us = m.driver_cpu_s / m.messages * 1e6
            print(f"{name:<18} {m.rate:>10,.0f} {m.cpu_us:>18.1f} {driver_us:>18.1f}")
        elif name in failures:
            print(f"{name:<18} {'failed: ' + failures[name].splitlines()[0]}")
    ours = results.get("ours")
    print()
    for other, goal in GOALS.items():
        if ours is None or other not in results:
            print(f"ours / {other:<17} n/a (goal <= {goal:.2f}x)")
            continue
        ratio = ours.cpu_us / results[other].cpu_us
        verdict = "OK" if ratio <= goal else "MISSED"
        print(f"ours / {other:<17} {ratio:5.2f}x  (goal <= {goal:.2f}x)  {verdict}")


async def run_all(args: argparse.Namespace) -> int:
    names = [n for n in SERVERS if n in args.only.split(",")] if args.only else list(SERVERS)
    rounds: dict[str, list[Measurement]] = {name: [] for name in names}
    failures: dict[str, str] = {}
    for round_no in range(args.rounds):
        # Rotate the order each round so slow drift (thermal, other load) spreads evenly.
        order = names[round_no % len(names):] + names[:round_no % len(names)]
        for name in order:
            if name in failures:
                continue
            print(f"round {round_no + 1}/{args.rounds} {name}: {args.warmup} warm-up + {args.n} "
                  "measured messages ...", flush=True)
            try:
                rounds[name].append(await measure(name, args))
            except Exception as exc:  # noqa: BLE001 - one server failing must not hide the others
                failures[name] = f"{type(exc).__name__}: {exc}"
                print(f"  {failures[name]}", file=sys.stderr)
    results = {name: sorted(ms, key=lambda m: m.cpu_us)[len(ms) // 2]
               for name, ms in rounds.items() if ms}
    report(results, failures, args.rounds)
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="measured messages per server")
    parser.add_argument("--warmup", type=int, default=2_000, help="warm-up messages per server")
    parser.add_argument("--size", type=int, default=100, help="value size in bytes")
    parser.add_argument("--in-flight", type=int, default=500, help="outstanding requests")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measurements per server; the median is reported (default 3)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SERVERS)}")
    parser.add_argument("--ours-cmd", help="command that serves our map vertex; {sock_dir} is "
                        "replaced by its socket dir (also in NFBUILDER_SOCKET_DIR)")
    parser.add_argument("--start-timeout", type=float, default=60.0)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the driver's event loop")
    parser.add_argument("--serve", choices=SERVERS[1:], help=argparse.SUPPRESS)
    parser.add_argument("--sock-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:  # child process: never imports nfbuilder._proto together with pynumaflow
        if args.serve == "echo":
            serve_echo(args.sock_dir)
        else:
            serve_pynumaflow(args.sock_dir, sync=args.serve == "pynumaflow-sync")
        return 0
    if args.loop == "uvloop":
        import uvloop
        return uvloop.run(run_all(args))
    return asyncio.run(run_all(args))


if __name__ == "__main__":
    sys.exit(main())
