"""Check a Pipeline object against Numaflow's v1.8.3 CRD schema, as the API server does.

jsonschema (Draft 4) covers types, enums, ``required``, patterns and int-or-string; a second walk
over the instance alongside the schema adds what a Kubernetes structural schema does beyond JSON
Schema: unknown fields (which ``kubectl --validate=strict`` rejects and the API server otherwise
prunes silently), int32/int64 ranges and ``x-kubernetes-list-type`` uniqueness.

Call ``check_schema(manifest)``; the result is a list of ``(path, message)`` issues::

    >>> check_schema({"apiVersion": "numaflow.numaproj.io/v1alpha1", "kind": "Pipeline",
    ...               "metadata": {"name": "p"},
    ...               "spec": {"vertices": [{"name": "a", "colour": 1}]}})
    [('spec.vertices[0].colour', "unknown field 'colour' ...")]
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported on first use: the 'validate' extra is optional
    import jsonschema

SCHEMA_FILE = Path(__file__).parent / "data" / "pipeline-crd-v1.8.3.schema.json"
SCHEMA_NAME = "Numaflow v1.8.3 Pipeline CRD schema"

Issue = tuple[str, str]
"""A finding before it is tied to a document: (path, message)."""


class MissingDependencyError(ImportError):
    """An optional package needed for this check is not installed; ``str()`` says what to
    install, e.g. ``pip install 'nfbuilder[validate]'``."""


_INT_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
}

# Root `metadata` is a bare object in the CRD: the API server validates it as ObjectMeta instead.
_OBJECT_META_FIELDS = frozenset({
    "name", "generateName", "namespace", "labels", "annotations", "finalizers",
    "ownerReferences", "uid", "resourceVersion", "generation", "creationTimestamp",
    "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink",
})


def at(base: str, key: str | int) -> str:
    """Extend a dotted path: ``at("spec.vertices", 2) == "spec.vertices[2]"``."""
    if isinstance(key, int):
        return f"{base}[{key}]"
    return f"{base}.{key}" if base else key


def _path_of(parts: Iterable[Any]) -> str:
    path = ""
    for part in parts:
        path = at(path, part)
    return path


@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The CRD's openAPIV3Schema as a dict, read from the packaged data file on first use."""
    with SCHEMA_FILE.open(encoding="utf-8") as f:
        schema: dict[str, Any] = json.load(f)
    return schema


@functools.lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft4Validator:
    try:
        import jsonschema
    except ImportError:
        raise MissingDependencyError(
            "checking a manifest against the Numaflow CRD schema needs the jsonschema package, "
            "which is not installed: pip install 'nfbuilder[validate]'"
        ) from None
    # No check_schema(): the file is a fixed, known-good structural schema; checking costs time.
    return jsonschema.Draft4Validator(load_schema())


def check_schema(manifest: dict[str, Any]) -> list[Issue]:
    """Validate one Pipeline dict against the CRD schema; returns ``(path, message)`` issues."""
    issues: list[Issue] = []
    for err in sorted(_validator().iter_errors(manifest), key=lambda e: _path_of(e.absolute_path)):
        issues.append((_path_of(err.absolute_path), _describe(err)))
    _walk(manifest, load_schema(), "", issues)
    return issues


def _describe(err: jsonschema.ValidationError) -> str:
    """Rephrase a jsonschema error as: what is wrong, the value, what to do."""
    value = _short(err.instance)
    if err.validator == "anyOf" and _is_int_or_string(err.schema):
        return (f"value {value} must be an integer or a string ({SCHEMA_NAME}); "
                "write a number or a quoted string such as \"25%\" or \"1Gi\"")
    if err.validator == "required":
        return f"{err.message} ({SCHEMA_NAME}); add it"
    if err.validator == "type":
        return (f"value {value} has the wrong type: the schema expects {err.validator_value} "
                f"({SCHEMA_NAME}); write a value of type {err.validator_value}")
    if err.validator == "enum":
        return (f"value {value} is not one of {err.validator_value} ({SCHEMA_NAME}); "
                "use one of the listed values")
    return f"{err.message} ({SCHEMA_NAME}, rule '{err.validator}'); fix the value"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int_or_string(node: Any) -> bool:
    return isinstance(node, dict) and bool(node.get("x-kubernetes-int-or-string"))


def _walk(inst: Any, node: dict[str, Any], path: str, issues: list[Issue]) -> None:
    """Walk the instance alongside the schema for what jsonschema does not check."""
    if isinstance(inst, bool):
        return
    if isinstance(inst, int):
        bounds = _INT_RANGES.get(node.get("format", ""))
        if bounds and not bounds[0] <= inst <= bounds[1]:
            msg = (f"value {inst} does not fit in {node['format']} [{bounds[0]}, {bounds[1]}] "
                   f"({SCHEMA_NAME}); use a smaller number")
            issues.append((path, msg))
        return
    if isinstance(inst, list):
        items = node.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(inst):
                _walk(item, items, at(path, i), issues)
        _check_list_type(inst, node, path, issues)
        return
    if isinstance(inst, dict) and node.get("type") == "object":
        _walk_object(inst, node, path, issues)


def _walk_object(inst: dict[Any, Any], node: dict[str, Any], path: str,
                 issues: list[Issue]) -> None:
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return
    props: dict[str, Any] = node.get("properties", {})
    extra = node.get("additionalProperties")
    for key, value in inst.items():
        child = at(path, str(key))
        if key in props:
            _walk(value, props[key], child, issues)
        elif isinstance(extra, dict):
            _walk(value, extra, child, issues)
        elif path == "metadata" and key in ("labels", "annotations"):
            _check_string_map(value, child, issues)
        elif extra is True or path == "metadata" and key in _OBJECT_META_FIELDS:
            continue
        else:
            issues.append((child, _unknown_field(key, path, sorted(props))))


def _check_string_map(value: Any, path: str, issues: list[Issue]) -> None:
    """ObjectMeta labels and annotations: the API server accepts only string keys and values."""
    if not isinstance(value, dict):
        issues.append((path, f"{path} is {_short(value)}; it must be a mapping of strings"))
        return
    for key, item in value.items():
        if not (isinstance(key, str) and isinstance(item, str)):
            msg = (f"{path} entry {key!r}: {_short(item)} is not a string; quote the value "
                   "(e.g. \"true\", \"1\") so YAML keeps it a string")
            issues.append((at(path, str(key)), msg))


def _unknown_field(key: Any, parent: str, known: list[str]) -> str:
    where = f"'{parent}'" if parent else "the top level"
    if parent == "metadata":
        known = sorted(_OBJECT_META_FIELDS)
    hint = f"known fields: {', '.join(known)}" if known else f"{where} takes no fields (write {{}})"
    return (f"unknown field {key!r} in {where} ({SCHEMA_NAME}); kubectl rejects it and the API "
            f"server would drop it; remove it or fix its spelling ({hint})")


def _check_list_type(inst: list[Any], node: dict[str, Any], path: str,
                     issues: list[Issue]) -> None:
    kind = node.get("x-kubernetes-list-type")
    if kind == "set":
        seen: list[Any] = []
        for i, item in enumerate(inst):
            if item in seen:
                msg = (f"duplicate entry {_short(item)} in a list-type 'set' ({SCHEMA_NAME}); "
                       "remove the repeat")
                issues.append((at(path, i), msg))
            seen.append(item)
    elif kind == "map":
        keys = node.get("x-kubernetes-list-map-keys", [])
        seen_keys: set[tuple[str, ...]] = set()
        for i, item in enumerate(inst):
            if not isinstance(item, dict):
                continue
            ident = tuple(repr(item.get(k)) for k in keys)
            if ident in seen_keys:
                shown = ", ".join(f"{k}={item.get(k)!r}" for k in keys)
                msg = (f"duplicate entry with {shown} in a list keyed by {keys} ({SCHEMA_NAME}); "
                       "merge or rename the entries")
                issues.append((at(path, i), msg))
            seen_keys.add(ident)
