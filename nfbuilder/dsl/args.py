"""Wallaroo's command-line helpers for ``application_setup(args)``.

Flag names, defaults and return types are Wallaroo's (ports stay strings); unknown arguments are
ignored, so each helper can be given the whole ``args`` list::

    tcp_parse_input_addrs(["app", "--in", "127.0.0.1:7010,127.0.0.1:7011"])
    # [('127.0.0.1', '7010'), ('127.0.0.1', '7011')]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from nfbuilder.dsl.errors import WallarooParameterError

_LOG_LEVELS = ("Fine", "Info", "Warn", "Error")


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="wallaroo", add_help=False)


def _split_addrs(value: str | None, flag: str) -> list[tuple[str, str]]:
    if value is None:
        raise WallarooParameterError(
            f"Missing {flag}: give the addresses as {flag} host:port[,host:port...]"
            f" after '--' on the command line, e.g. {flag} 127.0.0.1:7010."
        )
    addrs = []
    for item in value.split(","):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port:
            raise WallarooParameterError(
                f"{flag} expects host:port[,host:port...], got {value!r} ({item!r} has no port)."
            )
        addrs.append((host, port))
    return addrs


def tcp_parse_input_addrs(args: Sequence[str]) -> list[tuple[str, str]]:
    """``-i/--in H1:P1,H2:P2`` -> ``[(H1, P1), (H2, P2)]``; the Nth is the Nth pipeline's source."""
    parser = _parser()
    parser.add_argument("-i", "--in", dest="input_addrs")
    ns, _ = parser.parse_known_args(list(args))
    return _split_addrs(ns.input_addrs, "--in")


def tcp_parse_output_addrs(args: Sequence[str]) -> list[tuple[str, str]]:
    """``-o/--out H1:P1,...`` -> ``[(H1, P1), ...]``."""
    parser = _parser()
    parser.add_argument("-o", "--out", dest="output_addrs")
    ns, _ = parser.parse_known_args(list(args))
    return _split_addrs(ns.output_addrs, "--out")


def _kafka_parse_broker(broker: str) -> tuple[str, str]:
    host, sep, port = broker.partition(":")
    return (host, port if sep and port else "9092")


def kafka_parse_source_options(
    args: Sequence[str], prefix: str = "kafka_source"
) -> tuple[str, list[tuple[str, str]], str]:
    """``--kafka_source_topic``, ``--kafka_source_brokers``, ``--kafka_source_log_level``
    (``prefix`` replaces ``kafka_source``, as a named ``DefaultKafkaSourceCLIParser`` does)."""
    parser = _parser()
    parser.add_argument(f"--{prefix}_topic", dest="topic", default="")
    parser.add_argument(f"--{prefix}_brokers", dest="brokers", default="")
    parser.add_argument(f"--{prefix}_log_level", dest="log_level", default="Warn",
                        choices=_LOG_LEVELS)
    ns, _ = parser.parse_known_args(list(args))
    brokers = [_kafka_parse_broker(b) for b in ns.brokers.split(",")]
    return (ns.topic, brokers, ns.log_level)


def kafka_parse_sink_options(
    args: Sequence[str], prefix: str = "kafka_sink"
) -> tuple[str, list[tuple[str, str]], str, int, int]:
    """``--kafka_sink_topic``, ``_brokers``, ``_log_level``, ``_max_produce_buffer_ms``,
    ``_max_message_size`` ->
    ``(topic, brokers, log_level, max_produce_buffer_ms, max_message_size)`` (``prefix``
    replaces ``kafka_sink``)."""
    parser = _parser()
    parser.add_argument(f"--{prefix}_topic", dest="topic", default="")
    parser.add_argument(f"--{prefix}_brokers", dest="brokers", default="")
    parser.add_argument(f"--{prefix}_log_level", dest="log_level", default="Warn",
                        choices=_LOG_LEVELS)
    parser.add_argument(f"--{prefix}_max_produce_buffer_ms", dest="max_produce_buffer_ms",
                        type=int, default=0)
    parser.add_argument(f"--{prefix}_max_message_size", dest="max_message_size", type=int,
                        default=100000)
    ns, _ = parser.parse_known_args(list(args))
    brokers = [_kafka_parse_broker(b) for b in ns.brokers.split(",")]
    return (ns.topic, brokers, ns.log_level, ns.max_produce_buffer_ms, ns.max_message_size)


#: the config tuple of a ``DefaultKafkaSourceCLIParser``/``DefaultKafkaSinkCLIParser``: its
#: Kafka settings come from the command line under its name, once the args are known
KAFKA_INTERNAL = "kafka-internal"


def resolve_cli_configs(actions: list[Any], args: Sequence[str]) -> list[Any]:
    """``actions`` with each ``("kafka-internal", name, codec)`` config replaced by the Kafka
    config its ``--<name>_...`` flags in ``args`` give (what Wallaroo's runtime did with the
    process arguments)::

        resolve_cli_configs(ab.build(), ["--kafka_source_topic", "in", ...])
    """
    def source(config: Any) -> Any:
        if not _internal(config):
            return config
        topic, brokers, level = kafka_parse_source_options(args, config[1])
        _need_topic(topic, config[1])
        return ("kafka", topic, brokers, level, config[2])

    def sink(config: Any) -> Any:
        if not _internal(config):
            return config
        topic, *rest = kafka_parse_sink_options(args, config[1])
        _need_topic(topic, config[1])
        return ("kafka", topic, *rest, config[2])

    out = []
    for action in actions:
        kind = action[0] if isinstance(action, tuple) and action else None
        if kind == "new_pipeline":
            action = (*action[:2], source(action[2]), *action[3:])
        elif kind == "to_sink":
            action = (kind, sink(action[1]))
        elif kind == "to_sinks":
            action = (kind, [sink(c) for c in action[1]])
        out.append(action)
    return out


def _internal(config: Any) -> bool:
    return isinstance(config, tuple) and len(config) == 3 and config[0] == KAFKA_INTERNAL


def _need_topic(topic: str, name: str) -> None:
    if not topic:
        raise WallarooParameterError(
            f"Kafka config {name!r} (a Default*CLIParser) has no topic: give --{name}_topic "
            f"TOPIC and --{name}_brokers HOST:PORT[,...] after '--' on the command line."
        )
