"""Reading and checking a UDF's server-info file exactly as `numa` v1.8.3 does.

A vertex process announces itself by writing ``<kind>-server-info``: one JSON object followed by
the 13-byte marker ``U+005C__END__``. That is the literal ASCII text (the Unicode name of a
backslash spelled out), exactly as numa, pynumaflow and every other SDK write and compare it; a
real backslash followed by ``__END__`` is NOT accepted by numa. Before it dials the socket, `numa`
waits for the file, checks the marker, parses the JSON and applies two version checks (contract
§1.3/§1.4).
The embedded engine does the same, so a server that passes here passes in a real pod.

    info = await wait_server_info(sock_dir / "mapper-server-info", poll_s=0.05)
    info.map_mode        # "unary-map"
    info.supports_nack   # True for a Python SDK >= 0.11.0
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from packaging.version import InvalidVersion, Version

#: The literal end-of-file marker, 13 ASCII bytes (not a backslash: numa compares this text).
END_MARKER = b"U+005C__END__"
#: The engine release our local data plane claims to be (checked against minimum_numaflow_version).
ENGINE_VERSION = "1.8.3"
#: numa re-reads a file that lacks the marker this many times, this far apart.
MARKER_ATTEMPTS = 10
MARKER_RETRY_S = 0.1

MAP_MODES = frozenset({"unary-map", "batch-map", "stream-map"})
KNOWN_LANGUAGES = frozenset({"go", "python", "java", "rust"})

# The engine's minimum SDK version per (language, container type), v1.8.x. Python values are PEP 440
# ("rc100" makes every real pre-release of that version fail while the stable one passes); the
# others are semver.
_STANDARD = ("sourcer", "sourcetransformer", "sinker", "fb-sinker", "mapper", "sideinput",
             "reducer", "reducestreamer", "sessionreducer")
_SDK_MINIMUMS: dict[str, dict[str, str]] = {
    "python": {**dict.fromkeys(_STANDARD, "0.9.0rc100"),
               "accumulator": "0.10.0rc100", "ons-sinker": "0.11.1rc100"},
    "go": {**dict.fromkeys(_STANDARD, "0.9.0"), "accumulator": "0.10.0", "ons-sinker": "0.10.2"},
    "java": {**dict.fromkeys(_STANDARD, "0.9.0"), "accumulator": "0.10.0", "ons-sinker": "0.10.2"},
    "rust": {**dict.fromkeys(_STANDARD, "0.2.0"), "accumulator": "0.3.0", "ons-sinker": "0.4.0"},
}
# NackFn is only called when the SDK is at least this version (otherwise numa silently skips it).
_NACK_MINIMUMS = {"python": "0.11.0rc100", "go": "0.11.0", "java": "0.11.0", "rust": "0.4.0"}


class ServerInfoError(Exception):
    """A server-info file that numa would refuse: missing, truncated, malformed or too new/old.

    The message names the file, the failed check, what was found and what to do.
    """


@attrs.frozen
class ServerInfo:
    """The parsed, checked content of one server-info file.

        info = parse_server_info(raw, "mapper")
        if info.protocol == "uds": ...
    """

    container_type: str
    protocol: str                      # "uds" or "tcp" (anything but "tcp" means uds, like numa)
    language: str                      # lower-cased; "" or an unknown name skips the SDK check
    version: str
    minimum_numaflow_version: str
    metadata: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    supports_nack: bool = False
    map_mode: str = "unary-map"


def container_type_of(path: str | os.PathLike[str]) -> str:
    """The ContainerType numa derives from an info file's name (``mapper-server-info`` ->
    ``mapper``).

        container_type_of("/var/run/numaflow/fb-sinker-server-info")  # "fb-sinker"
    """
    name = Path(path).name
    suffix = "-server-info"
    return name[: -len(suffix)] if name.endswith(suffix) else "unknown"


async def wait_server_info(
    path: str | os.PathLike[str],
    *,
    poll_s: float = 1.0,
    deadline_s: float | None = None,
    engine_version: str = ENGINE_VERSION,
    marker_retry_s: float = MARKER_RETRY_S,
) -> ServerInfo:
    """Wait for a server-info file, then read and check it as numa does (contract §1.4).

    Polls every ``poll_s`` until the file exists and is non-empty (numa: 1 s, no timeout; give
    ``deadline_s`` to bound the wait), then requires the end marker, re-reading up to 10 times
    ``marker_retry_s`` apart because writers are allowed to write the file non-atomically.

        info = await wait_server_info(tmp / "sinker-server-info", poll_s=0.05, deadline_s=30)
    """
    file = Path(path)
    started = time.monotonic()
    while True:
        try:
            # A stat of a local file between polls: cheap enough to run on the loop.
            if file.stat().st_size > 0:  # noqa: ASYNC240
                break
        except FileNotFoundError:
            pass
        if deadline_s is not None and time.monotonic() - started >= deadline_s:
            raise ServerInfoError(
                f"server-info file {file} did not appear (or stayed empty) within {deadline_s} s; "
                "check that the vertex process started, that it serves the container kind "
                f"{container_type_of(file)!r} and look at its log for a start-up error"
            )
        await asyncio.sleep(poll_s)

    raw = b""
    for attempt in range(MARKER_ATTEMPTS):
        raw = await asyncio.to_thread(file.read_bytes)
        if raw.endswith(END_MARKER):
            break
        if attempt + 1 < MARKER_ATTEMPTS:
            await asyncio.sleep(marker_retry_s)
    return parse_server_info(raw, container_type_of(file), source=str(file),
                             engine_version=engine_version)


def parse_server_info(
    raw: bytes,
    container_type: str,
    *,
    source: str = "<server-info>",
    engine_version: str = ENGINE_VERSION,
) -> ServerInfo:
    """Parse a whole server-info file (JSON + marker) and apply numa's checks.

    ``container_type`` selects the SDK minimum-version row (numa takes it from the file name, see
    :func:`container_type_of`); ``source`` names the file in error messages.

        parse_server_info(b'{"language": "python", "version": "0.14.0"}U+005C__END__', "mapper")
    """
    where = f"server-info file {source}"
    if not raw.endswith(END_MARKER):
        tail = raw[-20:]
        raise ServerInfoError(
            f"{where}: missing the end marker {END_MARKER.decode()!r} after {MARKER_ATTEMPTS} "
            f"reads ({len(raw)} bytes, ending in {tail!r}); the server must write the JSON object "
            "followed directly by the 13-byte marker, with nothing after it"
        )
    body = raw[: -len(END_MARKER)]
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ServerInfoError(
            f"{where}: the content before the end marker is not valid JSON ({exc}); "
            f"received {body[:80]!r}"
        ) from None
    if not isinstance(data, dict):
        raise ServerInfoError(
            f"{where}: expected a JSON object, received {type(data).__name__} {body[:80]!r}"
        )
    protocol = _string_field(data, "protocol", where)
    language = _string_field(data, "language", where).lower()
    version = _string_field(data, "version", where)
    minimum = _string_field(data, "minimum_numaflow_version", where)
    metadata = _metadata_field(data.get("metadata"), where)

    if minimum:
        _check_engine_version(engine_version, minimum, where)
    if language in KNOWN_LANGUAGES and version:
        _check_sdk_version(language, version, container_type, where)

    mode = metadata.get("MAP_MODE", "unary-map")
    return ServerInfo(
        container_type=container_type,
        protocol="tcp" if protocol == "tcp" else "uds",
        language=language,
        version=version,
        minimum_numaflow_version=minimum,
        metadata=metadata,
        supports_nack=_supports_nack(language, version),
        map_mode=mode if mode in MAP_MODES else "unary-map",
    )


def _string_field(data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if value is None:
        return ""  # numa: every field has a default
    if not isinstance(value, str):
        raise ServerInfoError(
            f"{where}: {key!r} must be a JSON string, received {type(value).__name__} {value!r}"
        )
    return value


def _metadata_field(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ServerInfoError(
            f"{where}: 'metadata' must be an object of string to string, "
            f"received {type(value).__name__} {value!r}"
        )
    for key, item in value.items():
        if not isinstance(item, str):
            raise ServerInfoError(
                f"{where}: metadata value for {key!r} must be a JSON string, received "
                f"{type(item).__name__} {item!r}; numa cannot parse such a file (quote the value)"
            )
    return dict(value)


def _check_engine_version(engine_version: str, minimum: str, where: str) -> None:
    if engine_version == "latest":
        return  # numa skips the check for dev builds
    try:
        ok = _semver_key(engine_version) >= _semver_key(minimum)
    except ValueError:
        raise ServerInfoError(
            f"{where}: minimum_numaflow_version {minimum!r} is not a semantic version "
            "(expected e.g. '1.4.0-z')"
        ) from None
    if not ok:
        raise ServerInfoError(
            f"{where}: the server requires numaflow >= {minimum!r} but this engine is "
            f"{engine_version}; numaflow version {engine_version} must be upgraded, or the server "
            "must declare a lower minimum_numaflow_version"
        )


def _check_sdk_version(language: str, version: str, container_type: str, where: str) -> None:
    minimum = _SDK_MINIMUMS[language].get(container_type)
    if minimum is None:
        raise ServerInfoError(
            f"{where}: no {language} SDK version constraint for container type "
            f"{container_type!r} (numa derives it from the file name); name the file "
            "'<type>-server-info' with a known type such as mapper, sinker or sourcer"
        )
    try:
        ok = _sdk_at_least(language, version, minimum)
    except ValueError:
        standard = "PEP 440" if language == "python" else "semantic"
        raise ServerInfoError(
            f"{where}: {language} SDK version {version!r} is not a {standard} version; "
            "numa refuses a version it cannot parse (write e.g. '0.14.0')"
        ) from None
    if not ok:
        raise ServerInfoError(
            f"{where}: {language} SDK version {version!r} is below the minimum {minimum!r} "
            f"for container type {container_type!r}; upgrade the SDK or report a newer version"
        )


def _sdk_at_least(language: str, version: str, minimum: str) -> bool:
    """PEP 440 for Python, semver (leading ``v`` stripped) for the other SDKs.

    Raises ValueError for a version that does not parse (numa treats that as fatal).
    """
    if language == "python":
        try:
            return Version(version) >= Version(minimum)
        except InvalidVersion:
            raise ValueError(version) from None
    return _semver_key(version.removeprefix("v")) >= _semver_key(minimum)


def _supports_nack(language: str, version: str) -> bool:
    if language not in _NACK_MINIMUMS or not version:
        return False
    try:
        return _sdk_at_least(language, version, _NACK_MINIMUMS[language])
    except ValueError:
        return False


_SEMVER = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")


def _semver_key(text: str) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
    """Sort key following semver precedence: ``1.4.0-rc1 < 1.4.0-z < 1.4.0 < 1.5.0-rc1``.

    The ``-z`` convention relies on this: ``z`` sorts after every usual pre-release tag of that
    version, so ``>= 1.4.0-z`` accepts 1.4.0 and later pre-releases but not 1.4.0's own.
    """
    match = _SEMVER.match(text.strip())
    if match is None:
        raise ValueError(text)
    major, minor, patch, pre = match.groups()
    if pre is None:
        return int(major), int(minor), int(patch), 1, ()
    parts = tuple(
        (0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")
    )
    return int(major), int(minor), int(patch), 0, parts
