"""Wallaroo's command-line helpers for ``application_setup(args)``.

Flag names, defaults and return types are Wallaroo's (ports stay strings); unknown arguments are
ignored, so each helper can be given the whole ``args`` list::

    tcp_parse_input_addrs(["app", "--in", "127.0.0.1:7010,127.0.0.1:7011"])
    # [('127.0.0.1', '7010'), ('127.0.0.1', '7011')]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

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


def kafka_parse_source_options(args: Sequence[str]) -> tuple[str, list[tuple[str, str]], str]:
    """``--kafka_source_topic``, ``--kafka_source_brokers``, ``--kafka_source_log_level``."""
    parser = _parser()
    parser.add_argument("--kafka_source_topic", default="")
    parser.add_argument("--kafka_source_brokers", default="")
    parser.add_argument("--kafka_source_log_level", default="Warn", choices=_LOG_LEVELS)
    ns, _ = parser.parse_known_args(list(args))
    brokers = [_kafka_parse_broker(b) for b in ns.kafka_source_brokers.split(",")]
    return (ns.kafka_source_topic, brokers, ns.kafka_source_log_level)


def kafka_parse_sink_options(
    args: Sequence[str],
) -> tuple[str, list[tuple[str, str]], str, int, int]:
    """``--kafka_sink_topic``, ``_brokers``, ``_log_level``, ``_max_produce_buffer_ms``,
    ``_max_message_size`` ->
    ``(topic, brokers, log_level, max_produce_buffer_ms, max_message_size)``."""
    parser = _parser()
    parser.add_argument("--kafka_sink_topic", default="")
    parser.add_argument("--kafka_sink_brokers", default="")
    parser.add_argument("--kafka_sink_log_level", default="Warn", choices=_LOG_LEVELS)
    parser.add_argument("--kafka_sink_max_produce_buffer_ms", type=int, default=0)
    parser.add_argument("--kafka_sink_max_message_size", type=int, default=100000)
    ns, _ = parser.parse_known_args(list(args))
    brokers = [_kafka_parse_broker(b) for b in ns.kafka_sink_brokers.split(",")]
    return (
        ns.kafka_sink_topic,
        brokers,
        ns.kafka_sink_log_level,
        ns.kafka_sink_max_produce_buffer_ms,
        ns.kafka_sink_max_message_size,
    )
