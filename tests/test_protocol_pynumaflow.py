"""Our servers driven by an independent client: pynumaflow 0.14.0's generated stubs.

pynumaflow's protos and ours both define ``map.v1.MapRequest`` etc., so they cannot live in
one process: the server runs in one subprocess (tests/protocol_server.py) and the pynumaflow
client in another (tests/pynumaflow_client.py), which prints what it saw as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from protocol_harness import ROOT, ServerProcess

pytest.importorskip("pynumaflow")


def _drive(server: ServerProcess, scenario: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "pynumaflow_client.py"), scenario,
         str(server.socket_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_map_with_pynumaflow_stubs(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "map") as server:
        seen = _drive(server, "map")
        assert seen["ready"] and seen["handshake"]
        assert seen["ids"] == seen["expected"] and seen["values_ok"]
        assert seen["keys"] == [["k"]]
        error = seen["error"]
        assert error["code"] == "INTERNAL" and error["status_code"] == 13
        assert error["details"] == "UDF_EXECUTION_ERROR(udf): ValueError('boom')"
        assert "ValueError: boom" in error["debug"]
        assert server.wait_exit()[0] == 1


def test_transformer_with_pynumaflow_stubs(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "sourcetransformer") as server:
        seen = _drive(server, "transformer")
        assert seen == {
            "handshake": True,
            "ids": ["T2Zm-0", "T2Zn-0"],
            "event_times": [7, 8],
            "drop_tags": ["U+005C__DROP__"],
        }


def test_source_with_pynumaflow_stubs(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "source", "--count", "10") as server:
        seen = _drive(server, "source")
        assert seen == {
            "handshakes": [True, True],
            "payloads": ["m0", "m1", "m2"],
            "offsets": ["0", "1", "2"],
            "event_time_set": True,
            "ack_success": True,
            "nack_success": True,
            "pending": 8,  # 7 unread + offset 5 handed back by the nack
            "partitions": [0],
        }


def test_sink_with_pynumaflow_stubs(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "sink") as server:
        seen = _drive(server, "sink")
        assert seen == {
            "handshake": True,
            "results": {"a": ["SUCCESS", ""], "b": ["FAILURE", "rejected b'bad'"]},
        }
