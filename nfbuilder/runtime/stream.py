"""The one bidi-stream helper every servicer uses: handshake, EOT batches, id checks, errors.

Every Numaflow v1 bidi stream (map, transformer, source read/ack, sink) starts with a request
carrying ``handshake{sot: true}`` that the server must answer with a handshake before anything
else. A servicer describes its stream with a :class:`StreamSpec` and a ``process`` async
generator that turns data requests into responses; :class:`BidiStream` does the rest.

Example::

    stream = BidiStream(StreamSpec("MapFn", map_pb2.MapResponse(handshake=...)), process, errors)
    servicer.MapFn = stream.handle      # an async generator method, as grpc.aio expects
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, NoReturn, TypeVar

import attrs
import grpc
import grpc.aio
from google.protobuf import text_format

from nfbuilder.runtime.errors import describe, status_details, udf_error_message

log = logging.getLogger("nfbuilder.runtime")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
T = TypeVar("T")

#: The trailer numa decodes into its error report (a serialized google.rpc.Status).
DETAILS_TRAILER = "grpc-status-details-bin"


class ProtocolError(Exception):
    """The client broke the stream choreography (not a user-code error: the server keeps going)."""


def _is_handshake(request: Any) -> bool:
    return bool(request.HasField("handshake") and request.handshake.sot)


@attrs.frozen
class StreamSpec(Generic[Resp]):
    """How one bidi method opens: its name (for messages) and the handshake reply to send.

    Example::

        StreamSpec("SinkFn", sink_pb2.SinkResponse(handshake=sink_pb2.Handshake(sot=True)))
    """

    method: str
    handshake_reply: Resp


@attrs.frozen
class ErrorContract:
    """Turns a handler failure into what numa expects, and tells the server to stop.

    ``on_fatal(status_message, traceback_text)`` is the server's hook: it writes the error
    report and schedules the shutdown with exit code 1. ``prefix`` is ``"UDSinkError, "`` for
    sinks.

    Example::

        ErrorContract("udf", on_fatal=lambda msg, tb: None)
    """

    container_type: str | None
    on_fatal: Callable[[str, str], None]
    prefix: str = ""

    async def abort(self, context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
        """End the RPC with INTERNAL, the contract message and a DebugInfo trailer."""
        message, traceback_text = describe(exc)
        status_message = udf_error_message(self.container_type, message, prefix=self.prefix)
        log.error("%s\n%s", status_message, traceback_text)
        self.on_fatal(status_message, traceback_text)
        await context.abort(
            grpc.StatusCode.INTERNAL,
            status_message,
            trailing_metadata=((DETAILS_TRAILER, status_details(status_message, traceback_text)),),
        )
        raise AssertionError("context.abort() returned")  # pragma: no cover - abort always raises

    async def guard(self, context: grpc.aio.ServicerContext, call: Awaitable[T]) -> T:
        """Await a unary handler call; a failure takes the same fatal path as in a stream.

        Example::

            count = await errors.guard(context, handler.pending())
        """
        try:
            return await call
        except Exception as exc:  # noqa: BLE001 - any handler failure takes the fatal path
            await self.abort(context, exc)


async def abort_protocol(
    context: grpc.aio.ServicerContext, method: str, error: ProtocolError
) -> NoReturn:
    """End the RPC with INVALID_ARGUMENT for a client that broke the choreography."""
    message = f"{method}: {error}"
    log.warning("protocol error: %s", message)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
    raise AssertionError("context.abort() returned")  # pragma: no cover - abort always raises


class BidiStream(Generic[Req, Resp]):
    """Runs one bidi method: handshake first, then ``process`` over the data requests.

    ``process`` gets an async iterator of data requests (the handshake already answered, any
    later handshake rejected) and yields responses. An exception from it ends the RPC through
    ``errors``; a :class:`ProtocolError` ends only the RPC, with INVALID_ARGUMENT.

    Example::

        async def echo(requests):
            async for request in requests:
                yield reply_for(request)

        BidiStream(spec, echo, errors).handle   # assign as the servicer's method
    """

    def __init__(
        self,
        spec: StreamSpec[Resp],
        process: Callable[[AsyncIterator[Req]], AsyncIterator[Resp]] | None,
        errors: ErrorContract,
        *,
        answer: Callable[[Req], Resp] | None = None,
    ) -> None:
        if (process is None) == (answer is None):
            raise TypeError("BidiStream needs exactly one of process and answer")
        self._spec = spec
        self._process = process
        self._answer = answer
        self._errors = errors

    @classmethod
    def one_to_one(
        cls, spec: StreamSpec[Resp], answer: Callable[[Req], Resp], errors: ErrorContract
    ) -> BidiStream[Req, Resp]:
        """A stream that answers each data request with ``answer(request)``, inline, in order.

        Same choreography as a ``process`` that yields ``answer(r)`` for each request, without
        the nested async generators: this is the per-message hot path of map and transformer
        vertices, where each extra generator hop costs CPU on every message.

        Example::

            BidiStream.one_to_one(spec, lambda r: map_pb2.MapResponse(id=r.id), errors).handle
        """
        return cls(spec, None, errors, answer=answer)

    async def handle(
        self, requests: AsyncIterator[Req], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Resp]:
        """The grpc.aio stream-stream handler (an async generator method)."""
        method = self._spec.method
        iterator = aiter(requests)
        try:
            first = await anext(iterator)
        except StopAsyncIteration:
            return  # the client closed before the handshake: nothing to answer
        if not _is_handshake(first):
            await abort_protocol(
                context,
                method,
                ProtocolError(
                    "the first request must be a handshake (handshake.sot=true), got "
                    f"{_summary(first)}; the client must open the stream with "
                    "{handshake: {sot: true}}"
                ),
            )
        yield self._spec.handshake_reply
        answer = self._answer
        try:
            if answer is not None:
                async for request in iterator:
                    if _is_handshake(request):
                        raise ProtocolError(_SECOND_HANDSHAKE)
                    yield answer(request)
            else:
                assert self._process is not None
                async for response in self._process(_data_requests(iterator, method)):
                    yield response
        except ProtocolError as error:
            await abort_protocol(context, method, error)
        except Exception as exc:  # noqa: BLE001 - any handler failure takes the fatal path
            await self._errors.abort(context, exc)


_SECOND_HANDSHAKE = "got a second handshake after the stream was opened"


async def _data_requests(iterator: AsyncIterator[Req], method: str) -> AsyncIterator[Req]:
    async for request in iterator:
        if _is_handshake(request):
            raise ProtocolError(_SECOND_HANDSHAKE)
        yield request


def _summary(request: Any) -> str:
    text = text_format.MessageToString(request, as_one_line=True)
    return repr(text[:200]) if text else "an empty message"


def is_eot(request: Any) -> bool:
    """True for an end-of-transmission request (``status{eot: true}``)."""
    return bool(request.HasField("status") and request.status.eot)


async def batches_until_eot(requests: AsyncIterator[Req]) -> AsyncIterator[list[Req]]:
    """Group data requests into the batches the client closes with EOT.

    A stream that ends in the middle of a batch (client shutdown) drops that partial batch:
    it was never acknowledged, so the engine delivers it again.

    Example::

        async for batch in batches_until_eot(requests):
            ...  # answer every id of the batch, then send EOT
    """
    batch: list[Req] = []
    async for request in requests:
        if is_eot(request):
            yield batch  # may be empty: the EOT must still be answered
            batch = []
        else:
            batch.append(request)
    if batch:
        log.warning("stream ended with %d requests after the last EOT; not processed", len(batch))


def check_one_per_id(sent: Sequence[str], answered: Iterable[str], what: str) -> None:
    """Raise if ``answered`` is not exactly one answer for each id in ``sent``.

    The message names missing, unknown and duplicate ids (a handler bug the engine would treat
    as a fatal partial response).

    Example::

        check_one_per_id(["a", "b"], [r.id for r in results], "sink handler")
    """
    expected = set(sent)
    seen: set[str] = set()
    duplicate: list[str] = []
    unknown: list[str] = []
    for ident in answered:
        if ident in seen:
            duplicate.append(ident)
        elif ident not in expected:
            unknown.append(ident)
        seen.add(ident)
    missing = [ident for ident in sent if ident not in seen]
    if missing or unknown or duplicate:
        raise ValueError(
            f"{what} must return exactly one result per input id; "
            f"missing ids {_few(missing)}, unknown ids {_few(unknown)}, "
            f"duplicate ids {_few(duplicate)} (batch of {len(sent)})"
        )


def _few(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:5])
    more = f" and {len(ids) - 5} more" if len(ids) > 5 else ""
    return f"[{shown}{more}]"
