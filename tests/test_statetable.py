"""The applied-id bookkeeping of ``StateTable`` stays within the store's id window."""

from __future__ import annotations

from pathlib import Path

from nfbuilder.codec import Codec
from nfbuilder.runtime.state.store import open_store
from nfbuilder.runtime.statetable import StateTable
from nfbuilder.topology import StateSpec


class Tally:
    def __init__(self) -> None:
        self.n = 0


SPEC = StateSpec("tally", Tally)
CODEC = Codec.for_module(None)


def _table(tmp_path: Path, retention_s: float = 0) -> StateTable:
    """A table on SQLite; ``retention_s=0``: ids are kept by the count window alone."""
    url = "sqlite:///" + str(tmp_path / "s.db")
    return StateTable(open_store(url, namespace="t", id_retention_s=retention_s), CODEC)


def test_a_step_that_never_saves_keeps_only_the_newest_window_of_ids(tmp_path: Path) -> None:
    table = _table(tmp_path)
    assert table.store is not None
    window = table.store.id_window
    total = 5000
    assert total > window
    entry = table.entry(SPEC, "a")
    for i in range(total):
        entry.obj.n += 1
        table.applied(SPEC, "a", entry, f"v-{i}-0", save=False, outputs=b"out %d" % i)

    assert len(entry.pending) == window
    assert list(entry.pending) == [f"v-{i}-0" for i in range(total - window, total)]
    assert entry.outputs_for(f"v-{total - 1}-0") == b"out %d" % (total - 1)
    assert entry.outputs_for(f"v-{total - window - 1}-0") is None  # the newest dropped id

    # the next save persists what the store keeps: a restarted process recognises a redelivered
    # recent id (and re-emits its outputs), not the oldest one
    entry.obj.n += 1
    table.applied(SPEC, "a", entry, f"v-{total}-0", save=True, outputs=b"last")
    table.store.close()
    again = _table(tmp_path)
    restored = again.entry(SPEC, "a")
    assert restored.obj.n == total + 1
    assert restored.outputs_for(f"v-{total}-0") == b"last"
    assert restored.outputs_for(f"v-{total - 1}-0") == b"out %d" % (total - 1)
    assert restored.outputs_for(f"v-{total - window + 1}-0") is not None  # oldest one kept
    assert restored.outputs_for(f"v-{total - window}-0") is None  # pushed out by the save's id
    assert restored.outputs_for("v-0-0") is None
    assert again.store is not None
    again.store.close()


def test_ids_younger_than_the_retention_are_kept_beyond_the_window(tmp_path: Path) -> None:
    """A late redelivery (after ackWait, while newer messages were applied) is still found."""
    table = _table(tmp_path, retention_s=120)
    assert table.store is not None
    window = table.store.id_window
    entry = table.entry(SPEC, "a")
    total = window * 3
    for i in range(total):
        entry.obj.n += 1
        table.applied(SPEC, "a", entry, f"v-{i}-0", save=i % 10 == 9, outputs=b"o%d" % i)
    assert len(entry.persisted) + len(entry.pending) == total  # all within 120 s
    table.store.close()
    again = _table(tmp_path, retention_s=120)
    restored = again.entry(SPEC, "a")
    assert restored.outputs_for("v-0-0") == b"o0"  # the oldest, 3 windows back
    assert again.store is not None
    again.store.close()
    # ids older than the retention fall back to the count window at the next save
    aged = _table(tmp_path, retention_s=0)
    entry = aged.entry(SPEC, "a")
    aged.applied(SPEC, "a", entry, "v-last-0", save=True, outputs=b"")
    assert len(entry.persisted) == window and entry.outputs_for("v-0-0") is None
    assert aged.store is not None
    aged.store.close()
