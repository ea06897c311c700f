"""Inputs and validator for ``apps/word_count.py``.

The corpus is generated (seeded): lines of 3–12 words drawn from a fixed vocabulary of our own,
with random capitals and punctuation, a few words starting with digits or non-ASCII letters (the
``!`` partition). One framed message per line (Wallaroo's newline-file-sender), ``>I`` + UTF-8.
Every word yields one output line ``"word => count"``; the validator keeps the LAST count per word
(as Wallaroo's), so at-least-once duplicates are accepted. It also rejects what no correct run can
produce: unknown words, counts above the total, and a count in 1..total never reported (lost).

    msgs = inputs(seed=0)              # 60 lines by default
    validate(parse_output(sink_bytes), msgs)
"""

from __future__ import annotations

import random
import string
from collections import Counter

from apps.data import frame, show, split_frames, split_lines, tcp_app_args

SOURCES = 1
SEND_ORDER = [0]

VOCABULARY: tuple[str, ...] = (
    "river", "stone", "lantern", "harbor", "meadow", "quiet", "orchard", "copper",
    "window", "thunder", "the", "a", "of", "and", "to", "in", "is", "was", "under", "over",
    "morning", "evening", "kettle", "bicycle", "garden", "ladder", "pepper", "violet",
    "marble", "candle", "whistle", "north", "south", "station", "engine", "signal", "rain",
    "salt", "bread", "honey", "wool", "paper", "pencil", "clock", "tower", "bridge",
    "island", "valley", "forest", "cloud", "shadow", "mirror", "velvet", "anchor",
    "compass", "ember", "frost", "we", "they", "she", "he", "it", "you", "walk", "carry",
    "listen", "remember", "build", "follow", "gather", "open", "close", "slow", "bright",
    "early", "late", "small", "heavy", "42", "3rd", "1999", "café", "über", "naïve",
    "élan", "ünder", "zebra", "yarn", "xylophone", "don't", "well-known", "o'clock",
    "re-read",
)
_PUNCTUATION = (",", ".", ";", ":", "!", "?", "—", "...", "'", '"', "(", ")")
_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)


def inputs(n: int | None = None, seed: int = 0) -> list[list[bytes]]:
    """``n`` (default 60) generated lines of text, each framed ``>I``."""
    rng = random.Random(seed)
    count = 60 if n is None else n
    lines = []
    for _ in range(count):
        words = []
        for _ in range(rng.randint(3, 12)):
            word = rng.choice(VOCABULARY)
            if rng.random() < 0.2:
                word = word.capitalize() if rng.random() < 0.7 else word.upper()
            if rng.random() < 0.15:
                word = word + rng.choice(_PUNCTUATION)
            if rng.random() < 0.05:
                word = rng.choice("(\"'") + word
            words.append(word)
        lines.append(" ".join(words))
    return [[frame(line.encode("utf-8")) for line in lines]]


def words(inputs: list[list[bytes]]) -> list[str]:
    """The words the app counts, in input order (its split rule: lowercase, delete ASCII
    punctuation, split on whitespace)."""
    out: list[str] = []
    for payload in split_frames(b"".join(inputs[0])):
        out.extend(payload.decode("utf-8").lower().translate(_DELETE_PUNCTUATION).split())
    return out


def expected(inputs: list[list[bytes]]) -> dict[str, int]:
    """The final count per word: ``{"river": 7, ...}``."""
    return dict(Counter(words(inputs)))


def parse_output(data: bytes) -> list[tuple[str, int]]:
    """``(word, count)`` per ``"word => count"`` line."""
    out = []
    for i, line in enumerate(split_lines(data)):
        text = line.decode("utf-8", errors="replace")
        word, sep, count = text.rpartition(" => ")
        assert sep and count.isdigit(), (
            f"word_count: output line {i} is {text!r}; expected 'word => count'"
        )
        out.append((word, int(count)))
    return out


def validate(records: list, inputs: list[list[bytes]]) -> None:
    """Last count per word == its number of occurrences (duplicates allowed), plus the sanity
    checks in the module docstring."""
    want = expected(inputs)
    last: dict[str, int] = {}
    seen: dict[str, set[int]] = {}
    for i, (word, count) in enumerate(records):
        assert word in want, (
            f"word_count: output record {i} is {word!r} => {count} but {word!r} is not a word "
            "of the input"
        )
        assert 1 <= count <= want[word], (
            f"word_count: output record {i} says {word!r} => {count}, but the input has "
            f"{want[word]} occurrence(s) of {word!r}"
        )
        last[word] = count
        seen.setdefault(word, set()).add(count)
    missing = sorted(set(want) - set(last))
    assert not missing, (
        f"word_count: no output for {len(missing)} word(s) {show(missing)}; received "
        f"{len(records)} records for {sum(want.values())} words"
    )
    wrong = {w: (last[w], want[w]) for w in sorted(want) if last[w] != want[w]}
    assert not wrong, (
        f"word_count: the last count of {len(wrong)} word(s) is wrong: "
        + ", ".join(f"{w!r} ends at {got} but occurs {exp} times" for w, (got, exp) in
                    list(wrong.items())[:5])
        + (" ..." if len(wrong) > 5 else "")
    )
    lost = {w: sorted(set(range(1, want[w] + 1)) - seen[w]) for w in sorted(want)}
    lost = {w: gaps for w, gaps in lost.items() if gaps}
    assert not lost, (
        "word_count: outputs were lost: "
        + ", ".join(f"{w!r} => {show(gaps)} never reported" for w, gaps in list(lost.items())[:5])
        + " (every occurrence must produce its running count)"
    )


def app_args(in_addrs: list[tuple[str, int]], out_addrs: list[tuple[str, int]]) -> list[str]:
    """``["prog", "--in", "127.0.0.1:7010", "--out", "127.0.0.1:7002"]``."""
    return tcp_app_args(in_addrs, out_addrs, SOURCES)
