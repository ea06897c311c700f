"""Unit tests of the protocol layer's pure parts: settings, error texts, server-info, ids."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from nfbuilder.runtime.errors import UserCodeError, describe, status_details, udf_error_message
from nfbuilder.runtime.messages import DROP, Result
from nfbuilder.runtime.server import (
    END_MARKER,
    ServerError,
    endpoint_for,
    serve,
    server_info_text,
    write_error_report,
)
from nfbuilder.runtime.settings import Settings, SettingsError
from nfbuilder.runtime.stream import check_one_per_id

ROOT = Path(__file__).resolve().parent.parent


def test_settings_defaults_without_environment() -> None:
    s = Settings.from_env({})
    assert (s.socket_dir, s.runtime_dir) == ("/var/run/numaflow", "/var/numaflow/runtime")
    assert (s.container_type, s.replica, s.read_batch_size, s.read_timeout_ms) == (
        None, 0, 500, 1000
    )
    assert (s.shutdown_grace_s, s.state_store, s.map_workers) == (5.0, None, 1)


def test_settings_read_every_variable() -> None:
    s = Settings.from_env({
        "NFBUILDER_SOCKET_DIR": "/s", "NFBUILDER_RUNTIME_DIR": "/r",
        "NUMAFLOW_UD_CONTAINER_TYPE": "udsink", "NUMAFLOW_REPLICA": "3",
        "NUMAFLOW_VERTEX_NAME": "v", "NUMAFLOW_PIPELINE_NAME": "p",
        "NUMAFLOW_READ_BATCH_SIZE": "7", "NUMAFLOW_READ_TIMEOUT_MS": "20",
        "NUMAFLOW_GRPC_SHUTDOWN_GRACE_PERIOD_SECONDS": "1.5",
        "NFBUILDER_STATE_STORE": "sqlite:///x.db", "NFBUILDER_MAP_WORKERS": "4",
    })
    assert s == Settings("/s", "/r", "udsink", 3, "v", "p", 7, 20, 1.5, "sqlite:///x.db", 4)


def test_settings_reject_bad_values_with_the_variable_name() -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"NUMAFLOW_REPLICA": "two"})
    assert str(err.value) == (
        "environment variable NUMAFLOW_REPLICA must be an integer, got 'two'; "
        "unset it to use the default (0)"
    )
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"NFBUILDER_MAP_WORKERS": "0"})
    assert str(err.value) == (
        "environment variable NFBUILDER_MAP_WORKERS must be >= 1, got 0; "
        "unset it to use the default (1)"
    )
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"NUMAFLOW_GRPC_SHUTDOWN_GRACE_PERIOD_SECONDS": "soon"})
    assert str(err.value) == (
        "environment variable NUMAFLOW_GRPC_SHUTDOWN_GRACE_PERIOD_SECONDS must be a "
        "non-negative number of seconds, got 'soon'; unset it to use the default (5.0)"
    )


def test_error_message_follows_the_contract() -> None:
    assert (
        udf_error_message("udf", "ValueError('boom')")
        == "UDF_EXECUTION_ERROR(udf): ValueError('boom')"
    )
    assert udf_error_message(None, "x") == "UDF_EXECUTION_ERROR(unknown-container): x"
    assert (
        udf_error_message("fb-udsink", "x", prefix="UDSinkError, ")
        == "UDF_EXECUTION_ERROR(fb-udsink): UDSinkError, x"
    )


def test_describe_prefers_user_code_error_text() -> None:
    assert describe(UserCodeError("step 's' failed", "TB")) == ("step 's' failed", "TB")
    try:
        raise KeyError("k")
    except KeyError as exc:
        message, tb = describe(exc)
    assert message == "KeyError('k')"
    assert tb.startswith("Traceback") and "KeyError: 'k'" in tb


def test_status_details_decode_to_debug_info() -> None:
    status = status_pb2.Status.FromString(status_details("msg", "the traceback"))
    assert (status.code, status.message) == (13, "msg")
    (detail,) = status.details
    info = error_details_pb2.DebugInfo()
    assert isinstance(detail, any_pb2.Any) and detail.Unpack(info)
    assert info.detail == "the traceback"


def test_endpoints_follow_the_contract_table() -> None:
    s = Settings(socket_dir="/d")
    assert endpoint_for("map", s).socket_path == "/d/map.sock"
    assert endpoint_for("map", s).info_path == "/d/mapper-server-info"
    assert endpoint_for("sourcetransformer", s).socket_path == "/d/sourcetransform.sock"
    assert endpoint_for("sourcetransformer", s).info_path == "/d/sourcetransformer-server-info"
    assert endpoint_for("source", s).info_path == "/d/sourcer-server-info"
    assert endpoint_for("sink", s).info_path == "/d/sinker-server-info"
    fb = endpoint_for("sink", Settings(socket_dir="/d", container_type="fb-udsink"))
    assert (fb.socket_path, fb.info_path) == ("/d/fb-sink.sock", "/d/fb-sinker-server-info")
    ons = endpoint_for("sink", Settings(socket_dir="/d", container_type="ons-udsink"))
    assert (ons.socket_path, ons.info_path) == ("/d/ons-sink.sock", "/d/ons-sinker-server-info")


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ServerError) as err:
        serve("reduce", lambda d: [], Settings())  # type: ignore[arg-type]
    assert str(err.value) == (
        "unknown server kind 'reduce'; expected one of map, batchmap, sourcetransformer, source, "
        "sink"
    )


def test_server_info_text_is_json_then_marker() -> None:
    text = server_info_text(endpoint_for("map", Settings(socket_dir="/d")))
    assert END_MARKER == "U+005C" + "__END__" and len(END_MARKER.encode()) == 13
    assert text.endswith(END_MARKER)
    info = json.loads(text[: -len(END_MARKER)])
    assert info == {
        "protocol": "uds", "language": "python", "minimum_numaflow_version": "1.8.0-z",
        "version": "0.14.0", "metadata": {"MAP_MODE": "unary-map"},
    }
    sink = json.loads(server_info_text(endpoint_for("sink", Settings()))[: -len(END_MARKER)])
    assert sink["metadata"] == {}


def test_error_report_file(tmp_path: Path) -> None:
    s = Settings(runtime_dir=str(tmp_path), container_type="udf")
    path = write_error_report(s, "UDF_EXECUTION_ERROR(udf): x", "TB")
    assert path is not None and path.parent == tmp_path / "application-errors" / "udf"
    assert path.name.endswith("-udf.json") and not (path.parent / "current-udf.json").exists()
    report = json.loads(path.read_text())
    assert set(report) == {"container", "timestamp", "code", "message", "details"}
    assert (report["container"], report["code"], report["details"]) == (
        "udf", "Internal error", "TB"
    )
    assert isinstance(report["timestamp"], int)


def test_error_report_failure_is_not_fatal(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert write_error_report(Settings(runtime_dir=str(blocker)), "m", "d") is None


def test_check_one_per_id_names_the_offenders() -> None:
    check_one_per_id(["a", "b"], ["b", "a"], "sink handler")
    with pytest.raises(ValueError) as err:
        check_one_per_id(["a", "b", "c"], ["a", "a", "z"], "sink handler")
    assert str(err.value) == (
        "sink handler must return exactly one result per input id; missing ids ['b', 'c'], "
        "unknown ids ['z'], duplicate ids ['a'] (batch of 3)"
    )


def test_drop_result() -> None:
    assert DROP == "U+005C" + "__DROP__"
    assert Result.drop().tags == (DROP,) and Result.drop().value == b""


def test_generated_code_is_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/gen_proto.py", "--check"], cwd=ROOT, capture_output=True,
        text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr


def test_generated_descriptors_do_not_collide_with_pynumaflow() -> None:
    from nfbuilder._proto import map_pb2, metadata_pb2

    assert map_pb2.DESCRIPTOR.name == "nfbuilder/proto/map.proto"
    assert map_pb2.DESCRIPTOR.package == "map.v1"
    assert metadata_pb2.DESCRIPTOR.package == "metadata"
