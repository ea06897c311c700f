"""`make demo`: compile apps/word_count.py into build/, run it on the embedded engine with a
generated framed-text sender and a TCP receiver, and print the top word counts."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "apps")]

from apps.data import word_count as data
from nfbuilder.cli import main as cli
from nfbuilder.loader import load_app
from nfbuilder.local.engine import Engine, EngineOptions
from nfbuilder.local.tcptools import TcpReceiver, send_frames
from nfbuilder.plan import PlanOptions


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def demo() -> int:
    app = os.path.join(ROOT, "apps", "word_count.py")
    rx = await TcpReceiver.start()
    source = ("127.0.0.1", free_port())
    args = data.app_args([source], [rx.address])[1:]
    build = os.path.join(ROOT, "build")
    print(f"== nfbuilder compile apps/word_count.py -o build -- {' '.join(args)}")
    if cli(["compile", app, "-o", build, "--", *args]) != 0:
        return 1
    inputs = data.inputs(n=1000)
    frames = inputs[0]
    state = tempfile.mkdtemp(prefix="nfbuilder-demo-")
    engine = Engine(load_app(app, args), EngineOptions(
        plan=PlanOptions(state_store=f"sqlite:///{state}/state.db"), until_idle=3.0))
    print(f"\n== nfbuilder run apps/word_count.py: {len(frames)} lines to {source[0]}:{source[1]}")
    t0 = time.monotonic()
    run = asyncio.ensure_future(engine.run())
    await send_frames(source, frames, connect_timeout_s=60)
    code = await run
    elapsed = time.monotonic() - t0
    await rx.close()
    records = data.parse_output(rx.data())
    data.validate(records, inputs)
    last: dict[str, int] = {}
    for word, count in records:
        last[word] = count
    print(f"\n== {len(records)} updates for {len(last)} words in {elapsed:.1f} s; top 10:")
    for word, count in Counter(last).most_common(10):
        print(f"   {word:<12} {count}")
    rel = os.path.relpath(build)  # noqa: ASYNC240 - path arithmetic once the run is over
    print(f"\nmanifest: {rel}/pipeline.yaml (validate: nfbuilder validate "
          f"build/pipeline.yaml); entrypoints and Dockerfile beside it")
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(demo()))
