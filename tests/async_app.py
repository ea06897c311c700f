"""An app of async def steps for the tests, one shape per ``--mode``:

* ``concurrent``: ``to_parallel`` step awaiting 0.2 s; each output says how many messages were
  awaiting when it started (its proof of concurrency);
* ``state``: a partitioned async state step appending each word to its key's list after an
  await of random length, emitting ``key:position:word``;
* ``timeout``: a step whose "slow" messages await past its 0.3 s timeout;
* ``gate``: a state step that waits for a file (``--gate DIR``) before it finishes.

    application_setup(["prog", "--in", "h:p", "--out", "h:p", "--mode", "state"])
"""

import asyncio
import random

import nfbuilder as wallaroo

_active = 0


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    mode = args[args.index("--mode") + 1]
    ab = wallaroo.ApplicationBuilder(f"Async {mode}")
    ab.new_pipeline(mode, wallaroo.TCPSourceConfig(in_host, in_port, decoder))
    if mode == "concurrent":
        ab.to_parallel(probe)
    elif mode == "state":
        ab.to_state_partition(append, Words, "words", by_letter)
    elif mode == "gate":
        global _GATE
        _GATE = args[args.index("--gate") + 1]
        ab.to_stateful(gated, Words, "gated")
    else:
        ab.on_error("dead-letter", retries=0)
        ab.to(maybe_slow)
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encoder))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return bs.decode()


@wallaroo.computation(name="probe", concurrency=64)
async def probe(x):
    global _active
    waiting = _active
    _active += 1
    try:
        await asyncio.sleep(0.2)
    finally:
        _active -= 1
    return f"{x}:{waiting}"


class Words:
    def __init__(self):
        self.words = []


@wallaroo.partition
def by_letter(word):
    return word[0]


@wallaroo.state_computation(name="append")
async def append(word, state):
    await asyncio.sleep(random.random() * 0.003)
    state.words.append(word)
    return f"{word[0]}:{len(state.words)}:{word}", True


_GATE = ""


@wallaroo.state_computation(name="gated")
async def gated(word, state):
    """Says it started (``<gate>/started``), then waits for ``<gate>/release``."""
    import os

    open(os.path.join(_GATE, "started"), "w").close()  # noqa: ASYNC230 - a test's signal
    while not os.path.exists(os.path.join(_GATE, "release")):  # noqa: ASYNC110, ASYNC240
        await asyncio.sleep(0.01)
    state.words.append(word)
    return word, True


@wallaroo.computation(name="maybe slow", timeout=0.3)
async def maybe_slow(x):
    await asyncio.sleep(2.0 if x.startswith("slow") else 0.001)
    return x


@wallaroo.encoder
def encoder(x):
    return (x + "\n").encode()
