"""The engine routes as numa does: keys joined with ':' hashed with Rust's DefaultHasher
(SipHash-1-3, zero keys), modulo the partitions. The vectors in tests/data were computed with
the Rust toolchain of this machine (rustc 1.95.0, numa v1.8.3's) by RUST_PROGRAM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nfbuilder.plan.routing import partition_of, siphash13

VECTORS = json.loads((Path(__file__).parent / "data" / "siphash13_vectors.json").read_text())

#: how the vectors were made: `rustc -O main.rs && ./main` printed the "vectors" list
RUST_PROGRAM = r'''
use std::hash::{DefaultHasher, Hasher};
fn main() {
    let keys = ["", "0", "1", "a", "kw", "word", "a:b", "sequence window", "AAPL", "\u{e9}t\u{e9}",
                "0123456789abcdef", "0123456789abcdefg", "x:y:z", "!", "the quick brown fox jumps"];
    print!("[");
    for (i, k) in keys.iter().enumerate() {
        let mut h = DefaultHasher::new();
        h.write(k.as_bytes());
        let v = h.finish();
        if i > 0 { print!(","); }
        print!("{{\"key\":{:?},\"hash\":{},\"p2\":{},\"p3\":{},\"p7\":{}}}",
               k, v, v % 2, v % 3, v % 7);
    }
    println!("]");
}
'''


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: repr(v["key"]))
def test_siphash13_matches_rusts_default_hasher(vector: dict) -> None:
    assert siphash13(vector["key"].encode()) == vector["hash"]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: repr(v["key"]))
def test_partition_choice_matches_numas(vector: dict) -> None:
    # a single key is its own shuffle key; "a:b" is also what the keys ("a", "b") join to
    keys = tuple(vector["key"].split(":")) if vector["key"] else ("",)
    for n in (2, 3, 7):
        assert partition_of(keys, n) == vector[f"p{n}"], n
    assert partition_of(keys, 1) == 0


def test_sequence_window_keys_land_on_both_partitions() -> None:
    # the audit's known answer: with crc32 both "0" and "1" went to partition 1
    assert (partition_of(("0",), 2), partition_of(("1",), 2)) == (0, 1)


def test_kafka_records_are_keyed_and_headed_as_numa_writes_them() -> None:
    from nfbuilder.local.kafka import record_key_and_headers
    from nfbuilder.local.sourcesink import SinkDatum

    datum = SinkDatum("v-1-0", b"x", ("a", "b"), headers={"h": "1"})
    key, headers = record_key_and_headers(datum, set_key=True)
    assert key == b"a:b"
    assert headers == [("h", b"1"), ("__key_len", b"2"), ("__key_0", b"a"), ("__key_1", b"b")]
    assert record_key_and_headers(datum, set_key=False)[0] is None
    assert record_key_and_headers(SinkDatum("v", b"x"), set_key=True) == (
        None, [("__key_len", b"0")])
