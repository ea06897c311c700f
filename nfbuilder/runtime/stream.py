"""The one bidi-stream core every servicer and both transports use: handshake, EOT, errors.

Every Numaflow v1 bidi stream (map, transformer, source read/ack, sink) starts with a request
carrying ``handshake{sot: true}`` that the server must answer with a handshake before anything
else; a second handshake is a protocol error; a handler failure ends the call with the error
contract's status. A servicer describes its stream with a :class:`StreamSpec` and either a
``process`` async generator, a synchronous one-to-one ``answer`` or an async ``batch``
answer (requests collected until each EOT); :class:`BidiStream` does the rest, for either
transport:

* grpc.aio (and any transport that gives a :class:`Context`): ``stream.handle`` is the
  stream-stream method;
* a transport that parses requests itself (the h2 server's hot path): ``stream.inline()``
  gives an :class:`InlineCall` per call, fed the requests of each read, no task per message;
  ``stream.batched()`` a :class:`BatchCall`, fed the same way, awaited once per batch.

Both report how a call fails as a :class:`Failure` (status code, message, details trailer).

Example::

    stream = BidiStream(StreamSpec("MapFn", map_pb2.MapResponse(handshake=...)), process, errors)
    servicer.MapFn = stream.handle      # an async generator method, as grpc.aio expects
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, NoReturn, Protocol, TypeVar

import attrs
import grpc
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


@attrs.frozen
class Failure:
    """How a call ends when it does not end OK; both transports send exactly this.

    ``details`` is the ``grpc-status-details-bin`` trailer (a serialized google.rpc.Status).

    Example::

        Failure(grpc.StatusCode.INVALID_ARGUMENT, "MapFn: got a second handshake ...")
    """

    code: grpc.StatusCode
    message: str
    details: bytes | None = None

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        """The failure's trailing metadata, as grpc.aio's ``abort`` takes it."""
        return () if self.details is None else ((DETAILS_TRAILER, self.details),)


class Context(Protocol):
    """What the stream core needs from a call: a way to end it with a status.

    ``grpc.aio.ServicerContext`` is one; the h2 transport's call context is the other.
    """

    async def abort(
        self, code: grpc.StatusCode, details: str = "",
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> NoReturn: ...


async def end_call(context: Context, failure: Failure) -> NoReturn:
    """End the call behind ``context`` with ``failure`` (``abort`` raises to unwind the handler)."""
    await context.abort(failure.code, failure.message,
                        trailing_metadata=failure.trailing_metadata())
    raise AssertionError("context.abort() returned")  # pragma: no cover - abort always raises


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

    def open(self, first: Any) -> Resp:
        """The reply to a call's first request; ProtocolError unless it is a handshake."""
        if not _is_handshake(first):
            raise ProtocolError(
                "the first request must be a handshake (handshake.sot=true), got "
                f"{_summary(first)}; the client must open the stream with "
                "{handshake: {sot: true}}"
            )
        return self.handshake_reply

    def refused(self, error: ProtocolError) -> Failure:
        """The failure that ends a call whose client broke the choreography (logged)."""
        message = f"{self.method}: {error}"
        log.warning("protocol error: %s", message)
        return Failure(grpc.StatusCode.INVALID_ARGUMENT, message)


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

    def fatal(self, exc: BaseException) -> Failure:
        """Log ``exc``, call ``on_fatal`` and return the INTERNAL failure with its DebugInfo.

        Example::

            errors.fatal(ValueError("boom"))
            # Failure(INTERNAL, "UDF_EXECUTION_ERROR(udf): ValueError('boom')", b"...")
        """
        message, traceback_text = describe(exc)
        status_message = udf_error_message(self.container_type, message, prefix=self.prefix)
        log.error("%s\n%s", status_message, traceback_text)
        self.on_fatal(status_message, traceback_text)
        return Failure(grpc.StatusCode.INTERNAL, status_message,
                       status_details(status_message, traceback_text))

    async def abort(self, context: Context, exc: BaseException) -> NoReturn:
        """End the RPC with INTERNAL, the contract message and a DebugInfo trailer."""
        await end_call(context, self.fatal(exc))

    async def guard(self, context: Context, call: Awaitable[T]) -> T:
        """Await a unary handler call; a failure takes the same fatal path as in a stream.

        Example::

            count = await errors.guard(context, handler.pending())
        """
        try:
            return await call
        except Exception as exc:  # noqa: BLE001 - any handler failure takes the fatal path
            await self.abort(context, exc)


async def abort_protocol(context: Context, spec: StreamSpec[Any], error: ProtocolError) -> NoReturn:
    """End the RPC with INVALID_ARGUMENT for a client that broke the choreography."""
    await end_call(context, spec.refused(error))


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
        answers: Callable[[], Callable[[Req], Sequence[Resp]]] | None = None,
        batch: tuple[Callable[[list[Req]], Awaitable[Sequence[Resp]]], Resp] | None = None,
    ) -> None:
        if sum(x is not None for x in (process, answer, answers, batch)) != 1:
            raise TypeError("BidiStream needs exactly one of process, answer, answers and batch")
        self._spec = spec
        self._process = process
        self._answer = answer
        self._answers = answers
        self._batch = batch
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

    @classmethod
    def one_to_many(
        cls, spec: StreamSpec[Resp], answers: Callable[[], Callable[[Req], Sequence[Resp]]],
        errors: ErrorContract,
    ) -> BidiStream[Req, Resp]:
        """As :meth:`one_to_one`, but each request gets the responses (none, one or several)
        that ``answer(request)`` returns, ``answer`` being made by ``answers()`` for each call
        (so a call's state, e.g. a batch's responses held back until its EOT, is its own).

        Example::

            BidiStream.one_to_many(spec, lambda: lambda r: [reply_for(r)], errors).handle
        """
        return cls(spec, None, errors, answers=answers)

    @classmethod
    def batches(
        cls, spec: StreamSpec[Resp], answer: Callable[[list[Req]], Awaitable[Sequence[Resp]]],
        eot_reply: Resp, errors: ErrorContract,
    ) -> BidiStream[Req, Resp]:
        """A stream whose data requests come in batches the client closes with EOT: each batch
        (possibly empty) is answered with what ``await answer(batch)`` returns (not called for
        an empty one), then ``eot_reply``; batches are answered one after the other, in order.

        Same choreography as a ``process`` over :func:`batches_until_eot`, without a generator
        hop per message: the sink's path, awaited once per batch.

        Example::

            BidiStream.batches(spec, write_batch, sink_eot, errors).handle
        """
        return cls(spec, None, errors, batch=(answer, eot_reply))

    @property
    def answers_inline(self) -> bool:
        """Whether a transport that parses requests itself can answer this stream's calls with
        :meth:`inline` or :meth:`batched` (else only :meth:`handle` runs them)."""
        return self._process is None

    def inline(self) -> InlineCall[Req, Resp] | None:
        """A new call's state for a transport that answers requests as it parses them, or None
        when the stream's body is an async ``process`` (run it through :meth:`handle`) or a
        batch body (:meth:`batched`).

        Example::

            call = stream.inline()
            failure = call.feed(requests_of_this_read, responses)
        """
        if self._answers is not None:
            return InlineCall(self._spec, self._answers(), self._errors, many=True)
        if self._answer is None:
            return None
        return InlineCall(self._spec, self._answer, self._errors)

    def batched(self) -> BatchCall[Req, Resp] | None:
        """A new call's state for a transport that parses requests itself, when the stream
        answers batches (:meth:`batches`); else None.

        Example::

            call = stream.batched()
            failure = call.feed(requests_of_this_read, responses)   # the handshake reply
            while call.ready:
                responses, failure = await call.answer()
        """
        if self._batch is None:
            return None
        answer, eot_reply = self._batch
        return BatchCall(self._spec, answer, eot_reply, self._errors)

    async def handle(self, requests: AsyncIterator[Req], context: Context) -> AsyncIterator[Resp]:
        """The grpc.aio stream-stream handler (an async generator method)."""
        out: list[Resp] = []
        batches = self.batched()
        if batches is not None:  # the very code the h2 transport runs, per request and batch
            async for request in requests:
                failure = batches.feed((request,), out)
                while failure is None and batches.ready:
                    responses, failure = await batches.answer()
                    out.extend(responses)
                for response in out:
                    yield response
                out.clear()
                if failure is not None:
                    await end_call(context, failure)
            batches.end()
            return
        call = self.inline()
        if call is not None:  # one-to-one: the very code the h2 transport runs, per request
            async for request in requests:
                failure = call.feed((request,), out)
                for response in out:
                    yield response
                out.clear()
                if failure is not None:
                    await end_call(context, failure)
            return
        spec = self._spec
        iterator = aiter(requests)
        try:
            first = await anext(iterator)
        except StopAsyncIteration:
            return  # the client closed before the handshake: nothing to answer
        try:
            reply = spec.open(first)
        except ProtocolError as error:
            await abort_protocol(context, spec, error)
        yield reply
        assert self._process is not None
        try:
            async for response in self._process(_data_requests(iterator)):
                yield response
        except ProtocolError as error:
            await abort_protocol(context, spec, error)
        except Exception as exc:  # noqa: BLE001 - any handler failure takes the fatal path
            await self._errors.abort(context, exc)


class InlineCall(Generic[Req, Resp]):
    """One call of a one-to-one stream, fed requests by a transport that parses them itself.

    The same choreography as :meth:`BidiStream.handle` (handshake first, no second one, handler
    errors through the contract), with no task, future or generator per message.

    Example::

        responses: list[MapResponse] = []
        failure = call.feed([handshake, request], responses)  # None: the call goes on
    """

    __slots__ = ("_answer", "_errors", "_many", "_opened", "_spec")

    def __init__(
        self, spec: StreamSpec[Resp], answer: Callable[[Req], Any], errors: ErrorContract,
        *, many: bool = False,
    ) -> None:
        self._spec = spec
        self._answer = answer
        self._errors = errors
        self._opened = False
        self._many = many  # answer returns a list of responses

    def feed(self, requests: Iterable[Req], out: list[Resp]) -> Failure | None:
        """Append the response to each of ``requests`` to ``out``, in order.

        Returns None while the call goes on, or the :class:`Failure` that ends it (``out`` then
        holds the responses to send before it).
        """
        answer, append = self._answer, out.append
        iterator = iter(requests)
        try:
            if not self._opened:
                first = next(iterator, None)
                if first is None:
                    return None
                append(self._spec.open(first))
                self._opened = True
            add = out.extend if self._many else append  # answer gives a list, or one
            for request in iterator:
                if _is_handshake(request):
                    raise ProtocolError(_SECOND_HANDSHAKE)
                add(answer(request))
        except ProtocolError as error:
            return self._spec.refused(error)
        except Exception as exc:  # noqa: BLE001 - any handler failure takes the fatal path
            return self._errors.fatal(exc)
        return None


_SECOND_HANDSHAKE = "got a second handshake after the stream was opened"


class BatchCall(Generic[Req, Resp]):
    """One call of a batch stream (:meth:`BidiStream.batches`), fed requests by a transport.

    :meth:`feed` answers the handshake and collects data requests; each EOT closes a batch,
    queued in :attr:`ready`; :meth:`answer` answers the oldest ready batch (the handler
    awaited once for the whole batch). The same choreography as :meth:`BidiStream.handle`
    over :func:`batches_until_eot`.

    Example::

        failure = call.feed([handshake, request, eot], responses)   # None: the call goes on
        responses, failure = await call.answer()   # the batch's responses and the EOT reply
    """

    __slots__ = ("_answer", "_batch", "_eot_reply", "_errors", "_opened", "_spec", "ready")

    def __init__(
        self, spec: StreamSpec[Resp], answer: Callable[[list[Req]], Awaitable[Sequence[Resp]]],
        eot_reply: Resp, errors: ErrorContract,
    ) -> None:
        self._spec = spec
        self._answer = answer
        self._eot_reply = eot_reply
        self._errors = errors
        self._opened = False
        self._batch: list[Req] = []
        #: batches closed by their EOT and not answered yet, oldest first
        self.ready: deque[list[Req]] = deque()

    def feed(self, requests: Iterable[Req], out: list[Resp]) -> Failure | None:
        """Collect ``requests``; the handshake's reply goes to ``out``, each batch an EOT
        closes to :attr:`ready`. Returns None while the call goes on, or the :class:`Failure`
        that ends it."""
        iterator: Iterator[Any] = iter(requests)
        try:
            if not self._opened:
                first = next(iterator, None)
                if first is None:
                    return None
                out.append(self._spec.open(first))
                self._opened = True
            batch = self._batch
            for request in iterator:  # _is_handshake and is_eot, inline: once per message
                has = request.HasField
                if has("handshake") and request.handshake.sot:
                    raise ProtocolError(_SECOND_HANDSHAKE)
                if has("status") and request.status.eot:
                    self.ready.append(batch)  # may be empty: the EOT must still be answered
                    batch = self._batch = []
                else:
                    batch.append(request)
        except ProtocolError as error:
            return self._spec.refused(error)
        return None

    async def answer(self) -> tuple[list[Resp], Failure | None]:
        """Answer the oldest ready batch: its responses and the EOT reply, or the responses to
        send before the :class:`Failure` that ends the call (a handler failure)."""
        batch = self.ready.popleft()
        if not batch:
            return [self._eot_reply], None
        try:
            responses = list(await self._answer(batch))
        except Exception as exc:  # noqa: BLE001 - any handler failure takes the fatal path
            return [], self._errors.fatal(exc)
        responses.append(self._eot_reply)
        return responses, None

    def end(self) -> None:
        """The client half-closed: a batch it did not close is dropped (never acknowledged, so
        the engine delivers it again)."""
        _dropped(len(self._batch))


async def _data_requests(iterator: AsyncIterator[Req]) -> AsyncIterator[Req]:
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
    _dropped(len(batch))


def _dropped(count: int) -> None:
    if count:
        log.warning("stream ended with %d requests after the last EOT; not processed", count)


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
