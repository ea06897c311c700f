"""The Wallaroo application-builder API (builder, decorators, configs, CLI helpers, validation)."""

from nfbuilder.dsl.args import (
    kafka_parse_sink_options,
    kafka_parse_source_options,
    tcp_parse_input_addrs,
    tcp_parse_output_addrs,
)
from nfbuilder.dsl.builder import ApplicationBuilder
from nfbuilder.dsl.configs import (
    KafkaSinkConfig,
    KafkaSourceConfig,
    StateBuilder,
    TCPSinkConfig,
    TCPSourceConfig,
)
from nfbuilder.dsl.decorators import (
    Computation,
    ComputationMulti,
    Decoder,
    Encoder,
    Partition,
    StateComputation,
    StateComputationMulti,
    computation,
    computation_multi,
    decoder,
    encoder,
    partition,
    state_computation,
    state_computation_multi,
)
from nfbuilder.dsl.errors import WallarooParameterError

__all__ = [
    "ApplicationBuilder",
    "Computation",
    "ComputationMulti",
    "Decoder",
    "Encoder",
    "KafkaSinkConfig",
    "KafkaSourceConfig",
    "Partition",
    "StateBuilder",
    "StateComputation",
    "StateComputationMulti",
    "TCPSinkConfig",
    "TCPSourceConfig",
    "WallarooParameterError",
    "computation",
    "computation_multi",
    "decoder",
    "encoder",
    "kafka_parse_sink_options",
    "kafka_parse_source_options",
    "partition",
    "state_computation",
    "state_computation_multi",
    "tcp_parse_input_addrs",
    "tcp_parse_output_addrs",
]
