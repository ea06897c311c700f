"""Conversions between wire messages and the plain types of :mod:`nfbuilder.runtime.messages`.

These run once per message, so they avoid copies where a read-only view will do.

Example::

    datum = map_datum(request)          # map_pb2.MapRequest -> Datum
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from google.protobuf import timestamp_pb2

from nfbuilder._proto import map_pb2, metadata_pb2, sourcetransform_pb2
from nfbuilder.runtime.messages import (
    NO_METADATA,
    Datum,
    FrozenMetadata,
    Output,
    Result,
    UserMetadata,
)

_NS = 1_000_000_000


def to_ns(timestamp: timestamp_pb2.Timestamp) -> int:
    """Nanoseconds since the epoch of a protobuf Timestamp."""
    return timestamp.seconds * _NS + timestamp.nanos


def to_timestamp(ns: int) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp for ``ns`` nanoseconds since the epoch (negative allowed)."""
    return timestamp_pb2.Timestamp(seconds=ns // _NS, nanos=ns % _NS)


class _WireUserMetadata(Mapping[str, Mapping[str, bytes]]):
    """A request's user metadata, read from the wire message when first looked at: most
    vertices serve one pipeline and never look (the multi-pipeline ones read the marker)."""

    __slots__ = ("_groups", "_plain")

    def __init__(self, groups: Any) -> None:
        self._groups = groups
        self._plain: dict[str, dict[str, bytes]] | None = None

    def _read(self) -> dict[str, dict[str, bytes]]:
        if self._plain is None:
            self._plain = {name: dict(g.key_value) for name, g in self._groups.items()}
        return self._plain

    def __getitem__(self, name: str) -> Mapping[str, bytes]:
        return self._read()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._groups)

    def __repr__(self) -> str:
        return repr(self._read())


def read_user_metadata(request: Any) -> UserMetadata:
    """The request's user metadata, a read-only mapping of plain dicts read on first use (the
    shared empty mapping when absent)."""
    if not request.HasField("metadata"):
        return NO_METADATA
    groups = request.metadata.user_metadata
    if not groups:
        return NO_METADATA
    return _WireUserMetadata(groups)


def write_metadata(user_metadata: UserMetadata) -> metadata_pb2.Metadata | None:
    """Wire metadata for a result's user metadata; None (field unset) when there is none.

    The message built for a :class:`FrozenMetadata` is cached and shared: copy it into the
    response (a constructor argument or ``CopyFrom`` does), never change it in place.
    """
    if type(user_metadata) is FrozenMetadata:  # checked first: the common case
        return _frozen_metadata(user_metadata)
    if not user_metadata:
        return None
    return _metadata(user_metadata)


@functools.lru_cache(maxsize=256)
def _frozen_metadata(user_metadata: FrozenMetadata) -> metadata_pb2.Metadata | None:
    # A vertex stamps the same few FrozenMetadata on every result: build each wire form once.
    return _metadata(user_metadata) if user_metadata else None


def _metadata(user_metadata: UserMetadata) -> metadata_pb2.Metadata:
    return metadata_pb2.Metadata(
        user_metadata={
            name: metadata_pb2.KeyValueGroup(key_value=values)
            for name, values in user_metadata.items()
        }
    )


def add_map_results(results: Any, handler_results: Sequence[Result]) -> None:
    """Append ``handler_results`` to a response's repeated ``results`` field.

    Builds each wire result in place (``results.add``) and sets only the fields that are not
    empty: the per-message hot path of a map vertex, cheaper than constructing each result and
    copying it into the response. The results of a message mostly share one metadata object:
    its wire form is looked up once.
    """
    add = results.add
    last: UserMetadata | None = None
    wired: metadata_pb2.Metadata | None = None
    for result in handler_results:
        wire = add(value=result.value)
        if result.keys:
            wire.keys.extend(result.keys)
        if result.tags:
            wire.tags.extend(result.tags)
        meta = result.user_metadata
        if meta is not last:
            last, wired = meta, write_metadata(meta)
        if wired is not None:
            wire.metadata.CopyFrom(wired)


def add_outputs(results: Any, outputs: Sequence[Output],
                metadata: metadata_pb2.Metadata | None) -> None:
    """Append ``outputs`` (a :data:`~nfbuilder.runtime.messages.PayloadFn`'s) to a response's
    repeated ``results`` field, each with the wire ``metadata`` (from :func:`write_metadata`;
    None: none), as :func:`add_map_results` writes the same Results."""
    add = results.add
    for value, keys, tags, _ in outputs:
        wire = add(value=value)
        if keys:
            wire.keys.extend(keys)
        if tags:
            wire.tags.extend(tags)
        if metadata is not None:
            wire.metadata.CopyFrom(metadata)


def _datum(ident: str, request: Any) -> Datum:
    keys = request.keys
    event_time = request.event_time
    return Datum(
        ident,
        tuple(keys) if keys else (),  # iterating an empty repeated field is not free
        request.value,
        event_time.seconds * _NS + event_time.nanos,
        to_ns(request.watermark) if request.HasField("watermark") else None,
        request.headers,
        read_user_metadata(request),
    )


def map_datum(request: map_pb2.MapRequest) -> Datum:
    """The Datum for a map data request (id from ``request.id``)."""
    return _datum(request.id, request.request)


def transform_datum(request: sourcetransform_pb2.SourceTransformRequest) -> Datum:
    """The Datum for a transformer data request (id from ``request.request.id``)."""
    return _datum(request.request.id, request.request)
