"""Offline checker for Numaflow ``Pipeline`` manifests: every manifest nfbuilder emits must pass it.

It runs the three gates a manifest meets in a cluster (see the Numaflow pipeline reference), in
this order: the object header; YAML duplicate keys and nulls; the CRD schema of Numaflow v1.8.3
with unknown fields as errors (``manifest_schema``); the controller's rules and the run-time traps
(``manifest_rules``, ``manifest_graph``). An empty list means valid. Bad input never raises: it
becomes a ``Finding``.

    >>> from nfbuilder.emit.validate import check_file
    >>> for finding in check_file("pipeline.yaml"):
    ...     print(finding)
    doc 0: spec.vertices[2].scale: ordered vertices must not set scale.min/max: ...
"""

from __future__ import annotations

import os
from typing import Any

import attrs
import yaml

from nfbuilder.emit.manifest_rules import check_rules
from nfbuilder.emit.manifest_schema import Issue, at, check_schema

API_VERSION = "numaflow.numaproj.io/v1alpha1"
KIND = "Pipeline"


@attrs.frozen
class Finding:
    """One problem in a manifest: where (dotted path), what to do, and which YAML document.

    >>> str(Finding("spec.edges[0]", "edge 'a' -> 'b' refers to ...", document=1))
    "doc 1: spec.edges[0]: edge 'a' -> 'b' refers to ..."
    """

    path: str
    message: str
    document: int = 0

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"doc {self.document}: {where}{self.message}"


def check_pipeline(manifest: Any) -> list[Finding]:
    """Check one Pipeline object (a dict as ``yaml.safe_load`` returns it).

    >>> check_pipeline(yaml.safe_load(open("pipeline.yaml")))
    []
    """
    return _check_pipeline(manifest, [], 0)


def check_documents(docs: list[Any]) -> list[Finding]:
    """Check each document: Pipelines fully, other kinds (Service, Secret, ...) for a header only.

    >>> check_documents([pipeline_dict, service_dict])
    []
    """
    return _check_indexed(list(enumerate(docs)), {})


def check_yaml_text(text: str) -> list[Finding]:
    """Parse multi-document YAML text and check every document; duplicate keys are findings.

    Empty documents (a stray ``---``) are skipped, as kubectl does; numbering counts them.

    >>> check_yaml_text(open("pipeline.yaml").read())
    []
    """
    loader = _StrictLoader(text)
    docs: list[tuple[int, Any]] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            loader.record_duplicates(node, len(docs) + loader.skipped)
            if node is None or (isinstance(node, yaml.ScalarNode) and node.value == ""
                                and node.tag == "tag:yaml.org,2002:null"):
                loader.skipped += 1
                continue
            docs.append((len(docs) + loader.skipped, loader.construct_document(node)))
    except yaml.YAMLError as exc:
        index = len(docs) + loader.skipped
        return [Finding("", f"the file is not valid YAML: {' '.join(str(exc).split())}; fix the "
                            "syntax at the position shown", index)]
    finally:
        loader.dispose()
    if not docs:
        return [Finding("", "the file holds no YAML document; expected at least one Pipeline")]
    return _check_indexed(docs, loader.duplicates)


def check_file(path: str | os.PathLike[str]) -> list[Finding]:
    """Read a YAML file and check it as ``check_yaml_text`` does; an unreadable file is a finding.

    >>> check_file("build/pipeline.yaml")
    []
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        return [Finding("", f"cannot read {os.fspath(path)!r}: {exc}; check the path and that it "
                            "is a UTF-8 text file")]
    return check_yaml_text(text)


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that records duplicate mapping keys (PyYAML keeps the last one silently)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: dict[int, list[Issue]] = {}
        self.skipped = 0

    def record_duplicates(self, node: yaml.Node | None, document: int) -> None:
        """Walk a composed document and remember each repeated key with its path and line."""
        if node is not None:
            self._walk(node, "", document, set())

    def _walk(self, node: yaml.Node, path: str, document: int, seen: set[int]) -> None:
        if id(node) in seen:  # YAML aliases can make the node graph cyclic
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, at(path, i), document, seen)
        elif isinstance(node, yaml.MappingNode):
            first_line: dict[str, int] = {}
            for key_node, value_node in node.value:
                key = str(key_node.value)
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # '<<' merges may repeat by design
                line = key_node.start_mark.line + 1
                if key in first_line:
                    msg = (f"duplicate key {key!r} (lines {first_line[key]} and {line}); YAML "
                           "keeps only the last one and kubectl rejects the file; remove one of "
                           "them")
                    self.duplicates.setdefault(document, []).append((at(path, key), msg))
                first_line.setdefault(key, line)
                self._walk(value_node, at(path, key), document, seen)


def _check_indexed(docs: list[tuple[int, Any]], duplicates: dict[int, list[Issue]]
                   ) -> list[Finding]:
    findings: list[Finding] = []
    seen: dict[tuple[str, str, str], int] = {}
    for index, doc in docs:
        if _is_pipeline(doc):
            findings.extend(_check_pipeline(doc, duplicates.get(index, []), index))
        else:
            findings.extend(_check_other(doc, duplicates.get(index, []), index))
        ident = _identity(doc)
        if ident is not None and ident in seen:
            findings.append(Finding("metadata.name", f"{ident[0]} {ident[2]!r} is also defined in "
                                                     f"document {seen[ident]}; a name may be used "
                                                     "once per kind, rename one", index))
        elif ident is not None:
            seen[ident] = index
    return findings


def _is_pipeline(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("kind") == KIND


def _identity(doc: Any) -> tuple[str, str, str] | None:
    if not isinstance(doc, dict) or not isinstance(doc.get("metadata"), dict):
        return None
    kind, meta = doc.get("kind"), doc["metadata"]
    name, namespace = meta.get("name"), meta.get("namespace", "")
    if isinstance(kind, str) and isinstance(name, str) and isinstance(namespace, str):
        return kind, namespace, name
    return None


def _check_other(doc: Any, duplicates: list[Issue], index: int) -> list[Finding]:
    """A non-Pipeline object needs only a header: apiVersion, kind and metadata.name."""
    issues = _header(doc, kind=None) + duplicates
    return [Finding(path, message, index) for path, message in issues]


def _check_pipeline(manifest: Any, duplicates: list[Issue], index: int) -> list[Finding]:
    issues = _header(manifest, kind=KIND)
    shape = _shape_problem(manifest, 0, ())
    if shape is not None:
        issues += duplicates + [shape]
    elif isinstance(manifest, dict):
        issues += duplicates
        issues += _nulls(manifest, "")
        # Later gates see the object as the API server keeps it, so 'log:' reads as no sink type.
        stored = _prune_nulls(manifest)
        issues += check_schema(stored)
        issues += check_rules(stored)
    return [Finding(path, message, index) for path, message in issues]


def _header(doc: Any, kind: str | None) -> list[Issue]:
    if not isinstance(doc, dict):
        msg = (f"the document is a {type(doc).__name__} ({_short(doc)}), not a mapping; "
               "expected a Kubernetes object with apiVersion, kind and metadata")
        return [("", msg)]
    issues: list[Issue] = []
    if kind is not None and doc.get("apiVersion") != API_VERSION:
        msg = f"apiVersion is {_short(doc.get('apiVersion'))}; a Pipeline must use {API_VERSION!r}"
        issues.append(("apiVersion", msg))
    for key in ("apiVersion", "kind"):
        if kind is None and not (isinstance(doc.get(key), str) and doc[key]):
            msg = (f"{key} is {_short(doc.get(key))}; every Kubernetes object needs a non-empty "
                   "string here, add it")
            issues.append((key, msg))
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not (isinstance(name, str) and name):
        what = kind or (doc.get("kind") if isinstance(doc.get("kind"), str) else "")
        what = what or "Kubernetes object"
        msg = f"metadata.name is {_short(name)}; a {what} needs a name, add one"
        issues.append(("metadata.name", msg))
    return issues


MAX_DEPTH = 64  # far deeper than any Pipeline; bounds recursion in the later gates


def _shape_problem(value: Any, depth: int, parents: tuple[int, ...]) -> Issue | None:
    """A recursive YAML alias or absurd nesting, which no Kubernetes object can hold."""
    if not isinstance(value, (dict, list)):
        return None
    if id(value) in parents:
        msg = ("the document refers to itself through a YAML alias (&anchor ... *anchor); a "
               "Kubernetes object cannot be recursive, write the values out")
        return ("", msg)
    if depth > MAX_DEPTH:
        msg = (f"the document is nested more than {MAX_DEPTH} levels deep; no Pipeline field "
               "is, so check the indentation")
        return ("", msg)
    children = value.values() if isinstance(value, dict) else value
    for child in children:
        problem = _shape_problem(child, depth + 1, (*parents, id(value)))
        if problem is not None:
            return problem
    return None


def _nulls(value: Any, path: str) -> list[Issue]:
    """Every null: the API server prunes them, so `log:` leaves a sink with no type at all."""
    issues: list[Issue] = []
    children: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        children = [(at(path, str(k)), v) for k, v in value.items()]
    elif isinstance(value, list):
        children = [(at(path, i), v) for i, v in enumerate(value)]
    for child_path, child in children:
        if child is None:
            msg = (f"null value at {child_path}; the API server drops nulls (so 'log:' becomes "
                   "a sink with no type); write {} for an empty object or remove the key")
            issues.append((child_path, msg))
        else:
            issues.extend(_nulls(child, child_path))
    return issues


def _prune_nulls(value: Any) -> Any:
    """A copy without null mapping values, as the API server stores the object."""
    if isinstance(value, dict):
        return {k: _prune_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_prune_nulls(v) for v in value]
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
