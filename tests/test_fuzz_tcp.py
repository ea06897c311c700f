"""Fuzzing the TCP source with random byte streams (hypothesis): whatever a client sends, the
source keeps serving, and the frames decode or become dead letters; nothing stops the app.

Each example runs a real listener on loopback (``TcpFrameSource``) and the source vertex's
decoding as its transformer container runs it (``VertexProgram.handle``)."""

from __future__ import annotations

import asyncio
import json
import struct
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nfbuilder as wallaroo
from nfbuilder.codec import Codec
from nfbuilder.local.tcptools import send_frames
from nfbuilder.plan import DEAD_LETTER, plan
from nfbuilder.runtime.core import VertexProgram
from nfbuilder.runtime.statetable import StateTable
from nfbuilder.runtime.tcpsource import Frame, TcpFrameSource
from nfbuilder.topology import from_actions

MAX_FRAME = 4096


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs: bytes) -> str:
    return bs.decode("utf-8")  # raises on invalid UTF-8


@wallaroo.computation(name="upper")
def upper(text: str) -> str:
    return text.upper()


@wallaroo.encoder
def encode(text: str) -> bytes:
    return text.encode() + b"\n"


def _program() -> VertexProgram:
    ab = wallaroo.ApplicationBuilder("Fuzz")
    ab.new_pipeline("p", wallaroo.TCPSourceConfig("127.0.0.1", "7010", decode))
    ab.to(upper).to_sink(wallaroo.TCPSinkConfig("127.0.0.1", "7002", encode))
    ab.on_error("dead-letter", 0)
    _, source = plan(from_actions(ab.build())).find("source")
    codec = Codec.for_module(None)
    return VertexProgram(source, codec, StateTable(None, codec))


PROGRAM = _program()


def framed(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


async def _serve(streams: list[bytes], expect: int) -> tuple[list[Frame], TcpFrameSource]:
    """Send each stream on a connection of its own, one after the other, and read until the
    last connection's ``expect`` frames arrived (the others' too: they were sent first)."""
    source = TcpFrameSource("127.0.0.1", 0, 4, lambda h: struct.unpack(">I", h)[0],
                            max_frame=MAX_FRAME)
    await source.start()
    got: list[Frame] = []
    try:
        for stream in streams:
            await send_frames(source.address, [stream])
        deadline = time.monotonic() + 10
        while len(_last_connection(got)) < expect:
            assert time.monotonic() < deadline, f"{len(got)} frames, not {expect}, arrived"
            batch = await source.read(500, 0.05)
            source.ack([f.offset for f in batch])
            got += batch
        got += await source.read(500, 0.05)  # what else the garbage framed
    finally:
        await source.stop()
    return got, source


def _last_connection(frames: list[Frame]) -> list[Frame]:
    """The frames of the connection accepted last (offsets are ``<conn id>:<seq>``)."""
    conn = max((int(f.offset.split(b":")[0]) for f in frames), default=None)
    return [f for f in frames if int(f.offset.split(b":")[0]) == conn]


def _handled(frames: list[Frame]) -> list[tuple[str, object]]:
    """Each frame as the transformer handles it: ("ok", the decoded object it passes on) or
    ("dead", payload)."""
    out = []
    for f in frames:
        for o in PROGRAM.handle(0, f.payload, f.offset.decode()):
            if DEAD_LETTER in o.tags:
                record = json.loads(o.value)
                assert record["step"] is None and record["error"]
                out.append(("dead", f.payload))
            else:
                out.append(("ok", PROGRAM.codec.loads(o.value)))
    return out


good_texts = st.lists(st.text(min_size=0, max_size=40), min_size=1, max_size=20)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage=st.binary(max_size=3000), texts=good_texts)
def test_garbage_on_one_connection_never_stops_the_source(garbage: bytes,
                                                            texts: list[str]) -> None:
    good = b"".join(framed(t.encode()) for t in texts)
    got, _ = asyncio.run(_serve([garbage, good], expect=len(texts)))
    # nothing raises: every frame (the garbage's too) decodes or is a dead letter
    assert len(_handled(got)) == len(got)
    tail = _last_connection(got)
    assert [f.payload for f in tail] == [t.encode() for t in texts]
    assert _handled(tail) == [("ok", t) for t in texts]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads=st.lists(st.one_of(st.binary(max_size=200),
                                   st.text(max_size=40).map(str.encode)), max_size=30))
def test_well_framed_payloads_decode_or_are_dead_letters_and_the_connection_goes_on(
        payloads: list[bytes]) -> None:
    stream = b"".join(framed(p) for p in payloads) + framed(b"last")
    got, _ = asyncio.run(_serve([stream], expect=len(payloads) + 1))
    assert [f.payload for f in got] == [*payloads, b"last"]
    handled = _handled(got)
    for p, (kind, value) in zip(payloads, handled, strict=False):
        try:
            text = p.decode("utf-8")
        except UnicodeDecodeError:
            assert (kind, value) == ("dead", p)
        else:
            assert (kind, value) == ("ok", text)
    assert handled[-1] == ("ok", "last")
