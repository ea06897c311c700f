"""Data generators and validators for the example apps in ``apps/``.

Every module ``apps.data.<app>`` has the same interface, so a harness can drive any app the same
way::

    from apps.data import load
    data = load("reverse")
    msgs = data.inputs(seed=1)                    # per source index, already framed
    argv = data.app_args([("127.0.0.1", 7010)], [("127.0.0.1", 7002)])
    # ... send msgs[i] for i in data.SEND_ORDER, collect the sink's bytes into `raw` ...
    data.validate(data.parse_output(raw), msgs)   # AssertionError says what is wrong

The modules import only the standard library (never the app or nfbuilder), so a validator is an
oracle independent of the code it checks. This package also holds the framing helpers they share.
"""

from __future__ import annotations

import importlib
import struct
from types import ModuleType

#: The app names, i.e. ``apps/<name>.py`` and ``apps/data/<name>.py``.
APPS: tuple[str, ...] = (
    "reverse",
    "celsius",
    "celsius_kafka",
    "alphabet",
    "alphabet_partitioned",
    "word_count",
    "market_spread",
    "sequence_window",
)


def load(app: str) -> ModuleType:
    """The data module of ``app``: ``load("celsius").inputs()``."""
    if app not in APPS:
        raise ValueError(f"unknown example app {app!r}; choose one of {', '.join(APPS)}")
    return importlib.import_module(f"apps.data.{app}")


def frame(payload: bytes, length_fmt: str = ">I") -> bytes:
    """Prefix ``payload`` with its length, as Wallaroo's TCP source expects:
    ``frame(b"abc") == b"\\x00\\x00\\x00\\x03abc"``."""
    return struct.pack(length_fmt, len(payload)) + payload


def split_frames(data: bytes, length_fmt: str = ">I") -> list[bytes]:
    """The payloads of the complete length-prefixed frames in ``data``.

    An incomplete frame at the end (output still arriving) is left out: a validator then reports
    the record as missing. ``split_frames(frame(b"a") + frame(b"bc")) == [b"a", b"bc"]``.
    """
    header = struct.calcsize(length_fmt)
    out: list[bytes] = []
    pos = 0
    while pos + header <= len(data):
        (size,) = struct.unpack_from(length_fmt, data, pos)
        end = pos + header + size
        if end > len(data):
            break
        out.append(data[pos + header : end])
        pos = end
    return out


def split_lines(data: bytes) -> list[bytes]:
    """The newline-terminated records in ``data`` (newline removed); an unterminated last piece
    (output still arriving) is left out. ``split_lines(b"a\\nb\\nc") == [b"a", b"b"]``."""
    pieces = data.split(b"\n")
    return pieces[:-1]


def addr_arg(addrs: list[tuple[str, int]]) -> str:
    """``[("127.0.0.1", 7010), ("127.0.0.1", 7011)]`` -> ``"127.0.0.1:7010,127.0.0.1:7011"``."""
    return ",".join(f"{host}:{port}" for host, port in addrs)


def tcp_app_args(
    in_addrs: list[tuple[str, int]], out_addrs: list[tuple[str, int]], sources: int
) -> list[str]:
    """argv for an app with ``sources`` TCP sources and one TCP sink (Wallaroo's ``--in/--out``).

    ``tcp_app_args([("h", 1)], [("h", 2)], 1) == ["prog", "--in", "h:1", "--out", "h:2"]``.
    """
    if len(in_addrs) != sources:
        raise ValueError(
            f"this app has {sources} TCP source(s) but {len(in_addrs)} --in address(es) were "
            f"given ({in_addrs!r}); pass one (host, port) per source, in declaration order"
        )
    if len(out_addrs) != 1:
        raise ValueError(
            f"this app has one TCP sink but {len(out_addrs)} --out address(es) were given "
            f"({out_addrs!r}); pass exactly one (host, port)"
        )
    return ["prog", "--in", addr_arg(in_addrs), "--out", addr_arg(out_addrs)]


def show(values: object, limit: int = 5) -> str:
    """A short rendering of a collection for error messages (first ``limit`` items)."""
    items = sorted(values, key=repr) if isinstance(values, (set, frozenset)) else list(values)  # type: ignore[call-overload]
    head = ", ".join(repr(v) for v in items[:limit])
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return f"[{head}{more}]"
