"""`redis://` and `rediss://`: the state store for Kubernetes deployments.

Each (namespace, state name, key) is one hash ``nfbuilder:{namespace}:{state}:{key}`` with the
fields ``data`` (snapshot bytes) and ``ids`` (JSON list of applied message ids). A save is ONE Lua
script that reads the old ids, merges the new ones and writes both fields with one HSET, so no
reader ever sees new data with old ids. redis-py's Script object runs it with EVALSHA and reloads
it on NOSCRIPT (after a server restart).

Connection failures (server restarting, failover, network blip) are retried with exponential
backoff until the store's timeout (default 30 s), then StateStoreError is raised. Retrying a save
is safe even when the lost reply hid a successful write: the merge is idempotent. A save returns
only after Redis answered the script, so success is never reported for a write that did not run.
``ns`` and ``state`` have ``%`` and ``:`` percent-encoded in the hash name so that distinct
(namespace, state, key) triples never share a hash. ``data`` and the ``o:<id>`` outputs are
signed with ``NFBUILDER_STATE_KEY`` when it is set (see :mod:`.signing`): anyone who can write
the database must not be able to run code in the vertices. Opening warns when Redis keeps
nothing on disk (``save ''`` and ``appendonly no``): every state would reset on its restart.

Example::

    store = RedisStore.open("redis://:secret@redis:6379/0", namespace="app")
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast
from urllib.parse import urlsplit

from nfbuilder.runtime.state.signing import Seal
from nfbuilder.runtime.state.store import (
    DEFAULT_ID_RETENTION_S,
    DEFAULT_ID_WINDOW,
    DEFAULT_TIMEOUT_S,
    Fence,
    Save,
    Snapshot,
    StateStoreError,
    fenced,
    mask_url,
    timed_snapshot,
)

if TYPE_CHECKING:  # imported on first use (RedisStore.open): the 'redis' extra is optional
    import redis

log = logging.getLogger("nfbuilder.state")

T = TypeVar("T")

# KEYS[1]: the hash; KEYS[2]: the sorted set of the ids kept, scored by the time they were saved
# at; ARGV[1]: data; ARGV[2]: id window; ARGV[3]: n, the number of new ids; ARGV[4]: now;
# ARGV[5]: horizon (ids saved after it are kept whatever the window); ARGV[6]: the epoch the save
# is fenced by ('' for none), checked against KEYS[3]; ARGV[7 .. 6+n]: new ids, oldest first;
# ARGV[7+n ..]: pairs (id, outputs) to keep beside them. The count window (JSON in
# field 'ids') follows store.merge_ids; an id leaves (with its outputs, fields 'o:<id>') once it
# is out of the window and saved at or before the horizon. Everything is read before the writes,
# because Redis does not roll back a script that fails halfway: a script error must leave the
# state untouched.
_SAVE_LUA = """
local window = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local horizon = tonumber(ARGV[5])
if ARGV[6] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[6] then
  return redis.error_reply('FENCED')
end
local combined = {}
local stored = redis.call('HGET', KEYS[1], 'ids')
if stored then
  for _, id in ipairs(cjson.decode(stored)) do combined[#combined + 1] = id end
end
for i = 7, 6 + n do combined[#combined + 1] = ARGV[i] end
local newest_first, seen = {}, {}
for i = #combined, 1, -1 do
  local id = combined[i]
  if not seen[id] then
    seen[id] = true
    if #newest_first < window then newest_first[#newest_first + 1] = id end
  end
end
local kept, keep = {}, {}
for i = #newest_first, 1, -1 do
  kept[#kept + 1] = newest_first[i]
  keep[newest_first[i]] = true
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
local encoded = '[]'
if #kept > 0 then encoded = cjson.encode(kept) end
local fields = {'data', ARGV[1], 'ids', encoded}
for i = 7 + n, #ARGV, 2 do
  if now > horizon or keep[ARGV[i]] then
    fields[#fields + 1] = 'o:' .. ARGV[i]
    fields[#fields + 1] = ARGV[i + 1]
  end
end
redis.call('HSET', KEYS[1], unpack(fields))
for i = 7, 6 + n do
  if now > horizon or keep[ARGV[i]] then redis.call('ZADD', KEYS[2], now, ARGV[i]) end
end
local dropped, gone = {}, {}
for _, id in ipairs(expired) do
  if not keep[id] then dropped[#dropped + 1] = 'o:' .. id; gone[#gone + 1] = id end
end
if #dropped > 0 then
  redis.call('HDEL', KEYS[1], unpack(dropped))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
return #kept
"""

class _Errors(NamedTuple):
    """redis-py's exception classes, sorted by what a failed call should do next."""

    transient: tuple[type[Exception], ...]  # retry: the same command may succeed later
    permanent: tuple[type[Exception], ...]  # give up now, with a hint about credentials
    any: type[Exception]  # every other redis-py error: give up now


def _import_redis(shown: str) -> ModuleType:
    """The redis-py package, or StateStoreError saying how to install it."""
    try:
        import redis
        import redis.backoff
        import redis.retry
    except ImportError:
        raise StateStoreError(
            f"Redis state store {shown} needs the redis package, which is not installed: "
            "pip install 'nfbuilder[redis]' (or use a sqlite:/// store)"
        ) from None
    return redis


@functools.cache
def _errors() -> _Errors:
    """redis-py's errors by kind, looked up once redis is known to be installed."""
    import redis

    return _Errors(
        # the server is restarting, loading its AOF, failing over, or the network dropped
        transient=(
            redis.ConnectionError,
            redis.TimeoutError,
            redis.exceptions.ReadOnlyError,
            redis.exceptions.TryAgainError,
            redis.exceptions.ClusterDownError,
        ),
        # authentication problems are not transient
        permanent=(redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError),
        any=redis.RedisError,
    )


_OPEN_PING_TIMEOUT_S = 2.0
_MAX_BACKOFF_S = 1.0


def hash_name(namespace: str, state_name: str, key: str) -> str:
    """The Redis hash holding one key's snapshot.

    Example::

        hash_name("app", "counts", "user:1")  # 'nfbuilder:app:counts:user:1'
    """
    return f"nfbuilder:{_escape(namespace)}:{_escape(state_name)}:{key}"


def fence_name(namespace: str, state_name: str, partition: int) -> str:
    """The counter of the claims on one partition of a state (its newest epoch)."""
    return f"nfbuilder-fence:{_escape(namespace)}:{_escape(state_name)}:{partition}"


def times_name(namespace: str, state_name: str, key: str) -> str:
    """The sorted set of the ids one key keeps, by the time they were saved at:
    ``times_name("app", "counts", "user:1")`` -> ``'nfbuilder-ids:app:counts:user:1'``."""
    return "nfbuilder-ids" + hash_name(namespace, state_name, key)[len("nfbuilder"):]


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace(":", "%3A")


class RedisStore:
    """A :class:`~nfbuilder.runtime.state.store.StateStore` in Redis (redis-py client)."""

    durable = True

    def __init__(
        self,
        client: redis.Redis,
        *,
        url: str,
        namespace: str,
        id_window: int = DEFAULT_ID_WINDOW,
        id_retention_s: float = DEFAULT_ID_RETENTION_S,
        timeout: float = DEFAULT_TIMEOUT_S,
        signing_key: bytes | None = None,
    ) -> None:
        self.url_for_display = mask_url(url)
        self.namespace = namespace
        self.id_window = id_window
        self.id_retention_s = id_retention_s
        self.timeout = timeout
        self._client = client
        self._errors = _errors()
        self._save_script = client.register_script(_SAVE_LUA)
        self._seal = Seal(signing_key, shown=self.url_for_display, namespace=namespace)
        parts = urlsplit(url)
        self._address = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"

    @classmethod
    def open(
        cls,
        url: str,
        *,
        namespace: str,
        id_window: int = DEFAULT_ID_WINDOW,
        id_retention_s: float = DEFAULT_ID_RETENTION_S,
        timeout: float = DEFAULT_TIMEOUT_S,
        signing_key: bytes | None = None,
    ) -> RedisStore:
        """Connect to `url` and PING it once, failing fast with StateStoreError if unreachable;
        with `signing_key` its blobs are signed and checked (:class:`.signing.Seal`)."""
        shown = mask_url(url)
        redis_py = _import_redis(shown)
        try:
            client = redis_py.Redis.from_url(
                url,
                socket_connect_timeout=min(timeout, _OPEN_PING_TIMEOUT_S),
                socket_timeout=min(timeout, 5.0),
                # Our own loop retries until `timeout`; redis-py's retries would only add delay.
                retry=redis_py.retry.Retry(redis_py.backoff.NoBackoff(), 0),
            )
        except ValueError as exc:
            raise StateStoreError(
                f"invalid Redis state store URL {shown}: {exc}; "
                f"use redis://[user:password@]host:port/db or rediss://..."
            ) from exc
        if client.get_connection_kwargs().get("decode_responses"):
            client.close()
            raise StateStoreError(
                f"Redis state store URL {shown} sets decode_responses, but snapshots are binary; "
                f"remove decode_responses from the URL"
            )
        store = cls(client, url=url, namespace=namespace, id_window=id_window,
                    id_retention_s=id_retention_s, timeout=timeout, signing_key=signing_key)
        try:
            client.ping()
        except store._errors.any as exc:
            client.close()
            raise store._error("connect to", exc, retried=False) from exc
        store._warn_without_persistence()
        return store

    def _warn_without_persistence(self) -> None:
        """Warn when the server keeps nothing on disk: its restart would reset every state."""
        try:
            save = self._client.config_get("save").get("save", "")
            appendonly = self._client.config_get("appendonly").get("appendonly", "")
        except self._errors.any as exc:  # CONFIG refused by an ACL or renamed (managed Redis)
            log.debug("state store %s: cannot read CONFIG (%s); persistence not checked",
                      self.url_for_display, exc)
            return
        if not save and appendonly == "no":
            log.warning(
                "state store %s: Redis persistence is off (save '' and appendonly no): every "
                "state resets when redis-server restarts; set appendonly yes (or a save "
                "schedule) in its configuration", self.url_for_display,
            )

    def load(self, state_name: str, key: str) -> Snapshot | None:
        name = hash_name(self.namespace, state_name, key)
        times = times_name(self.namespace, state_name, key)

        def read() -> list[Any]:
            # one MULTI/EXEC: the hash and the times as one save left them, even when another
            # process's save of the key lands between the two reads
            pipe = self._client.pipeline(transaction=True)
            pipe.hgetall(name)
            pipe.zrange(times, 0, -1, withscores=True)
            return cast("list[Any]", pipe.execute())

        found, scored = self._retrying(f"load state {state_name!r} key {key!r} from", read)
        # open() refuses decode_responses, so field names and values are bytes (redis-py types
        # them as ``bytes | str`` because it cannot know).
        fields = cast("dict[bytes, bytes]", found)
        data = fields.get(b"data")
        if data is None:
            return None
        assert isinstance(data, bytes)
        check = self._seal.check
        data = check(data, state_name, key)
        outputs = {
            k[2:].decode(): v for k, v in fields.items() if k.startswith(b"o:")
        }
        ids = [(m.decode(), float(t)) for m, t in scored]
        rows = [(i, check(outputs[i], state_name, key, i) if i in outputs else b"", t)
                for i, t in ids]
        return timed_snapshot(data, json.loads(fields.get(b"ids") or b"[]"), rows)

    def save_many(self, saves: Sequence[Save], fence: Fence | None = None) -> None:
        for save in saves:  # each key atomically, as save() does it
            self.save(*save, fence=fence)

    def save(
        self,
        state_name: str,
        key: str,
        data: bytes,
        applied_ids: Sequence[str],
        outputs: Mapping[str, bytes] | None = None,
        fence: Fence | None = None,
    ) -> None:
        name = hash_name(self.namespace, state_name, key)
        sign = self._seal.sign
        now = time.time()  # fixed before the retries: a retried save merges the same
        args: list[bytes | str | int | float] = [
            sign(data, state_name, key), self.id_window, len(applied_ids), repr(now),
            repr(now - self.id_retention_s), str(fence[1]) if fence else "", *applied_ids]
        fence_key = fence_name(self.namespace, state_name, fence[0] if fence else 0)
        for msg_id, blob in (outputs or {}).items():
            args += [msg_id, sign(blob, state_name, key, msg_id)]
        self._retrying(
            f"save state {state_name!r} key {key!r} to",
            lambda: self._fenced(
                lambda: self._save_script(
                    keys=[name, times_name(self.namespace, state_name, key), fence_key],
                    args=args),
                state_name, key, fence),
        )

    def claim(self, state_name: str, partition: int) -> int:
        name = fence_name(self.namespace, state_name, partition)
        return int(cast(int, self._retrying(
            f"claim partition {partition} of state {state_name!r} in",
            lambda: self._client.incr(name))))

    def _fenced(self, call: Callable[[], T], state_name: str, key: str,
                fence: Fence | None) -> T:
        """``call()``, with the script's FENCED refusal as a :class:`FencedError`."""
        try:
            return call()
        except self._errors.any as exc:
            if fence is not None and "FENCED" in str(exc):
                raise fenced(self.url_for_display, state_name, key, fence) from None
            raise

    def count(self) -> int:
        return len(self._names())

    def clear(self) -> int:
        names = self._names()
        others = [*self._names("nfbuilder-ids"), *self._names("nfbuilder-fence")]
        if names or others:
            self._retrying("clear", lambda: self._client.delete(*names, *others))
        return len(names)

    def _names(self, prefix: str = "nfbuilder") -> list[bytes]:
        """Every snapshot hash (or id set) of this namespace (SCAN: does not block the
        server)."""
        # the namespace is the app's slug ([a-z0-9-]): nothing in it is a glob character
        pattern = f"{prefix}:{_escape(self.namespace)}:*"
        return cast("list[bytes]", self._retrying(
            "list the keys of", lambda: list(self._client.scan_iter(match=pattern, count=500))))

    def close(self) -> None:
        self._client.close()

    def _retrying(self, action: str, call: Callable[[], T]) -> T:
        errors = self._errors
        deadline = time.monotonic() + self.timeout
        delay = 0.02
        failures = 0
        while True:
            try:
                result = call()
            except errors.permanent as exc:
                raise self._error(action, exc, retried=False) from exc
            except errors.transient as exc:
                failures += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._error(action, exc, retried=True) from exc
                if failures == 1:
                    log.warning(
                        "state store %s: cannot %s it (%s); retrying for up to %g s",
                        self.url_for_display, action, exc, self.timeout,
                    )
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, _MAX_BACKOFF_S)
                continue
            except errors.any as exc:
                raise self._error(action, exc, retried=False) from exc
            if failures:
                log.warning(
                    "state store %s: recovered after %d failed attempts", self.url_for_display,
                    failures,
                )
            return result

    def _error(self, action: str, exc: Exception, *, retried: bool) -> StateStoreError:
        if isinstance(exc, self._errors.permanent):
            hint = "check the user and password in the store URL (or its Secret)"
        elif isinstance(exc, self._errors.transient):
            hint = f"is redis-server running at {self._address} and reachable from here?"
        else:
            hint = "check the Redis server's log and configuration"
        after = f" (still failing after retrying for {self.timeout:g} s)" if retried else ""
        return StateStoreError(
            f"cannot {action} Redis state store {self.url_for_display}{after}: "
            f"{type(exc).__name__}: {str(exc).rstrip('.')}; {hint}"
        )
