"""Thin gRPC servicers for the Numaflow v1 services, over plain-Python handlers.

A servicer only speaks the protocol; :mod:`nfbuilder.runtime.server` owns sockets, the
server-info file, signals and shutdown, and :mod:`nfbuilder.runtime.stream` the shared
handshake/EOT/error logic. The same servicer objects are served by grpc.aio and by the h2
transport (:mod:`nfbuilder.runtime.h2server` reads their methods from the generated
``add_*Servicer_to_server`` functions; the sink's from ``sink.add_to_server``, the same with
responses it writes as bytes).

Example::

    from nfbuilder.runtime.servicers import MapServicer
"""

from nfbuilder.runtime.servicers.mapper import MapServicer, TransformerServicer
from nfbuilder.runtime.servicers.sink import SinkServicer
from nfbuilder.runtime.servicers.source import SourceServicer

__all__ = ["MapServicer", "SinkServicer", "SourceServicer", "TransformerServicer"]
