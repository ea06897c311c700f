"""Servicers for ``map.v1.Map`` (unary and batch mode) and
``sourcetransformer.v1.SourceTransform``.

Both answer every data request with exactly one response echoing its id. The handler is
synchronous user code; by default it runs inline on the event loop, one request at a time in
arrival order (the cheapest path, and what ordered vertices need). With ``workers > 1`` it runs
in a thread pool and responses go out as they complete.

Example::

    servicer = MapServicer(identity_handler, errors, workers=1)
    map_pb2_grpc.add_MapServicer_to_server(servicer, server)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import attrs
import grpc.aio
from google.protobuf import empty_pb2

from nfbuilder._proto import map_pb2, map_pb2_grpc, sourcetransform_pb2, sourcetransform_pb2_grpc
from nfbuilder.runtime.errors import UserCodeError
from nfbuilder.runtime.messages import DROP, MapHandler, PayloadFn
from nfbuilder.runtime.servicers.convert import (
    add_map_results,
    add_outputs,
    map_datum,
    to_timestamp,
    transform_datum,
    write_metadata,
)
from nfbuilder.runtime.stream import BidiStream, ErrorContract, StreamSpec, batches_until_eot
from nfbuilder.runtime.workers import WorkerError, WorkerPool

Req = TypeVar("Req")
Resp = TypeVar("Resp")

_TransformResult = sourcetransform_pb2.SourceTransformResponse.Result


@attrs.frozen
class _EndOfInput:
    submitted: int
    error: Exception | None


def _stream(
    spec: StreamSpec[Resp], answer: Callable[[Req], Resp], errors: ErrorContract, workers: int
) -> BidiStream[Req, Resp]:
    """Inline when ``workers == 1`` (no task per message, strictly in arrival order), else
    through a thread pool with responses in completion order."""
    if workers <= 1:
        return BidiStream.one_to_one(spec, answer, errors)
    return BidiStream(spec, _pooled(answer, workers), errors)


def _pooled(
    answer: Callable[[Req], Resp], workers: int
) -> Callable[[AsyncIterator[Req]], AsyncIterator[Resp]]:
    """The stream body that runs ``answer`` in a pool of ``workers`` threads."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nfbuilder-map")

    async def pooled(requests: AsyncIterator[Req]) -> AsyncIterator[Resp]:
        loop = asyncio.get_running_loop()
        done: asyncio.Queue[Future[Resp] | _EndOfInput] = asyncio.Queue()

        def finished(future: Future[Resp]) -> None:
            loop.call_soon_threadsafe(done.put_nowait, future)

        async def feed() -> None:
            submitted = 0
            try:
                async for request in requests:
                    submitted += 1
                    pool.submit(answer, request).add_done_callback(finished)
            except Exception as exc:  # noqa: BLE001 - re-raised in order by the writer below
                done.put_nowait(_EndOfInput(submitted, exc))
            else:
                done.put_nowait(_EndOfInput(submitted, None))

        feeder = asyncio.ensure_future(feed())
        answered, total = 0, -1
        try:
            while total < 0 or answered < total:
                item = await done.get()
                if isinstance(item, _EndOfInput):
                    if item.error is not None:
                        raise item.error
                    total = item.submitted
                    continue
                answered += 1
                yield item.result()  # a handler exception reaches the error contract
        finally:
            feeder.cancel()

    return pooled


def _handshake_map() -> map_pb2.MapResponse:
    return map_pb2.MapResponse(handshake=map_pb2.Handshake(sot=True))


_EOT = map_pb2.MapResponse(status=map_pb2.TransmissionStatus(eot=True))


def map_answer(handler: MapHandler) -> Callable[[map_pb2.MapRequest], map_pb2.MapResponse]:
    """The response to one data request: ``handler``'s results under the request's id (from
    the request's id and value alone when the handler has a ``payload`` function,
    :data:`~nfbuilder.runtime.messages.PayloadFn`)."""
    Response = map_pb2.MapResponse
    payload: PayloadFn | None = getattr(handler, "payload", None)
    if payload is not None:
        wired = write_metadata(handler.payload_metadata)  # type: ignore[attr-defined]

        def answer_payload(request: map_pb2.MapRequest) -> map_pb2.MapResponse:
            msg_id = request.id
            response = Response(id=msg_id)
            add_outputs(response.results, payload(msg_id, request.request.value), wired)
            return response

        return answer_payload

    def answer(request: map_pb2.MapRequest) -> map_pb2.MapResponse:
        response = Response(id=request.id)
        add_map_results(response.results, handler(map_datum(request)))
        return response

    return answer


def map_bytes_answer(handler: MapHandler) -> Callable[[bytes], bytes]:
    """:func:`map_answer` on serialized requests and responses: what a worker process of a
    :class:`WorkerPool` runs."""
    answer, parse = map_answer(handler), map_pb2.MapRequest.FromString
    return lambda raw: answer(parse(raw)).SerializeToString()  # type: ignore[no-any-return]


class MapServicer(map_pb2_grpc.MapServicer):
    """``map.v1.Map`` in unary mode over a synchronous :data:`MapHandler`; ``batch=True``: in
    batch mode (each batch closed by an EOT the servicer answers after the batch's responses).
    ``pool``: the handler runs in these worker processes (started already, each running
    :func:`map_bytes_answer` of it): a batch is split among them and answered in order; in
    unary mode responses go out as the workers answer. ``waits`` (batch mode): the handler
    awaits (an async step), so each batch runs on a thread of its own, one after the other,
    and the server goes on answering other calls meanwhile.

    Example::

        MapServicer(lambda d: [Result(d.value)], ErrorContract("udf", on_fatal), workers=1)
    """

    def __init__(self, handler: MapHandler, errors: ErrorContract, *, workers: int = 1,
                 batch: bool = False, pool: WorkerPool | None = None,
                 waits: bool = False) -> None:
        answer = map_answer(handler)
        spec = StreamSpec("MapFn", _handshake_map())
        if pool is not None:
            stream = BidiStream(spec, _pooled_batches(pool) if batch else _pooled_stream(pool),
                                errors)
        elif batch and waits:
            stream = BidiStream(spec, _threaded_batches(answer, handler), errors)
        elif batch:
            stream = BidiStream.one_to_many(spec, _batch_answers(answer, handler), errors)
        else:
            stream = _stream(spec, answer, errors, workers)
        self.MapFn = stream.handle  # type: ignore[method-assign]

    async def IsReady(
        self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> map_pb2.ReadyResponse:
        return map_pb2.ReadyResponse(ready=True)


def _batch_answers(
    answer: Callable[[map_pb2.MapRequest], map_pb2.MapResponse], handler: MapHandler
) -> Callable[[], Callable[[map_pb2.MapRequest], list[map_pb2.MapResponse]]]:
    """numa's batch mode, per call: the requests of a batch (each handled as it comes, in
    order), then an EOT request. The batch's responses are held back until its EOT, when the
    handler's ``end_of_batch()`` (if it has one: a state vertex saves its batch there) has
    returned; then every response and the EOT go out. numa acts on a batch only once it has
    every answer, so holding them costs no time, and what a response says is saved first."""
    end_of_batch = getattr(handler, "end_of_batch", None)
    eot = _EOT

    def answers() -> Callable[[map_pb2.MapRequest], list[map_pb2.MapResponse]]:
        held: list[map_pb2.MapResponse] = []

        def answer_many(request: map_pb2.MapRequest) -> list[map_pb2.MapResponse]:
            if request.HasField("status") and request.status.eot:
                if end_of_batch is not None:
                    end_of_batch()
                out = [*held, eot]
                held.clear()
                return out
            held.append(answer(request))
            return []

        return answer_many

    return answers


def _threaded_batches(
    answer: Callable[[map_pb2.MapRequest], map_pb2.MapResponse], handler: MapHandler
) -> Callable[[AsyncIterator[map_pb2.MapRequest]], AsyncIterator[map_pb2.MapResponse]]:
    """Batch mode with each batch answered on one thread (the same one every time, so the
    handler and its state see one message at a time, in order): a handler that waits for an
    async step does not hold up the server's loop."""
    end_of_batch = getattr(handler, "end_of_batch", None)
    thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nfbuilder-batch")

    def run(batch: list[map_pb2.MapRequest]) -> list[map_pb2.MapResponse]:
        out = [answer(request) for request in batch]
        if end_of_batch is not None:
            end_of_batch()
        return out

    async def process(
        requests: AsyncIterator[map_pb2.MapRequest],
    ) -> AsyncIterator[map_pb2.MapResponse]:
        loop = asyncio.get_running_loop()
        async for batch in batches_until_eot(requests):
            for response in await loop.run_in_executor(thread, run, batch):
                yield response
            yield _EOT

    return process


def _worker_failed(exc: WorkerError) -> UserCodeError:
    """A worker's failure as the error contract reports a user-code error of this process."""
    return UserCodeError(exc.message, exc.traceback_text)


def _pooled_batches(
    pool: WorkerPool,
) -> Callable[[AsyncIterator[map_pb2.MapRequest]], AsyncIterator[map_pb2.MapResponse]]:
    """Batch mode over ``pool``: each batch (closed by its EOT) split among the workers, its
    responses in the batch's order, then the EOT."""
    parse = map_pb2.MapResponse.FromString

    async def process(
        requests: AsyncIterator[map_pb2.MapRequest],
    ) -> AsyncIterator[map_pb2.MapResponse]:
        async for batch in batches_until_eot(requests):
            try:
                answers = await pool.run([r.SerializeToString() for r in batch])
            except WorkerError as exc:
                raise _worker_failed(exc) from None
            for raw in answers:
                yield parse(raw)
            yield _EOT

    return process


def _pooled_stream(
    pool: WorkerPool,
) -> Callable[[AsyncIterator[map_pb2.MapRequest]], AsyncIterator[map_pb2.MapResponse]]:
    """Unary mode over ``pool``: responses as the workers give them."""
    parse = map_pb2.MapResponse.FromString

    async def process(
        requests: AsyncIterator[map_pb2.MapRequest],
    ) -> AsyncIterator[map_pb2.MapResponse]:
        async def serialized() -> AsyncIterator[bytes]:
            async for request in requests:
                yield request.SerializeToString()

        try:
            async for raw in pool.stream(serialized()):
                yield parse(raw)
        except WorkerError as exc:
            raise _worker_failed(exc) from None

    return process


def _drop_result(event_time: Any) -> list[_TransformResult]:
    return [_TransformResult(value=b"", event_time=event_time, tags=[DROP])]


class TransformerServicer(sourcetransform_pb2_grpc.SourceTransformServicer):
    """``sourcetransformer.v1.SourceTransform`` over a synchronous :data:`MapHandler`.

    Every result carries an event time (the input's unless the handler set one) and an empty
    result list becomes one DROP-tagged result, because numa treats an empty list as fatal.

    Example::

        TransformerServicer(decode_handler, ErrorContract("transformer", on_fatal))
    """

    def __init__(self, handler: MapHandler, errors: ErrorContract, *, workers: int = 1) -> None:
        def answer(
            request: sourcetransform_pb2.SourceTransformRequest,
        ) -> sourcetransform_pb2.SourceTransformResponse:
            event_time = request.request.event_time
            results = [
                _TransformResult(
                    keys=result.keys,
                    value=result.value,
                    event_time=(
                        event_time
                        if result.event_time_ns is None
                        else to_timestamp(result.event_time_ns)
                    ),
                    tags=result.tags,
                    metadata=write_metadata(result.user_metadata),
                )
                for result in handler(transform_datum(request))
            ]
            return sourcetransform_pb2.SourceTransformResponse(
                id=request.request.id, results=results or _drop_result(event_time)
            )

        handshake = sourcetransform_pb2.SourceTransformResponse(
            handshake=sourcetransform_pb2.Handshake(sot=True)
        )
        stream = _stream(StreamSpec("SourceTransformFn", handshake), answer, errors, workers)
        self.SourceTransformFn = stream.handle  # type: ignore[method-assign]

    async def IsReady(
        self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> sourcetransform_pb2.ReadyResponse:
        return sourcetransform_pb2.ReadyResponse(ready=True)


__all__ = ["MapServicer", "TransformerServicer", "map_answer", "map_bytes_answer"]
