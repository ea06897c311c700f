"""Numaflow-safe names: DNS-1035 labels, unique, within ``len(pipeline) + len(vertex) <= 53``."""

from __future__ import annotations

import hashlib
import re

MAX_PIPELINE_NAME = 30
MAX_PIPELINE_PLUS_VERTEX = 53
MAX_TAG = 63  # tags are free text to Numaflow; a DNS label's length keeps them readable


def slug(text: str, fallback: str = "x") -> str:
    """``slug("Word Count!")`` -> ``'word-count'``: lower-case letters, digits and '-'."""
    out = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not out:
        out = fallback
    if not out[0].isalpha():
        out = f"{fallback}-{out}"
    return out


def shorten(name: str, limit: int) -> str:
    """Cut ``name`` to ``limit`` characters with a stable hash suffix when it is longer."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:6]
    head = name[: max(1, limit - 7)].rstrip("-")
    return f"{head}-{digest}"


class NameBook:
    """Hands out unique names: vertex names of an app (``NameBook(longest_pipeline_name)``) or
    routing tags of one document (``NameBook(limit=MAX_TAG)``)."""

    def __init__(self, pipeline_name: str = "", limit: int | None = None) -> None:
        self.limit = limit if limit is not None else MAX_PIPELINE_PLUS_VERTEX - len(pipeline_name)
        self.used: set[str] = set()

    def take(self, wanted: str, prefix: str = "") -> str:
        base = shorten(slug(wanted, "v"), self.limit)
        if base in self.used and prefix:
            base = shorten(slug(f"{prefix}-{wanted}", "v"), self.limit)
        name, n = base, 2
        while name in self.used:
            suffix = f"-{n}"
            name = shorten(base, self.limit - len(suffix)) + suffix
            n += 1
        self.used.add(name)
        return name
