"""Signed blobs: an HMAC-SHA256 over each snapshot and recorded outputs a durable store writes.

Both are pickles, and unpickling runs code, so whoever can write the store's database could run
code in every state vertex. With ``NFBUILDER_STATE_KEY`` set (a Kubernetes Secret as env), a
blob is stored as ``b"\\x00nfb1" + HMAC-SHA256(key, record + payload) + payload``, the record
being (namespace, state, key, message id); a blob that is unsigned, altered, signed with another
key or moved to another record is refused before anything unpickles it.

Example::

    seal = Seal(b"secret", shown="sqlite:///s.db", namespace="app")
    blob = seal.sign(b"payload", "counts", "apple")
    seal.check(blob, "counts", "apple")  # b'payload'
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Mapping
from json.encoder import encode_basestring_ascii as _quoted

from nfbuilder.plan.graph import STATE_KEY_ENV as KEY_ENV
from nfbuilder.runtime.state.store import StateStoreError

__all__ = ["KEY_ENV", "PREFIX", "Seal", "StateIntegrityError", "state_key"]

#: what a signed blob starts with: a NUL (no pickle or text starts so) and the format version
PREFIX = b"\x00nfb1"
_MAC_SIZE = 32  # SHA-256


def record(namespace: str, state_name: str, key: str, msg_id: str | None) -> bytes:
    """What a blob's MAC covers besides the blob: ``json.dumps([namespace, state_name, key,
    msg_id])`` (JSON makes it unambiguous, no field can run into the next, and it has no
    newline), built with json's own C string encoder: the same bytes, a quarter of the time
    (one is made per recorded message)."""
    return (_head(namespace, state_name, key) + _tail(msg_id)).encode()


def _head(namespace: str, state_name: str, key: str) -> str:
    """The start of :func:`record`, common to every record of a key."""
    return f"[{_quoted(namespace)}, {_quoted(state_name)}, {_quoted(key)}, "


def _tail(msg_id: str | None) -> str:
    """The end of :func:`record`: the message id (null for a snapshot) and the bracket."""
    return ("null" if msg_id is None else _quoted(msg_id)) + "]"


class StateIntegrityError(StateStoreError):
    """A stored snapshot or recorded outputs failed its signature check and was not loaded."""


def state_key(environ: Mapping[str, str] = os.environ) -> bytes | None:
    """The signing key: ``NFBUILDER_STATE_KEY`` as UTF-8, None when unset or empty.

    The only place that reads the variable. Example::

        state_key({"NFBUILDER_STATE_KEY": "s3cret"})  # b's3cret'
    """
    raw = environ.get(KEY_ENV, "")
    return raw.encode() if raw else None


class Seal:
    """Signs and checks the blobs of one store's namespace; with ``key=None`` blobs pass as
    they are (only a signed one is refused: it needs the key it was written with)."""

    __slots__ = ("_keyed", "_namespace", "_shown")

    def __init__(self, key: bytes | None, *, shown: str, namespace: str) -> None:
        # keyed once: each blob's MAC is a copy of it fed the record and the blob (keying an
        # HMAC costs more than the rest of a small blob's MAC, and a batch makes one per message)
        self._keyed = None if key is None else hmac.new(key, digestmod="sha256")
        self._shown = shown
        self._namespace = namespace

    def sign(self, blob: bytes, state_name: str, key: str, msg_id: str | None = None) -> bytes:
        """``blob`` as stored: signed for this record (``msg_id`` for recorded outputs)."""
        if self._keyed is None:
            return bytes(blob)
        return PREFIX + self._mac(blob, state_name, key, msg_id) + blob

    def sign_outputs(self, outputs: Mapping[str, bytes], ids: Iterable[str], state_name: str,
                     key: str) -> dict[str, bytes]:
        """``{i: sign(outputs.get(i, b""), state_name, key, i)}`` for each of ``ids``, with
        the part of the records common to the key made once (a batch signs one per message)."""
        if self._keyed is None:
            return {i: bytes(outputs.get(i, b"")) for i in ids}
        keyed = self._keyed_for(state_name, key)
        signed = {}
        for msg_id in ids:
            blob = outputs.get(msg_id, b"")
            signed[msg_id] = PREFIX + _finish(keyed, msg_id, blob) + blob
        return signed

    def check(self, blob: bytes, state_name: str, key: str, msg_id: str | None = None) -> bytes:
        """The payload of a stored ``blob``, or StateIntegrityError if it may not be loaded."""
        signed = blob.startswith(PREFIX)
        if self._keyed is None:
            if signed:
                raise self._refused(state_name, key, msg_id, (
                    f"it is signed, but {KEY_ENV} is not set; set it to the key the store was "
                    "written with"))
            return blob
        if not signed:
            raise self._refused(state_name, key, msg_id, (
                f"it is not signed (written without {KEY_ENV}, or by someone else); if the "
                f"store was written before {KEY_ENV} was set, start over with an empty store "
                "(nfbuilder run --fresh, or delete this namespace's keys)"))
        mac, payload = blob[len(PREFIX):len(PREFIX) + _MAC_SIZE], blob[len(PREFIX) + _MAC_SIZE:]
        if not hmac.compare_digest(mac, self._mac(payload, state_name, key, msg_id)):
            raise self._refused(state_name, key, msg_id, (
                f"its signature does not match: {KEY_ENV} changed since it was written, or the "
                "bytes were altered or copied from another record; restore the key it was "
                "written with, or start over with an empty store (nfbuilder run --fresh, or "
                "delete this namespace's keys)"))
        return payload

    def _mac(self, payload: bytes, state_name: str, key: str, msg_id: str | None) -> bytes:
        assert self._keyed is not None
        return _finish(self._keyed_for(state_name, key), msg_id, payload)

    def _keyed_for(self, state_name: str, key: str) -> hmac.HMAC:
        """The keyed MAC fed the part of every record of this key (a batch copies it once per
        message instead of feeding the key's part each time)."""
        assert self._keyed is not None
        keyed = self._keyed.copy()
        keyed.update(PREFIX + _head(self._namespace, state_name, key).encode())
        return keyed

    def _refused(self, state_name: str, key: str, msg_id: str | None,
                 why: str) -> StateIntegrityError:
        what = "snapshot" if msg_id is None else f"recorded outputs of message {msg_id!r}"
        return StateIntegrityError(
            f"state store {self._shown}: refusing to load the {what} of state {state_name!r} "
            f"key {key!r}: {why}"
        )


def _finish(keyed: hmac.HMAC, msg_id: str | None, payload: bytes) -> bytes:
    """The MAC of ``PREFIX + record + "\\n" + payload``, from ``keyed`` (:meth:`Seal._keyed_for`
    of the record's key), which stays as it was."""
    mac = keyed.copy()
    mac.update(_tail(msg_id).encode() + b"\n" + payload)
    return mac.digest()
