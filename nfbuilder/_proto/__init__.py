"""Generated gRPC/protobuf code for the Numaflow v1 services. Do not edit.

Regenerate with ``make proto`` (``python scripts/gen_proto.py``) from ``proto/nfbuilder/proto/``.

Example::

    from nfbuilder._proto import map_pb2, map_pb2_grpc
"""
