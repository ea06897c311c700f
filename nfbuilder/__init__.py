"""nfbuilder: write Numaflow streaming apps with the Wallaroo Python API.

``import nfbuilder as wallaroo`` is enough to port a Wallaroo 0.4/0.5 application::

    import nfbuilder as wallaroo

    def application_setup(args):
        in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
        out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
        ab = wallaroo.ApplicationBuilder("Reverse Word")
        ab.new_pipeline("reverse", wallaroo.TCPSourceConfig(in_host, in_port, decode))
        ab.to(reverse)
        ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode))
        return ab.build()
"""

from nfbuilder.codec import deserialize, serialize
from nfbuilder.dsl import *  # noqa: F403 - re-exports the Wallaroo API (names in dsl.__all__)
from nfbuilder.dsl import __all__ as _dsl_all

__version__ = "0.1.0"
__all__ = [*_dsl_all, "deserialize", "serialize"]


def __getattr__(name: str) -> type:
    """Wallaroo 0.5's per-function classes: ``wallaroo.Computation__double``."""
    from nfbuilder.dsl.decorators import function_class

    return function_class(name, __name__)
