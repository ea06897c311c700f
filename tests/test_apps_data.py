"""The example apps' data generators and validators (apps/data/*), checked against small
pure-Python references of each app written here, plus the apps themselves driven step by step
through their Wallaroo objects (no engine, no sockets).

The references below are deliberately independent of apps/ (re-derived from Wallaroo's
documented behaviour), so a validator that drifts from the app's semantics fails here.
"""

from __future__ import annotations

import importlib
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # apps/ is not an installed package
    sys.path.insert(0, str(ROOT))

from apps.data import APPS, frame, load, split_frames, split_lines  # noqa: E402 - importable only after ROOT is on sys.path

TCP_APPS = [a for a in APPS if a != "celsius_kafka"]


# ---------------------------------------------------------------------------------------------
# References: inputs -> the raw bytes a TCP sink would receive (a list of values for Kafka).


def _payloads(msgs: list[bytes]) -> list[bytes]:
    out = []
    for m in msgs:
        (n,) = struct.unpack(">I", m[:4])
        assert len(m) == 4 + n, "generator produced a badly framed message"
        out.append(m[4:])
    return out


def _f32(x: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


def ref_reverse(inputs: list[list[bytes]]) -> bytes:
    return b"".join((p.decode()[::-1] + "\n").encode() for p in _payloads(inputs[0]))


def ref_celsius(inputs: list[list[bytes]]) -> bytes:
    out = b""
    for p in _payloads(inputs[0]):
        (c,) = struct.unpack(">f", p)
        out += struct.pack(">I", 4) + struct.pack(">f", c * 1.8 + 32)
    return out


def ref_celsius_kafka(inputs: list[list[bytes]]) -> list[bytes]:
    return [struct.pack(">f", struct.unpack(">f", v[:4])[0] * 1.8 + 32) for v in inputs[0]]


def ref_alphabet(inputs: list[list[bytes]]) -> bytes:
    totals: Counter[bytes] = Counter()
    out = b""
    for p in _payloads(inputs[0]):
        letter, votes = p[:1], int.from_bytes(p[1:5], "big")
        totals[letter] += votes
        out += struct.pack(">I", 9) + letter + totals[letter].to_bytes(8, "big")
    return out


def _split_words(line: str) -> list[str]:
    punct = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    return "".join(c for c in line.lower() if c not in punct).split()


def ref_word_count(inputs: list[list[bytes]]) -> bytes:
    counts: Counter[str] = Counter()
    out = []
    for p in _payloads(inputs[0]):
        for w in _split_words(p.decode()):
            counts[w] += 1
            out.append(f"{w} => {counts[w]}\n")
    return "".join(out).encode()


def ref_market_spread(inputs: list[list[bytes]]) -> bytes:
    quotes: dict[bytes, tuple[float, float, bool]] = {}
    for p in _payloads(inputs[1]):  # market data first
        assert p[0] == 2 and len(p) == 42
        symbol = p[1:5]
        bid, offer = struct.unpack(">dd", p[26:42])
        spread = offer - bid
        quotes[symbol] = (bid, offer, spread >= 0.05 or spread / ((bid + offer) / 2) >= 0.05)
    out = b""
    for p in _payloads(inputs[0]):
        assert p[0] == 1 and len(p) == 53
        side, account = p[1], int.from_bytes(p[2:6], "big")
        order_id, symbol = p[6:12], p[12:16]
        qty, price = struct.unpack(">dd", p[16:32])
        bid, offer, reject = quotes.get(symbol, (0.0, 0.0, True))
        if reject:
            rec = (side.to_bytes(2, "big") + account.to_bytes(4, "big") + order_id + symbol
                   + struct.pack(">dddd", qty, price, bid, offer)
                   + int(time.time() * 100000).to_bytes(8, "big"))
            out += len(rec).to_bytes(4, "big") + rec
    return out


def ref_sequence_window(inputs: list[list[bytes]]) -> bytes:
    windows = {0: [0, 0, 0, 0], 1: [0, 0, 0, 0]}
    out = b""
    for p in _payloads(inputs[0]):
        x = int.from_bytes(p, "big")
        if x % 12 == 0 and x > 0:
            xs = [x, x + 1, x + 2]
        elif x % 12 in (1, 2) and x > 12:
            xs = []
        else:
            xs = [x]
        for v in xs:
            windows[v % 2] = windows[v % 2][1:] + [v]
            text = ("[" + ",".join(map(str, windows[v % 2])) + "]").encode()
            out += len(text).to_bytes(4, "big") + text
    return out


REFERENCES: dict[str, Callable[[list[list[bytes]]], Any]] = {
    "reverse": ref_reverse,
    "celsius": ref_celsius,
    "celsius_kafka": ref_celsius_kafka,
    "alphabet": ref_alphabet,
    "alphabet_partitioned": ref_alphabet,
    "word_count": ref_word_count,
    "market_spread": ref_market_spread,
    "sequence_window": ref_sequence_window,
}


def _run(app: str, n: int | None = None, seed: int = 0) -> tuple[Any, list[list[bytes]], list]:
    data = load(app)
    msgs = data.inputs(n, seed=seed)
    return data, msgs, data.parse_output(REFERENCES[app](msgs))


# ---------------------------------------------------------------------------------------------
# Generators and the shared interface.


@pytest.mark.parametrize("app", APPS)
def test_interface_and_determinism(app: str) -> None:
    data = load(app)
    msgs = data.inputs()
    assert len(msgs) == data.SOURCES
    assert sorted(data.SEND_ORDER) == list(range(data.SOURCES))
    assert all(isinstance(m, bytes) for source in msgs for m in source)
    assert data.inputs(seed=7) == data.inputs(seed=7)
    if app not in ("reverse", "sequence_window"):  # those two have no randomness by default
        assert data.inputs(seed=7) != data.inputs(seed=8)


def test_default_sizes() -> None:
    assert len(load("reverse").inputs()[0]) == 4
    assert len(load("reverse").inputs(5)[0]) == 9
    assert len(load("celsius").inputs()[0]) == 100
    assert len(load("alphabet").inputs()[0]) == 1000
    orders, quotes = load("market_spread").inputs()
    assert (len(orders), len(quotes)) == (2000, 2000)
    assert len(load("sequence_window").inputs()[0]) == 1000


@pytest.mark.parametrize("app", [a for a in TCP_APPS])
def test_tcp_inputs_are_framed(app: str) -> None:
    for source in load(app).inputs():
        for m in source:
            assert split_frames(m) == [m[4:]]


def test_framing_helpers_leave_out_an_incomplete_tail() -> None:
    stream = frame(b"one") + frame(b"two")
    assert split_frames(stream + frame(b"three")[:5]) == [b"one", b"two"]
    assert split_lines(b"a\nb\npartial") == [b"a", b"b"]


def test_reverse_fixed_words_match_wallaroo_test() -> None:
    records = _run("reverse")[2]
    assert records == ["4321", "8765", "2121", "1111"]


def test_word_count_exercises_the_bang_partition() -> None:
    words = load("word_count").words(load("word_count").inputs())
    assert any(not ("a" <= w[0] <= "z") for w in words)
    assert 200 < len(words) < 800


def test_sequence_window_final_windows() -> None:
    data = load("sequence_window")
    want = data.expected(data.inputs(1000))
    assert want[0][-1] == (994, 996, 998, 1000)
    assert want[1][-1] == (993, 995, 997, 999)
    assert len(want[0]) + len(want[1]) == 1000


def test_market_spread_expected_rejections() -> None:
    data = load("market_spread")
    msgs = data.inputs(50, seed=3)
    want = data.expected(msgs)
    assert len(want) == 50  # exactly the orders on the 10 wide-spread symbols
    assert {r[3].strip() for r in want} <= set(data.BAD_SYMBOLS)


@pytest.mark.parametrize("app", TCP_APPS)
def test_app_args(app: str) -> None:
    data = load(app)
    ins = [("127.0.0.1", 7010 + i) for i in range(data.SOURCES)]
    args = data.app_args(ins, [("127.0.0.1", 7002)])
    assert args[0] == "prog"
    want_in = ",".join(f"127.0.0.1:{7010 + i}" for i in range(len(ins)))
    assert args[args.index("--in") + 1] == want_in
    assert args[args.index("--out") + 1] == "127.0.0.1:7002"


def test_app_args_rejects_wrong_address_counts() -> None:
    data = load("market_spread")
    with pytest.raises(ValueError, match=r"has 2 TCP source\(s\) but 1 --in address"):
        data.app_args([("h", 1)], [("h", 2)])
    with pytest.raises(ValueError, match=r"one TCP sink but 2 --out address"):
        load("reverse").app_args([("h", 1)], [("h", 2), ("h", 3)])


def test_kafka_args() -> None:
    data = load("celsius_kafka")
    args = data.kafka_args("b:9092", "in-t", "out-t")
    assert args[args.index("--kafka_source_topic") + 1] == "in-t"
    assert args[args.index("--kafka_sink_topic") + 1] == "out-t"
    args = data.app_args([("s", 9092)], [("k", 9093)])
    assert args[args.index("--kafka_source_brokers") + 1] == "s:9092"
    assert args[args.index("--kafka_sink_brokers") + 1] == "k:9093"


def test_load_unknown_app() -> None:
    with pytest.raises(ValueError, match="unknown example app 'nope'; choose one of reverse"):
        load("nope")


# ---------------------------------------------------------------------------------------------
# Validators accept the reference output...


@pytest.mark.parametrize("app", APPS)
@pytest.mark.parametrize("seed", [0, 1])
def test_validator_accepts_reference_output(app: str, seed: int) -> None:
    data, msgs, records = _run(app, None if app != "reverse" else 20, seed)
    assert records
    data.validate(records, msgs)


@pytest.mark.parametrize("app", ["alphabet", "alphabet_partitioned", "word_count",
                                 "market_spread", "sequence_window"])
def test_validator_accepts_at_least_once_replay(app: str) -> None:
    data, msgs, records = _run(app)
    replayed = records + records[len(records) // 3 :]  # a crash, then redelivery of a suffix
    data.validate(replayed, msgs)


@pytest.mark.parametrize("app", ["alphabet_partitioned", "word_count"])
def test_validator_accepts_partitions_interleaved_differently(app: str) -> None:
    data, msgs, records = _run(app)
    # Each key's records keep their order; keys interleave differently (as parallel partitions do).
    regrouped = sorted(records, key=lambda r: r[0][0])
    data.validate(regrouped, msgs)


def test_celsius_kafka_parse_accepts_values_or_concatenation() -> None:
    data = load("celsius_kafka")
    msgs = data.inputs(10)
    values = ref_celsius_kafka(msgs)
    assert data.parse_output(values) == data.parse_output(b"".join(values))
    data.validate(data.parse_output(values), msgs)


# ...and reject corrupted ones, saying what is wrong.


def _changed(records: list, i: int, value: Any) -> list:
    out = list(records)
    out[i] = value
    return out


@pytest.mark.parametrize("app", ["reverse", "celsius", "celsius_kafka"])
def test_exact_validators_reject_changed_and_missing_records(app: str) -> None:
    data, msgs, records = _run(app, 6 if app == "reverse" else None)
    bad = _changed(records, 2, "x" if app == "reverse" else records[2] + 1.0)
    with pytest.raises(AssertionError, match=rf"^{app}: record 2 is .*, expected .* in .*order"):
        data.validate(bad, msgs)
    n = len(records)
    with pytest.raises(AssertionError, match=rf"^{app}: received {n - 1} records, expected {n}"):
        data.validate(records[:-1], msgs)
    with pytest.raises(AssertionError, match=rf"received {n + 1} records, expected {n}; extra"):
        data.validate(records + records[-1:], msgs)
    with pytest.raises(AssertionError, match=rf"^{app}: record 0 is"):
        data.validate(records[1:], msgs)


@pytest.mark.parametrize("app", ["alphabet", "alphabet_partitioned"])
def test_alphabet_validators_reject_corruption(app: str) -> None:
    data, msgs, records = _run(app)
    letter, total = records[-1]
    with pytest.raises(AssertionError, match=rf"^{app}: the last total of 1 letter\(s\) is wrong: "
                       rf"'{letter}' ends at {total - 1} but its votes sum to {total}"):
        data.validate(_changed(records, -1, (letter, total - 1)), msgs)
    with pytest.raises(AssertionError, match=rf"^{app}: the last total of 1 letter\(s\) is wrong"):
        data.validate(records[:-1], msgs)
    with pytest.raises(AssertionError, match=rf"^{app}: outputs were lost: '.' has \d+ distinct"):
        data.validate(records[:5] + records[6:], msgs)
    with pytest.raises(AssertionError,
                       match=rf"^{app}: output record 3 is \('#', 1\) but no input"):
        data.validate(_changed(records, 3, ("#", 1)), msgs)
    with pytest.raises(AssertionError, match=rf"^{app}: output record 3 says '{letter}' has "
                       rf"{total + 1} votes, more than the {total} votes"):
        data.validate(_changed(records, 3, (letter, total + 1)), msgs)
    with pytest.raises(AssertionError, match=rf"^{app}: no output record for letters"):
        data.validate([r for r in records if r[0] != letter], msgs)


def test_alphabet_parse_rejects_wrong_record_size() -> None:
    with pytest.raises(AssertionError, match=r"^alphabet: output record 0 has a 3-byte payload"):
        load("alphabet").parse_output(frame(b"abc"))


def test_word_count_validator_rejects_corruption() -> None:
    data, msgs, records = _run("word_count")
    word, count = records[-1]
    with pytest.raises(AssertionError, match=rf"^word_count: the last count of 1 word\(s\) is "
                       rf"wrong: '{word}' ends at {count - 1} but occurs {count} times"):
        data.validate(_changed(records, -1, (word, count - 1)), msgs)
    with pytest.raises(AssertionError, match=r"^word_count: the last count of 1 word"):
        data.validate(records[:-1], msgs)
    # A record lost in the middle: the last counts are right, but one running count never came.
    i = next(i for i, (w, c) in enumerate(records) if c == 1 and
             any(w2 == w and c2 == 2 for w2, c2 in records[i:]))
    with pytest.raises(AssertionError, match=rf"^word_count: outputs were lost: "
                       rf"'{records[i][0]}' => \[1\] never reported"):
        data.validate(records[:i] + records[i + 1 :], msgs)
    with pytest.raises(AssertionError, match=r"^word_count: output record 0 is 'zzz' => 1 but "
                       r"'zzz' is not a word of the input"):
        data.validate(_changed(records, 0, ("zzz", 1)), msgs)
    with pytest.raises(AssertionError, match=r"^word_count: no output for 1 word\(s\)"):
        data.validate([r for r in records if r[0] != word], msgs)


def test_word_count_parse_rejects_malformed_line() -> None:
    with pytest.raises(AssertionError, match=r"^word_count: output line 1 is 'oops'; expected"):
        load("word_count").parse_output(b"a => 1\noops\n")


def test_market_spread_validator_rejects_corruption() -> None:
    data, msgs, records = _run("market_spread")
    changed = _changed(records, 10, records[10]._replace(bid=records[10].bid + 0.5))
    with pytest.raises(AssertionError, match=r"^market_spread: received 1000 distinct rejections "
                       r"\(1000 records\), expected 1000; 1 expected rejection\(s\) missing .*; "
                       r"1 unexpected rejection\(s\)"):
        data.validate(changed, msgs)
    with pytest.raises(AssertionError, match=r"^market_spread: received 999 distinct rejections.*"
                       r"1 expected rejection\(s\) missing \[\(.*\)\]; 0 unexpected"):
        data.validate(records[:-1], msgs)
    # The timestamp is ignored, as in Wallaroo's validator.
    data.validate(_changed(records, 0, records[0]._replace(timestamp=0)), msgs)


def test_market_spread_parse_rejects_wrong_record_size() -> None:
    with pytest.raises(AssertionError, match=r"^market_spread: output record 0 has a 2-byte "
                       r"payload; expected 56 bytes"):
        load("market_spread").parse_output(frame(b"ab"))


def test_sequence_window_validator_rejects_corruption() -> None:
    data, msgs, records = _run("sequence_window")
    with pytest.raises(AssertionError, match=r"^sequence_window: record 40 is \[.*\], but the "
                       r"window after \d+ must be \[.*\].*lost, repeated or reordered"):
        data.validate(_changed(records, 40, (records[40][0] + 2,) + records[40][1:]), msgs)
    with pytest.raises(AssertionError, match=r"^sequence_window: the last even window received is "
                       r"\[992, 994, 996, 998\], expected the final window "
                       r"\[994, 996, 998, 1000\]"):
        data.validate(records[:-1], msgs)
    with pytest.raises(AssertionError, match=r"^sequence_window: the last odd window received is "
                       r"none at all, expected the final window \[993, 995, 997, 999\]; 500 "):
        data.validate([r for r in records if r[-1] % 2 == 0], msgs)
    with pytest.raises(AssertionError, match=r"^sequence_window: record 41 \[.*\] follows "
                       r"\[.*\] for parity \d; expected \[.*\].*: windows were skipped$"):
        data.validate(records[:40] + records[41:], msgs)
    with pytest.raises(AssertionError, match=r"^sequence_window: record 3 \[9, 9, 9, 5000\] does "
                       r"not end with a value that was sent"):
        data.validate(_changed(records, 3, (9, 9, 9, 5000)), msgs)
    with pytest.raises(AssertionError, match=r"windows were skipped or repeated"):
        data.validate(records + records[-4:], msgs, exactly_once=True)
    data.validate(records, msgs, exactly_once=True)


def test_sequence_window_parse() -> None:
    data = load("sequence_window")
    assert data.parse_output(frame(b"[0,0,1,3]") + frame(b"[0, 0, 2, 4]")) == [
        (0, 0, 1, 3), (0, 0, 2, 4)]
    with pytest.raises(AssertionError, match=r"^sequence_window: output record 0 is '\[1,2\]'"):
        data.parse_output(frame(b"[1,2]"))


def test_celsius_parse_rejects_wrong_record_size() -> None:
    with pytest.raises(AssertionError, match=r"^celsius: output record 0 has a 5-byte payload"):
        load("celsius").parse_output(frame(b"12345"))
    with pytest.raises(AssertionError, match=r"^celsius_kafka: 5 bytes of concatenated output"):
        load("celsius_kafka").parse_output(b"12345")


# ---------------------------------------------------------------------------------------------
# The apps themselves: build them, then drive their Wallaroo objects in order (no engine).


def _app(app: str) -> Any:
    pytest.importorskip("nfbuilder")
    import nfbuilder

    if not hasattr(nfbuilder, "ApplicationBuilder"):
        pytest.skip("nfbuilder's Wallaroo API is not available yet")
    return importlib.import_module(f"apps.{app}")


def _argv(app: str) -> list[str]:
    data = load(app)
    if app == "celsius_kafka":
        return data.kafka_args("127.0.0.1:9092", "test-in", "test-out")
    ins = [("127.0.0.1", 7010 + i) for i in range(data.SOURCES)]
    return data.app_args(ins, [("127.0.0.1", 7002)])


@pytest.mark.parametrize("app", APPS)
def test_application_setup_builds(app: str) -> None:
    actions = _app(app).application_setup(_argv(app))
    assert isinstance(actions, list)
    assert actions[0][0] == "name" and isinstance(actions[0][1], str)
    sources = [a[2] for a in actions if a[0] == "new_pipeline"]
    assert len(sources) == load(app).SOURCES
    if app == "celsius_kafka":
        assert sources[0][:2] == ("kafka", "test-in")
        assert [a[1][1] for a in actions if a[0] == "to_sink"] == ["test-out"]
    else:  # the Nth --in address feeds the Nth pipeline; ports stay strings, as in Wallaroo
        assert [s[:3] for s in sources] == [("tcp", "127.0.0.1", str(7010 + i))
                                            for i in range(len(sources))]
        assert [a[1][:3] for a in actions if a[0] == "to_sink"] == [("tcp", "127.0.0.1", "7002")]


def test_market_spread_data_symbols_are_app_partitions() -> None:
    app = _app("market_spread")
    data = load("market_spread")
    assert set(data.GOOD_SYMBOLS + data.BAD_SYMBOLS) <= set(app.SYMBOLS)
    assert all(len(s) <= 4 for s in app.SYMBOLS) and len(set(app.SYMBOLS)) == len(app.SYMBOLS)


def _pipelines(actions: list[tuple]) -> list[dict[str, Any]]:
    pipes: list[dict[str, Any]] = []
    for action in actions[1:]:
        if action[0] == "new_pipeline":
            pipes.append({"source": action[2], "steps": [], "sinks": []})
        elif action[0] == "to_sink":
            pipes[-1]["sinks"] = [action[1]]
        elif action[0] == "to_sinks":
            pipes[-1]["sinks"] = list(action[1])
        elif action[0] != "done":
            pipes[-1]["steps"].append(action)
    return pipes


def _drive(actions: list[tuple], msgs: list[list[bytes]], order: list[int]) -> list[Any]:
    """Wallaroo's step semantics, sequentially: decode, compute / compute_multi (None filters,
    lists fan out), state per (state name, key), encode. Returns the encoded outputs."""
    states: dict[tuple[str, Any], Any] = {}
    encoded: list[Any] = []
    pipes = _pipelines(actions)
    for index in order:
        pipe = pipes[index]
        decoder = pipe["source"][-1]
        for m in msgs[index]:
            if pipe["source"][0] == "tcp":
                header = decoder.header_length()
                assert decoder.payload_length(m[:header]) == len(m) - header
                m = m[header:]
            items = [decoder.decode(m)]
            for step in pipe["steps"]:
                kind, comp = step[0], step[1]
                multi = hasattr(comp, "compute_multi")
                produced: list[Any] = []
                for item in items:
                    if kind in ("to", "to_parallel"):
                        out = comp.compute_multi(item) if multi else comp.compute(item)
                    else:
                        key = None if kind == "to_stateful" else step[4].partition(item)
                        if kind != "to_stateful" and step[5]:
                            assert key in step[5], f"partition key {key!r} not declared"
                        state = states.setdefault((step[3], key), step[2].____wallaroo_build____())
                        result = comp.compute_multi(item, state) if multi else comp.compute(
                            item, state)
                        out, save = result
                        assert isinstance(save, bool)
                    if out is None:
                        continue
                    produced.extend([o for o in out if o is not None] if multi else [out])
                items = produced
            for item in items:
                for sink in pipe["sinks"]:
                    encoded.append(sink[-1].encode(item))
    return encoded


@pytest.mark.parametrize("app", APPS)
def test_app_output_passes_its_validator(app: str) -> None:
    module = _app(app)
    data = load(app)
    msgs = data.inputs(None if app not in ("reverse", "market_spread") else 30, seed=5)
    encoded = _drive(module.application_setup(_argv(app)), msgs, data.SEND_ORDER)
    if app == "celsius_kafka":
        assert all(key is None for _, key in encoded)
        raw: Any = [value for value, _ in encoded]
    else:
        assert all(isinstance(e, bytes) for e in encoded)
        raw = b"".join(encoded)
    assert raw == REFERENCES[app](msgs) or app == "market_spread"  # timestamps differ
    data.validate(data.parse_output(raw), msgs)


def test_app_pickle_hooks_round_trip_state_and_messages() -> None:
    module = _app("alphabet")
    state = module.AllVotes()
    state.update(module.Votes("a", 3))
    copy = module.deserialize(module.serialize(state))
    assert copy.get_votes("a").votes == 3


def test_market_spread_rejects_wrong_message_type() -> None:
    module = _app("market_spread")
    nbbo = struct.pack(">B4s21sdd", 2, b"ACME", b"x" * 21, 1.0, 1.01)
    with pytest.raises(module.MarketSpreadError,
                       match=r"^Wrong Fix message on the orders source: type 2, 42 bytes; "
                             r"orders must be type 1"):
        module.order_decoder.decode(nbbo)
    with pytest.raises(module.MarketSpreadError,
                       match=r"on the market data source: type 2, 5 bytes; NBBO"):
        module.market_data_decoder.decode(nbbo[:5])
