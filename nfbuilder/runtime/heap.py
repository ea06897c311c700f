"""How a long-running process of ours uses Python's cyclic garbage collector.

A vertex server or the engine builds everything it keeps (the app, the plan, the servers,
their caches) while it starts, then makes and drops several objects per message. Reference
counting frees those at once; the cyclic collector only finds the rare cycle, yet by default
it runs every 700 allocations and its full passes scan every object alive, the start-up ones
included: a few µs per message at our rates. :func:`settle` is called once what lives for the
whole process is built: a vertex server once it listens, the engine before it starts its
replicas (their clients are replaced on a restart, and a frozen object in a dropped cycle is
never collected).

    settle()        # gc.freeze() what start-up made; collect young objects less often
"""

from __future__ import annotations

import gc

#: allocations (net of frees) between collections of the youngest generation (Python: 700)
YOUNG_THRESHOLD = 20_000


def settle(young_threshold: int = YOUNG_THRESHOLD) -> None:
    """Collect once, move every object alive to the permanent generation (``gc.freeze``: the
    collector stops scanning them; they are still freed when their references go) and collect
    the youngest generation every ``young_threshold`` net allocations."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)
