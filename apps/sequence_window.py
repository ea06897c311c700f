"""Sequence window: the last four values of each parity (Wallaroo's ``sequence_window_python``
correctness app, its resilience workhorse).

One pipeline: TCP source (``>I`` length 8, then a big-endian u64; send 1..N) ->
``maybe one to many`` (every 12th value also carries the next two, which are then dropped when
they arrive: each value still goes on exactly once) -> ``observe new value`` on state
``"Sequence Window"`` partitioned by parity (keys 0 and 1), which keeps the last four values of
its parity (starting ``[0,0,0,0]``) -> TCP sink writing the window as text ``"[a,b,c,d]"`` framed
with a ``>L`` length.

Any lost, repeated or reordered message shows up as a window that does not step by 2, and the
final windows must be ``[N-6,N-4,N-2,N]`` and ``[N-7,N-5,N-3,N-1]``.

    nfbuilder run apps/sequence_window.py -- --in 127.0.0.1:7010 --out 127.0.0.1:7002

``apps/data/sequence_window.py`` generates 1..1000 and checks the windows.
"""

import struct

import nfbuilder as wallaroo


def application_setup(args: list[str]) -> list[tuple]:
    """Wallaroo entry point: ``application_setup(["prog", "--in", "h:p", "--out", "h:p"])``."""
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    ab = wallaroo.ApplicationBuilder("Sequence Window")
    ab.new_pipeline("Sequence Window", wallaroo.TCPSourceConfig(in_host, in_port, decoder))
    ab.to(maybe_one_to_many)
    ab.to_state_partition(observe_new_value, SequenceWindow, "Sequence Window", partition, [0, 1])
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encoder))
    return ab.build()


class SequenceWindow:
    """The state of one parity: its last four values, oldest first."""

    def __init__(self) -> None:
        self.window = [0, 0, 0, 0]

    def observe(self, value: int) -> None:
        self.window = self.window[1:] + [value]

    def get_window(self) -> list[int]:
        return list(self.window)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs: bytes) -> int:
    return struct.unpack(">Q", bs)[0]


@wallaroo.computation_multi(name="maybe one to many")
def maybe_one_to_many(data: int) -> list[int] | None:
    # Exercises one-to-many and filtering without changing the sequence: 12k carries 12k+1 and
    # 12k+2 too, so those are dropped when they arrive themselves.
    if data >= 12 and data % 12 == 0:
        return [data, data + 1, data + 2]
    if data > 12 and data % 12 in (1, 2):
        return None
    return [data]


@wallaroo.partition
def partition(data: int) -> int:
    return data % 2


@wallaroo.state_computation(name="observe new value")
def observe_new_value(data: int, state: SequenceWindow) -> tuple[list[int], bool]:
    state.observe(data)
    return (state.get_window(), True)


@wallaroo.encoder
def encoder(data: list[int]) -> bytes:
    text = ("[" + ",".join(str(v) for v in data) + "]").encode("ascii")
    return struct.pack(">L", len(text)) + text
