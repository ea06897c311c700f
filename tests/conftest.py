"""Shared test setup: the example apps and the test helpers are importable by module name."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "apps"), os.path.join(ROOT, "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)

# Fixtures shared across test modules: a real redis-server (redis_server).
pytest_plugins = ("redis_server",)
