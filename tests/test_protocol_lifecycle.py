"""Server lifecycle: server-info file, stale sockets, signals, and the user-code error contract."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from protocol_harness import ROOT, Duplex, ServerProcess, wait_for

from nfbuilder._proto import map_pb2, map_pb2_grpc

MARKER = b"U+005C__END__"


def _open_map(server: ServerProcess) -> Duplex:
    stream = Duplex(map_pb2_grpc.MapStub(server.channel()).MapFn)
    stream.send(map_pb2.MapRequest(handshake=map_pb2.Handshake(sot=True)))
    assert stream.recv().handshake.sot
    return stream


def _req(ident: str, value: bytes) -> map_pb2.MapRequest:
    return map_pb2.MapRequest(id=ident, request=map_pb2.MapRequest.Request(value=value))


def test_server_info_appears_complete_and_only_once_the_socket_accepts(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, "map")
    try:
        raw = server.wait_ready()
        # The very first time the file is visible it is complete, and the socket already accepts.
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(str(server.socket_path))
        probe.close()
        assert raw.endswith(MARKER) and raw.count(MARKER) == 1
        info = json.loads(raw[: -len(MARKER)])
        assert info["protocol"] == "uds" and info["language"] == "python"
        assert info["version"] == "0.14.0" and info["minimum_numaflow_version"] == "1.8.0-z"
        assert info["metadata"] == {"MAP_MODE": "unary-map"}
        assert [p.name for p in server.socket_dir.iterdir() if p.name.startswith(".")] == []
    finally:
        server.close()


def test_stale_socket_and_info_file_are_replaced(tmp_path: Path) -> None:
    socket_dir = tmp_path / "s"
    socket_dir.mkdir()
    (socket_dir / "sink.sock").write_text("stale")  # left by a previous container run
    (socket_dir / "sinker-server-info").write_text("old")
    server = ServerProcess(tmp_path, "sink")
    with server:
        def fresh() -> bool:
            try:
                return server.info_path.read_bytes().endswith(MARKER)
            except FileNotFoundError:  # the server removed the stale file and has not bound yet
                return False

        wait_for(fresh, "the new server-info")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(str(server.socket_path))
        probe.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_in_flight_work_then_exits_0(tmp_path: Path, sig: int) -> None:
    with ServerProcess(tmp_path, "map") as server:
        stream = _open_map(server)
        stream.send(_req("slow", b"slow"))
        wait_for(lambda: (server.marks / "slow-started").exists(), "the slow handler to start")
        server.terminate(sig)
        response = stream.recv()
        assert response.id == "slow" and response.results[0].value == b"slow"
        code, err = server.wait_exit()
        assert code == 0, err


def _fail_once(server: ServerProcess, value: bytes) -> grpc.RpcError:
    stream = _open_map(server)
    stream.send(_req("ok", b"x"), _req("bad", value))
    assert stream.recv().id == "ok"
    with pytest.raises(grpc.RpcError) as err:
        stream.recv()
    return err.value


def _debug_info(error: grpc.RpcError) -> tuple[status_pb2.Status, str]:
    trailers = dict(error.trailing_metadata())  # type: ignore[attr-defined]
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    info = error_details_pb2.DebugInfo()
    assert status.details[0].Unpack(info)
    return status, info.detail


def test_user_code_error_contract(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "map") as server:
        error = _fail_once(server, b"fail")
        message = "UDF_EXECUTION_ERROR(udf): ValueError('boom')"
        assert error.code() == grpc.StatusCode.INTERNAL
        assert error.details() == message
        status, detail = _debug_info(error)
        assert (status.code, status.message) == (13, message)
        assert 'raise ValueError("boom")' in detail and detail.rstrip().endswith("ValueError: boom")
        code, err = server.wait_exit()
        assert code == 1
        assert message in err
        (report_path,) = (server.runtime_dir / "application-errors" / "udf").iterdir()
        assert report_path.name.endswith("-udf.json")
        report = json.loads(report_path.read_text())
        assert report["container"] == "udf" and report["code"] == "Internal error"
        assert report["message"] == message and report["details"] == detail


def test_user_code_error_text_and_unknown_container(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "map", env={"NUMAFLOW_UD_CONTAINER_TYPE": ""}) as server:
        error = _fail_once(server, b"usererr")
        assert error.details() == (
            "UDF_EXECUTION_ERROR(unknown-container): step 'double' (app.py:7, double()) "
            "raised KeyError('k')"
        )
        assert _debug_info(error)[1] == (
            "Traceback (most recent call last):\n  fake frame\nKeyError: 'k'\n"
        )
        assert server.wait_exit()[0] == 1
        assert (server.runtime_dir / "application-errors" / "unknown-container").is_dir()


def test_too_long_socket_path_is_refused(tmp_path: Path) -> None:
    long_dir = tmp_path / ("d" * 120)
    done = subprocess.run(
        [sys.executable, "-m", "tests.protocol_server", "--kind", "map"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
        env={"NFBUILDER_SOCKET_DIR": str(long_dir), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode != 0
    assert "longer than the 107 a Unix socket allows; set NFBUILDER_SOCKET_DIR to a shorter " \
        "directory" in done.stderr
