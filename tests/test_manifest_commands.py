"""Every vertex of every example app's compiled manifest starts from the exact command in the
manifest, writes a valid server-info file and answers the handshake (issue: vertex runtime)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from engine_harness import ROOT, free_port

from nfbuilder.emit.artifacts import render_artifacts
from nfbuilder.loader import load_app
from nfbuilder.local.clients import (
    MapClient,
    SinkClient,
    SourceClient,
    TransformClient,
    connect,
    wait_ready,
)
from nfbuilder.local.serverinfo import wait_server_info
from nfbuilder.plan import AppRef, PlanOptions, plan

APPS = ["reverse", "celsius", "celsius_kafka", "alphabet", "alphabet_partitioned", "word_count",
        "market_spread", "sequence_window", "async_enrich", "prime_factors", "log_levels"]

# spec key of the container -> (socket, server-info file, NUMAFLOW_UD_CONTAINER_TYPE, client).
# Written out from the contract's table on purpose, not taken from runtime.server: this test is
# the independent check that the paths the servers use are the ones numa looks for.
KINDS: dict[str, tuple[str, str, str, Any]] = {
    "udsource": ("source.sock", "sourcer-server-info", "udsource", SourceClient),
    "transformer": ("sourcetransform.sock", "sourcetransformer-server-info", "transformer",
                    TransformClient),
    "udf": ("map.sock", "mapper-server-info", "udf", MapClient),  # batchmap.sock: see below
    "udsink": ("sink.sock", "sinker-server-info", "udsink", SinkClient),
}


def app_args(name: str) -> list[str]:
    if name == "celsius_kafka":
        return ["--kafka_source_topic", "in", "--kafka_source_brokers", "127.0.0.1:9",
                "--kafka_sink_topic", "out", "--kafka_sink_brokers", "127.0.0.1:9"]
    if name == "log_levels":  # the file is opened at the first read
        return ["--file", "/nonexistent/app.log", "--out", f"127.0.0.1:{free_port()}"]
    n_in = 2 if name == "market_spread" else 1
    ins = ",".join(f"127.0.0.1:{free_port()}" for _ in range(n_in))
    return ["--in", ins, "--out", f"127.0.0.1:{free_port()}"]


def containers(manifest: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(vertex name, container kind, container spec) of every user container."""
    out = []
    for v in manifest["spec"]["vertices"]:
        for section in ("source", "udf", "sink"):
            body = v.get(section, {})
            for kind in ("udsource", "udsink"):
                if kind in body:
                    out.append((v["name"], kind, body[kind]["container"]))
            if "transformer" in body:
                out.append((v["name"], "transformer", body["transformer"]["container"]))
            if section == "udf" and body:
                out.append((v["name"], "udf", body["container"]))
    return out


async def start_and_handshake(vertex: str, kind: str, container: dict[str, Any],
                              sock_dir: Path, ordered: bool = False) -> None:
    """Start the container's command and shake hands as numa would; an ``ordered`` udf vertex
    must serve numa's batch mode (its order and batch saves need it)."""
    sock, info, ud_type, client_cls = KINDS[kind]
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"] if "value" in e}}
    env.update({
        "NFBUILDER_SOCKET_DIR": str(sock_dir), "NFBUILDER_RUNTIME_DIR": str(sock_dir / "rt"),
        "NUMAFLOW_UD_CONTAINER_TYPE": ud_type, "NUMAFLOW_REPLICA": "0",
        "NUMAFLOW_VERTEX_NAME": vertex,
        "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "apps"), ROOT]),
    })
    command = [*container["command"], *container["args"]]
    assert command[:4] == ["python", "-m", "nfbuilder", "serve"]
    assert command[command.index("--vertex") + 1] == vertex
    command[0] = sys.executable
    proc = await asyncio.create_subprocess_exec(*command, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        server_info = await wait_server_info(sock_dir / info, poll_s=0.05, deadline_s=60)
        assert server_info.language == "python"
        if kind == "udf":  # numa dials the socket of the mode the server info names
            assert server_info.map_mode == ("batch-map" if ordered else "unary-map")
            sock = {"unary-map": "map.sock", "batch-map": "batchmap.sock"}[server_info.map_mode]
        channel = await connect(sock_dir / sock, retry_s=0.05, deadline_s=30)
        try:
            from nfbuilder._proto import (
                map_pb2_grpc,
                sink_pb2_grpc,
                source_pb2_grpc,
                sourcetransform_pb2_grpc,
            )

            stub = {"udf": map_pb2_grpc.MapStub, "udsink": sink_pb2_grpc.SinkStub,
                    "udsource": source_pb2_grpc.SourceStub,
                    "transformer": sourcetransform_pb2_grpc.SourceTransformStub}[kind]
            await wait_ready(stub(channel), retry_s=0.05, deadline_s=30)
            client = await client_cls.open(channel)  # handshake(s) checked by the client
            await client.close()
        finally:
            await channel.close()
    except BaseException as exc:
        proc.kill()
        err = await proc.stderr.read() if proc.stderr else b""
        await proc.wait()
        raise AssertionError(f"{vertex} ({kind}) failed:\n{err.decode(errors='replace')}") from exc
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0


@pytest.mark.parametrize("name", APPS)
def test_every_vertex_starts_from_its_manifest_command(name: str, tmp_path: Path) -> None:
    args = app_args(name)
    loaded = load_app(os.path.join(ROOT, "apps", f"{name}.py"), args)
    files = render_artifacts(plan(loaded.app, PlanOptions(), AppRef(name, tuple(args))))
    docs = [d for d in yaml.safe_load_all(files["pipeline.yaml"]) if d["kind"] == "Pipeline"]
    found = [c for d in docs for c in containers(d)]
    assert found, "the manifest has no user container"
    ordered = {v["name"] for d in docs for v in d["spec"]["vertices"]
               if v.get("ordered", {}).get("enabled")}

    async def all_vertices() -> None:
        await asyncio.gather(*(
            start_and_handshake(v, kind, spec, tmp_path / f"v{i}", v in ordered)
            for i, (v, kind, spec) in enumerate(found)))

    asyncio.run(all_vertices())
