"""Map-vertex CPU benchmark: server CPU per message of five map servers, driven like numa.

One run pushes N messages (default 20,000 of 100 bytes, in bursts of 500) through each of:
  ours-grpc          ``python -m nfbuilder serve --app bench.identity_app --vertex <map>``
                     on the grpcio transport (the default)
  ours-h2            the same with NFBUILDER_TRANSPORT=h2 (the lean h2 transport)
  pynumaflow-async   pynumaflow 0.14.0 ``MapAsyncServer`` with an identity handler
  pynumaflow-sync    pynumaflow 0.14.0 ``MapServer`` (thread pool) with an identity handler
  echo               a bare grpc.aio ``map.v1.Map`` servicer on our stubs (the grpcio floor)
Each server runs in its own process with its socket in a temp dir. The driver is cheap, so it
does not starve the server of CPU: one HTTP/2 connection (h2, with numa's window and frame
sizes), the requests serialized and framed before the measurement, sent in bursts of 500 (a
numa read batch), each burst's 500 replies awaited before the next. After a warm-up, it samples
the server process's CPU (user+system, children included) around the measured window; every
reply is checked afterwards. See bench/README.md for how to read the output.

    python bench/map_vertex.py                    # make bench-map
    python bench/map_vertex.py -n 5000 --only echo,ours-h2
    python bench/map_vertex.py --ours-cmd "python my_server.py --dir {sock_dir}"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import socket
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

SERVERS = ("ours-grpc", "ours-h2", "pynumaflow-async", "pynumaflow-sync", "echo")
TRANSPORTS = {"ours-grpc": "grpc", "ours-h2": "h2"}
APP_ARGS = ["--in", "127.0.0.1:7000", "--out", "127.0.0.1:7001"]
#: (ours, other, goal): ours / other server CPU per message, at most
GOALS = (("ours-grpc", "pynumaflow-async", 0.75), ("ours-grpc", "echo", 1.15),
         ("ours-h2", "pynumaflow-async", 0.15))
# numa's client (tonic 0.14 on hyper 1.x, numaflow v1.8.3 rust/numaflow-core/src/shared/grpc.rs):
# hyper's HTTP/2 defaults, no keepalive pings.
NUMA_STREAM_WINDOW = 2 * 1024 * 1024
NUMA_CONNECTION_WINDOW = 5 * 1024 * 1024
NUMA_MAX_FRAME = 16 * 1024


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
    if name in TRANSPORTS:
        if ours_cmd:
            return shlex.split(ours_cmd.format(sock_dir=sock_dir))
        return [sys.executable, "-m", "nfbuilder", "serve", "--app", "bench.identity_app",
                "--vertex", map_vertex_name(), "--", *APP_ARGS]
    return [sys.executable, str(Path(__file__).resolve()), "--serve", name,
            "--sock-dir", str(sock_dir)]


# ---------------------------------------------------------------- driver


class BurstDriver:
    """A cheap numa-like client: one HTTP/2 connection on a blocking Unix socket (h2, numa's
    window and frame sizes), prebuilt request frames, one burst at a time.

        driver = BurstDriver(sock_dir / "map.sock")
        driver.wait_ready()
        stream = driver.open_map()
        replies = driver.burst(stream, frames, 500)   # the 500 reply messages, unparsed
    """

    def __init__(self, path: Path) -> None:
        import h2.config
        import h2.connection
        import h2.settings

        from nfbuilder.runtime.grpcwire import MessageReader

        self._reader_type = MessageReader
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        codes = h2.settings.SettingCodes
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            codes.ENABLE_PUSH: 0, codes.INITIAL_WINDOW_SIZE: NUMA_STREAM_WINDOW,
            codes.MAX_FRAME_SIZE: NUMA_MAX_FRAME})
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(NUMA_CONNECTION_WINDOW - 65_535)
        self._write()
        self._readers: dict[int, Any] = {}
        self._replies: dict[int, list[bytes]] = {}
        self._ended: dict[int, list[tuple[bytes, bytes]]] = {}

    def _write(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def _open(self, path: str) -> int:
        from nfbuilder.runtime.grpcwire import request_headers

        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, request_headers(path, authority="[::1]:50051"))
        self._readers[stream_id] = self._reader_type(64 << 20)
        self._replies[stream_id] = []
        return stream_id

    def _receive(self) -> None:
        import h2.events

        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the server closed the connection")
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                self._replies[event.stream_id] += self._readers[event.stream_id].feed(event.data)
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                if any(name == b"grpc-status" for name, _ in event.headers):
                    self._ended[event.stream_id] = list(event.headers)  # type: ignore[arg-type]
            elif isinstance(event, h2.events.StreamReset):
                raise ConnectionError(f"the server reset stream {event.stream_id}")
        self._write()

    def burst(self, stream_id: int, data: bytes, replies: int) -> list[bytes]:
        """Send ``data`` (framed requests) and return the next ``replies`` reply messages."""
        pending = memoryview(data)
        got = self._replies[stream_id]
        while pending or len(got) < replies:
            while pending:
                size = min(self.h2.local_flow_control_window(stream_id),
                           self.h2.max_outbound_frame_size, len(pending))
                if size <= 0:
                    break
                self.h2.send_data(stream_id, pending[:size])
                pending = pending[size:]
            self._write()
            if stream_id in self._ended:
                raise RuntimeError(f"the call ended early: {self._ended[stream_id]}")
            if pending or len(got) < replies:
                self._receive()
        out, self._replies[stream_id] = got[:replies], got[replies:]
        return out

    def wait_ready(self, deadline_s: float = 10.0) -> None:
        """Call IsReady once (numa waits for it before opening the stream)."""
        from google.protobuf import empty_pb2

        from nfbuilder.runtime.grpcwire import frame_message

        stream_id = self._open("/map.v1.Map/IsReady")
        self.h2.send_data(stream_id, frame_message(empty_pb2.Empty().SerializeToString()),
                          end_stream=True)
        self._write()
        end = time.monotonic() + deadline_s
        while stream_id not in self._ended:
            if time.monotonic() > end:
                raise TimeoutError("IsReady did not answer")
            self._receive()

    def open_map(self) -> int:
        """Open MapFn and complete the handshake; return the stream id."""
        from nfbuilder._proto import map_pb2
        from nfbuilder.runtime.grpcwire import frame_message

        stream_id = self._open("/map.v1.Map/MapFn")
        handshake = map_pb2.MapRequest(handshake=map_pb2.Handshake(sot=True))
        (reply,) = self.burst(stream_id, frame_message(handshake.SerializeToString()), 1)
        if not map_pb2.MapResponse.FromString(reply).handshake.sot:
            raise RuntimeError(f"bad handshake reply {reply!r}")
        return stream_id

    def close(self) -> None:
        self.h2.close_connection()
        self._write()
        self.sock.close()


def prebuilt_bursts(count: int, burst: int, payloads: list[bytes], prefix: str
                    ) -> list[tuple[bytes, list[str]]]:
    """``count`` framed MapRequests in bursts of ``burst``: (wire bytes, ids) per burst."""
    from google.protobuf import timestamp_pb2

    from nfbuilder._proto import map_pb2
    from nfbuilder.runtime.grpcwire import frame_message

    Request = map_pb2.MapRequest.Request
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    out = []
    for start in range(0, count, burst):
        ids = [f"{prefix}-{i}-0" for i in range(start, min(start + burst, count))]
        wire = b"".join(frame_message(map_pb2.MapRequest(
            id=ident, request=Request(value=payloads[hash(ident) % len(payloads)], event_time=now,
                                      watermark=now)).SerializeToString()) for ident in ids)
        out.append((wire, ids))
    return out


def check_replies(replies: list[bytes], ids: list[str], wire: bytes) -> None:
    """Every id answered once, with its value echoed."""
    from nfbuilder._proto import map_pb2
    from nfbuilder.runtime.grpcwire import MessageReader

    sent = {r.id: r.request.value for r in map(map_pb2.MapRequest.FromString,
                                                 MessageReader(64 << 20).feed(wire))}
    got = [map_pb2.MapResponse.FromString(r) for r in replies]
    if sorted(r.id for r in got) != sorted(ids):
        raise AssertionError(f"expected one reply per id of {ids[0]}..{ids[-1]}")
    for reply in got:
        if len(reply.results) != 1 or reply.results[0].value != sent[reply.id]:
            raise AssertionError(f"{reply.id}: expected the value echoed, got {reply!r}")


def drive(driver: BurstDriver, stream_id: int, bursts: list[tuple[bytes, list[str]]]
          ) -> list[list[bytes]]:
    return [driver.burst(stream_id, wire, len(ids)) for wire, ids in bursts]


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
    if name in TRANSPORTS:
        env["NFBUILDER_TRANSPORT"] = TRANSPORTS[name]
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


def measure(name: str, args: argparse.Namespace) -> Measurement:
    from nfbuilder.local.serverinfo import ServerInfoError, wait_server_info

    payloads = [os.urandom(args.size) for _ in range(997)]
    warmup = prebuilt_bursts(args.warmup, args.burst, payloads, "warm")
    measured = prebuilt_bursts(args.n, args.burst, payloads, "bench")
    with tempfile.TemporaryDirectory(prefix=f"nfb-bench-{name}-") as tmp:
        sock_dir = Path(tmp)
        with running(name, sock_dir, args) as proc:
            try:
                asyncio.run(wait_server_info(sock_dir / "mapper-server-info", poll_s=0.05,
                                             deadline_s=args.start_timeout))
            except ServerInfoError as exc:
                tail = (sock_dir / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} did not start (exit code {proc.poll()}): {exc}\n"
                                   f"{tail}") from None
            driver = BurstDriver(sock_dir / "map.sock")
            driver.wait_ready()
            stream_id = driver.open_map()
            drive(driver, stream_id, warmup)
            ps = psutil.Process(proc.pid)
            cpu0, drv0, t0 = cpu_seconds(ps), time.process_time(), time.perf_counter()
            replies = drive(driver, stream_id, measured)
            t1, drv1, cpu1 = time.perf_counter(), time.process_time(), cpu_seconds(ps)
            driver.close()
    for (wire, ids), got in zip(measured, replies, strict=True):
        check_replies(got, ids, wire)
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
    print()
    for ours, other, goal in GOALS:
        label = f"{ours} / {other}"
        if ours not in results or other not in results:
            print(f"{label:<28} n/a (goal <= {goal:.2f}x)")
            continue
        ratio = results[ours].cpu_us / results[other].cpu_us
        verdict = "OK" if ratio <= goal else "MISSED"
        print(f"{label:<28} {ratio:5.2f}x  (goal <= {goal:.2f}x)  {verdict}")


def run_all(args: argparse.Namespace) -> int:
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
                rounds[name].append(measure(name, args))
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
    parser.add_argument("--burst", type=int, default=500,
                        help="requests sent at once, all answered before the next burst "
                        "(numa's read batch; default 500)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measurements per server; the median is reported (default 3)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SERVERS)}")
    parser.add_argument("--ours-cmd", help="command that serves our map vertex (both ours-* "
                        "rows; NFBUILDER_TRANSPORT says which); {sock_dir} is replaced by its "
                        "socket dir (also in NFBUILDER_SOCKET_DIR)")
    parser.add_argument("--start-timeout", type=float, default=60.0)
    parser.add_argument("--serve", choices=SERVERS[2:], help=argparse.SUPPRESS)
    parser.add_argument("--sock-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:  # child process: never imports nfbuilder._proto together with pynumaflow
        if args.serve == "echo":
            serve_echo(args.sock_dir)
        else:
            serve_pynumaflow(args.sock_dir, sync=args.serve == "pynumaflow-sync")
        return 0
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
