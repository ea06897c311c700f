"""Golden manifests of the example apps: fixed app args per app, and the rendering compared byte
for byte with ``apps/<name>.pipeline.yaml``.

::

    from apps import goldens
    text = goldens.render("reverse")            # what apps/reverse.pipeline.yaml must hold
    goldens.golden_path("reverse")              # .../apps/reverse.pipeline.yaml

Regenerate the files with ``make regen`` (``python scripts/regen_golden.py``).
"""

from __future__ import annotations

from pathlib import Path

APPS_DIR = Path(__file__).resolve().parent

_TCP = ("--in", "127.0.0.1:7010", "--out", "127.0.0.1:7002")

#: app name -> the arguments ``application_setup`` receives after the program name.
ARGS: dict[str, tuple[str, ...]] = {
    "reverse": _TCP,
    "celsius": _TCP,
    "celsius_kafka": (
        *("--kafka_source_topic", "test-in", "--kafka_source_brokers", "127.0.0.1:9092"),
        *("--kafka_sink_topic", "test-out", "--kafka_sink_brokers", "127.0.0.1:9092"),
        *("--kafka_sink_max_message_size", "100000", "--kafka_sink_max_produce_buffer_ms", "10"),
    ),
    "alphabet": _TCP,
    "alphabet_partitioned": _TCP,
    "word_count": _TCP,
    # Two sources: orders first, market data second.
    "market_spread": ("--in", "127.0.0.1:7010,127.0.0.1:7011", "--out", "127.0.0.1:7002"),
    "sequence_window": _TCP,
    "async_enrich": _TCP,
    "prime_factors": _TCP,
    "log_levels": ("--file", "/var/log/app.log", "--out", "127.0.0.1:7002"),
}


def app_path(name: str) -> Path:
    """``apps/<name>.py``."""
    return APPS_DIR / f"{name}.py"


def golden_path(name: str) -> Path:
    """``apps/<name>.pipeline.yaml``."""
    return APPS_DIR / f"{name}.pipeline.yaml"


def render(name: str) -> str:
    """The ``pipeline.yaml`` that ``nfbuilder compile apps/<name>.py -- ARGS[name]`` writes with
    default options."""
    # Imported here so that listing ARGS does not import nfbuilder.
    from nfbuilder.emit.artifacts import render_artifacts
    from nfbuilder.loader import load_app
    from nfbuilder.plan import AppRef, PlanOptions, plan

    if name not in ARGS:
        raise KeyError(f"no golden args for app {name!r}; known apps: {', '.join(sorted(ARGS))}")
    args = ARGS[name]
    loaded = load_app(str(app_path(name)), args)
    graph = plan(loaded.app, PlanOptions(), AppRef(loaded.module_name, tuple(args)))
    files = render_artifacts(graph)
    return files["pipeline.yaml"].decode()
