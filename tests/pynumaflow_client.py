"""Test-only client: drive an nfbuilder server with pynumaflow 0.14.0's generated stubs.

Runs in its own process (pynumaflow's and nfbuilder's protos cannot share a protobuf pool) and
prints one JSON object with what it observed::

    python tests/pynumaflow_client.py map /path/to/map.sock
"""

from __future__ import annotations

import json
import queue
import sys
from collections.abc import Iterator
from typing import Any

import grpc
from google.protobuf import empty_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from pynumaflow.proto.mapper import map_pb2, map_pb2_grpc
from pynumaflow.proto.sinker import sink_pb2, sink_pb2_grpc
from pynumaflow.proto.sourcer import source_pb2, source_pb2_grpc
from pynumaflow.proto.sourcetransformer import transform_pb2, transform_pb2_grpc

_END = object()


class Duplex:
    def __init__(self, method: Any) -> None:
        self.q: queue.Queue[Any] = queue.Queue()
        self.responses: Iterator[Any] = iter(method(iter(self.q.get, _END), timeout=10))

    def send(self, *messages: Any) -> None:
        for m in messages:
            self.q.put(m)

    def recv(self) -> Any:
        return next(self.responses)


def scenario_map(channel: grpc.Channel) -> dict[str, Any]:
    stub = map_pb2_grpc.MapStub(channel)
    ready = stub.IsReady(empty_pb2.Empty()).ready
    d = Duplex(stub.MapFn)
    d.send(map_pb2.MapRequest(handshake=map_pb2.Handshake(sot=True)))
    hs = d.recv()
    ids = [f"v-{i}-0" for i in range(100)]
    d.send(*(map_pb2.MapRequest(id=i, request=map_pb2.MapRequest.Request(
        value=i.encode(), keys=["k"], event_time=timestamp_pb2.Timestamp(seconds=1))) for i in ids))
    replies = [d.recv() for _ in ids]
    d.send(map_pb2.MapRequest(id="fail", request=map_pb2.MapRequest.Request(value=b"fail")))
    try:
        d.recv()
        error: dict[str, Any] = {}
    except grpc.RpcError as exc:
        trailers = dict(exc.trailing_metadata())  # type: ignore[attr-defined]
        status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
        info = error_details_pb2.DebugInfo()
        status.details[0].Unpack(info)
        error = {"code": exc.code().name, "details": exc.details(),  # type: ignore[attr-defined]
                 "status_code": status.code, "debug": info.detail}
    return {
        "ready": ready,
        "handshake": hs.handshake.sot,
        "ids": sorted(r.id for r in replies),
        "expected": sorted(ids),
        "values_ok": all(r.results[0].value == r.id.encode() for r in replies),
        "keys": sorted({tuple(r.results[0].keys) for r in replies}),
        "error": error,
    }


def scenario_transformer(channel: grpc.Channel) -> dict[str, Any]:
    stub = transform_pb2_grpc.SourceTransformStub(channel)
    d = Duplex(stub.SourceTransformFn)
    d.send(transform_pb2.SourceTransformRequest(handshake=transform_pb2.Handshake(sot=True)))
    hs = d.recv()
    req = transform_pb2.SourceTransformRequest.Request
    d.send(
        transform_pb2.SourceTransformRequest(request=req(
            id="T2Zm-0", value=b"x", event_time=timestamp_pb2.Timestamp(seconds=7))),
        transform_pb2.SourceTransformRequest(request=req(
            id="T2Zn-0", value=b"none", event_time=timestamp_pb2.Timestamp(seconds=8))),
    )
    replies = {r.id: r for r in (d.recv(), d.recv())}
    return {
        "handshake": hs.handshake.sot,
        "ids": sorted(replies),
        "event_times": [replies["T2Zm-0"].results[0].event_time.seconds,
                        replies["T2Zn-0"].results[0].event_time.seconds],
        "drop_tags": list(replies["T2Zn-0"].results[0].tags),
    }


def scenario_source(channel: grpc.Channel) -> dict[str, Any]:
    stub = source_pb2_grpc.SourceStub(channel)
    r = Duplex(stub.ReadFn)
    r.send(source_pb2.ReadRequest(handshake=source_pb2.Handshake(sot=True)))
    read_hs = r.recv()
    a = Duplex(stub.AckFn)
    a.send(source_pb2.AckRequest(handshake=source_pb2.Handshake(sot=True)))
    ack_hs = a.recv()
    r.send(source_pb2.ReadRequest(
        request=source_pb2.ReadRequest.Request(num_records=3, timeout_in_ms=50)
    ))
    results = []
    while True:
        resp = r.recv()
        if resp.status.eot:
            break
        results.append(resp.result)
    a.send(source_pb2.AckRequest(
        request=source_pb2.AckRequest.Request(offsets=[x.offset for x in results])
    ))
    ack = a.recv()
    # pynumaflow's (<= 1.8.1) NackRequest has a single Request: the same bytes as one entry.
    nack = stub.NackFn(source_pb2.NackRequest(request=source_pb2.NackRequest.Request(
        offsets=[source_pb2.Offset(offset=b"5")])))
    return {
        "handshakes": [read_hs.handshake.sot, ack_hs.handshake.sot],
        "payloads": [x.payload.decode() for x in results],
        "offsets": [x.offset.offset.decode() for x in results],
        "event_time_set": all(x.HasField("event_time") for x in results),
        "ack_success": ack.result.HasField("success"),
        "nack_success": nack.result.HasField("success"),
        "pending": stub.PendingFn(empty_pb2.Empty()).result.count,
        "partitions": list(stub.PartitionsFn(empty_pb2.Empty()).result.partitions),
    }


def scenario_sink(channel: grpc.Channel) -> dict[str, Any]:
    stub = sink_pb2_grpc.SinkStub(channel)
    d = Duplex(stub.SinkFn)
    d.send(sink_pb2.SinkRequest(handshake=sink_pb2.Handshake(sot=True)))
    hs = d.recv()
    d.send(
        sink_pb2.SinkRequest(request=sink_pb2.SinkRequest.Request(id="a", value=b"ok")),
        sink_pb2.SinkRequest(request=sink_pb2.SinkRequest.Request(id="b", value=b"bad")),
        sink_pb2.SinkRequest(status=sink_pb2.TransmissionStatus(eot=True)),
    )
    results = {}
    while True:
        resp = d.recv()
        if resp.HasField("status") and resp.status.eot:
            break
        for x in resp.results:
            results[x.id] = [sink_pb2.Status.Name(x.status), x.err_msg]
    return {"handshake": hs.handshake.sot, "results": results}


def main() -> int:
    kind, sock = sys.argv[1], sys.argv[2]
    with grpc.insecure_channel(f"unix://{sock}") as channel:
        out = globals()[f"scenario_{kind}"](channel)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
