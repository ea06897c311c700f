"""Compatibility module: ``import wallaroo`` gives nfbuilder's Wallaroo API, so a Wallaroo
application runs unchanged."""

from nfbuilder import *  # noqa: F403
from nfbuilder import __all__  # noqa: F401
