"""Errors raised by the runtime and the text/details the gRPC error contract needs.

Example::

    raise UserCodeError("step 'double' (app.py:12, double()) raised ValueError('x')", tb_text)
"""

from __future__ import annotations

import traceback

from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

#: Numaflow's placeholder when NUMAFLOW_UD_CONTAINER_TYPE is unset.
UNKNOWN_CONTAINER = "unknown-container"

#: gRPC status code INTERNAL, as the contract requires for user-code errors.
INTERNAL_CODE = 13


class UserCodeError(Exception):
    """User code (a step's function, decoder, encoder...) failed while handling a message.

    ``message`` names the step and the user function (file:line) and says what was raised;
    ``traceback_text`` is the formatted traceback of the original exception; ``step`` is the
    name of the step whose code failed (None: the decoder or an encoder), ``function`` the user
    function, for the dead-letter record and the step's error policy.

    Example::

        try:
            out = fn(data)
        except Exception as exc:
            raise UserCodeError(f"step 'double' raised {exc!r}", traceback.format_exc()) from exc
    """

    def __init__(self, message: str, traceback_text: str = "", *, step: str | None = None,
                 function: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.traceback_text = traceback_text
        self.step = step
        self.function = function


def describe(exc: BaseException) -> tuple[str, str]:
    """``(message, traceback_text)`` for any exception raised by a handler.

    Example::

        message, tb = describe(ValueError("boom"))  # ("ValueError('boom')", "Traceback ...")
    """
    if isinstance(exc, UserCodeError):
        return exc.message, exc.traceback_text
    return repr(exc), "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def udf_error_message(container_type: str | None, message: str, *, prefix: str = "") -> str:
    """The gRPC status message numa expects (it parses the container between the parentheses).

    Example::

        udf_error_message("udsink", "x", prefix="UDSinkError, ")
        # 'UDF_EXECUTION_ERROR(udsink): UDSinkError, x'
    """
    return f"UDF_EXECUTION_ERROR({container_type or UNKNOWN_CONTAINER}): {prefix}{message}"


def status_details(status_message: str, traceback_text: str) -> bytes:
    """Serialized ``google.rpc.Status`` for the ``grpc-status-details-bin`` trailer.

    Example::

        status_details("UDF_EXECUTION_ERROR(udf): ValueError('x')", "Traceback ...")
    """
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.DebugInfo(detail=traceback_text))
    return status_pb2.Status(
        code=INTERNAL_CODE, message=status_message, details=[detail]
    ).SerializeToString()
