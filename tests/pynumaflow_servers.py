"""Test-only launcher: run a pynumaflow 0.14.0 server (the independent implementation of the
Numaflow contract) with a tiny handler, so tests can drive it with nfbuilder's numa-like clients.

It runs in its own process because pynumaflow's generated code and ``nfbuilder._proto`` both
register ``map.v1.*`` (etc.) in protobuf's default pool and cannot be imported together.

    python tests/pynumaflow_servers.py --kind map --sock /tmp/x/map.sock \\
        --info /tmp/x/mapper-server-info

Handlers (values steer behaviour so one server covers several tests):
- map: echo the value and keys (and user metadata); ``slow:<n>`` answers after n ms so replies
  come back out of order; ``boom`` raises ValueError("boom") (the UDF error contract).
- transform: echo, with the event time moved one hour later; ``empty`` returns no results.
- sink: SUCCESS, or FAILURE with err_msg ``rejected <value>`` for values starting ``fail``.
- source: ``--count`` records ``msg-<i>`` with offsets ``b"<i>"`` in partition 3 (total 4);
  pending = records not yet read (nacked offsets count again and are delivered again).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterable
from datetime import datetime, timedelta, timezone

#: Event time of every source record: 2024-01-02T03:04:05.123456Z.
SOURCE_EVENT_TIME = datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)


def _map_server(args: argparse.Namespace, sync: bool) -> object:
    from pynumaflow import mapper

    def reply(keys: list[str], datum: mapper.Datum) -> mapper.Messages:
        if datum.value == b"boom":
            raise ValueError("boom")
        return mapper.Messages(mapper.Message(datum.value, keys=keys,
                                              user_metadata=datum.user_metadata))

    async def handler(keys: list[str], datum: mapper.Datum) -> mapper.Messages:
        if datum.value.startswith(b"slow:"):
            await asyncio.sleep(int(datum.value[5:]) / 1000)
        return reply(keys, datum)

    if sync:
        return mapper.MapServer(reply, sock_path=args.sock, server_info_file=args.info)
    return mapper.MapAsyncServer(handler, sock_path=args.sock, server_info_file=args.info)


def _transform_server(args: argparse.Namespace) -> object:
    from pynumaflow import sourcetransformer as st

    async def handler(keys: list[str], datum: st.Datum) -> st.Messages:
        if datum.value == b"empty":
            return st.Messages()
        later = datum.event_time + timedelta(hours=1)
        return st.Messages(st.Message(datum.value, event_time=later, keys=keys))

    return st.SourceTransformAsyncServer(handler, sock_path=args.sock, server_info_file=args.info)


def _sink_server(args: argparse.Namespace) -> object:
    from pynumaflow import sinker

    async def handler(datums: AsyncIterable[sinker.Datum]) -> sinker.Responses:
        responses = sinker.Responses()
        async for datum in datums:
            if datum.value.startswith(b"fail"):
                responses.append(sinker.Response.as_failure(
                    datum.id, f"rejected {datum.value.decode()}"))
            else:
                responses.append(sinker.Response.as_success(datum.id))
        return responses

    return sinker.SinkAsyncServer(handler, sock_path=args.sock, server_info_file=args.info)


def _source_server(args: argparse.Namespace) -> object:
    from pynumaflow import sourcer

    class ListSource(sourcer.Sourcer):
        def __init__(self, count: int) -> None:
            self.next = 0
            self.count = count
            self.unacked: set[int] = set()
            self.redeliver: list[int] = []

        async def read_handler(self, datum: sourcer.ReadRequest, output: object) -> None:
            for _ in range(datum.num_records):
                if self.redeliver:
                    index = self.redeliver.pop(0)
                elif self.next < self.count:
                    index, self.next = self.next, self.next + 1
                else:
                    return
                self.unacked.add(index)
                await output.put(sourcer.Message(  # type: ignore[attr-defined]
                    payload=f"msg-{index}".encode(),
                    offset=sourcer.Offset(str(index).encode(), 3),
                    event_time=SOURCE_EVENT_TIME, keys=["k"], headers={"h": "v"}))

        async def ack_handler(self, ack_request: sourcer.AckRequest) -> None:
            for offset in ack_request.offsets:
                self.unacked.discard(int(offset.offset))

        async def nack_handler(self, nack_request: sourcer.NackRequest) -> None:
            for offset in nack_request.offsets:
                self.unacked.discard(int(offset.offset))
                self.redeliver.append(int(offset.offset))

        async def pending_handler(self) -> sourcer.PendingResponse:
            return sourcer.PendingResponse(count=self.count - self.next + len(self.redeliver))

        async def active_partitions_handler(self) -> sourcer.PartitionsResponse:
            return sourcer.PartitionsResponse(partitions=[3])

        async def total_partitions_handler(self) -> int | None:
            return 4

    return sourcer.SourceAsyncServer(ListSource(args.count), sock_path=args.sock,
                                     server_info_file=args.info)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", required=True,
                        choices=["map", "map-sync", "transform", "sink", "source"])
    parser.add_argument("--sock", required=True)
    parser.add_argument("--info", required=True)
    parser.add_argument("--count", type=int, default=25, help="source: number of records")
    args = parser.parse_args()
    if args.kind in ("map", "map-sync"):
        server = _map_server(args, sync=args.kind == "map-sync")
    elif args.kind == "transform":
        server = _transform_server(args)
    elif args.kind == "sink":
        server = _sink_server(args)
    else:
        server = _source_server(args)
    server.start()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
