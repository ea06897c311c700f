"""``nfbuilder compile | graph | validate | serve | run``.

Application arguments (what ``application_setup(args)`` receives) come after ``--``::

    nfbuilder compile apps/word_count.py -o build -- --in 0.0.0.0:7010 --out receiver:7002
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

EXIT_USAGE = 2


def _split(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def _plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--partitions", type=int, default=2,
                   help="partitions (ordered pods) per to_state_partition step (default 2)")
    p.add_argument("--max-replicas", type=int, default=4,
                   help="autoscaling ceiling of to_parallel vertices (default 4)")
    p.add_argument("--fuse", action="store_true",
                   help="coalesce runs of stateless steps (and the first run into the source)")
    p.add_argument("--state-store", metavar="URL",
                   help="sqlite:///path, redis://host:port/db or memory://")
    p.add_argument("--unordered", action="store_true",
                   help="let serial steps (to) run unordered and autoscaled: more throughput, "
                        "without Wallaroo's order")
    p.add_argument("--id-retention", type=float, default=120.0, metavar="SECONDS",
                   help="how long state keeps the ids of applied messages, to recognise a late "
                        "redelivery (at least the ISB's ackWait; default 120)")
    p.add_argument("--sink-retry-interval", type=float, default=0.05, metavar="SECONDS",
                   help="first wait before a sink retries a failed write (default 0.05)")
    p.add_argument("--sink-retry-cap", type=float, default=2.0, metavar="SECONDS",
                   help="longest wait between a sink's retries; it retries for as long as the "
                        "receiver is away (default 2)")
    p.add_argument("--max-frame", type=int, metavar="BYTES",
                   help="the largest frame a TCP source accepts (default 16 MiB); a bigger one "
                        "closes that connection")
    p.add_argument("--dead-letter-sink", default="log", metavar="SINK",
                   help="where dead letters go on Numaflow: log (the built-in log sink, "
                        "default), kafka://BROKER[,BROKER]/TOPIC or tcp://HOST:PORT")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nfbuilder", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="write Numaflow manifests, entrypoints and a Dockerfile")
    c.add_argument("app", help="application: path/to/app.py or an importable module name")
    c.add_argument("-o", "--output", default="build", help="output directory (default build/)")
    c.add_argument(
        "--image", default="nfbuilder-app:latest", help="container image of every vertex"
    )
    c.add_argument("--namespace", help="Kubernetes namespace to put in metadata")
    c.add_argument("--state-store-secret", metavar="NAME[:KEY]",
                   help="take the state store URL from this Secret (key 'url' by default)")
    c.add_argument("--state-key-secret", metavar="NAME[:KEY]",
                   help="sign state snapshots with the key in this Secret (key 'key' by "
                        "default), given to state vertices as NFBUILDER_STATE_KEY")
    c.add_argument("--isbsvc", metavar="NAME",
                   help="the InterStepBufferService the pipelines use (Numaflow's default: "
                        "'default')")
    _plan_args(c)

    g = sub.add_parser("graph", help="print the plan as a Mermaid flowchart or Graphviz dot")
    g.add_argument("app")
    g.add_argument("--format", choices=("mermaid", "dot"), default="mermaid")
    _plan_args(g)

    v = sub.add_parser(
        "validate", help="check manifests against the CRD schema and controller rules"
    )
    v.add_argument("files", nargs="+")

    s = sub.add_parser(
        "serve", help="serve one vertex over the Numaflow gRPC contract (in a container)"
    )
    s.add_argument("--app", required=True)
    s.add_argument("--vertex", required=True)
    s.add_argument("--fuse", action="store_true")
    s.add_argument("--dead-letter-sink", default="log")
    s.add_argument("--unordered", action="store_true")
    s.add_argument("--transformer", action="store_true",
                   help="serve the TCP source vertex's transformer (it decodes the frames)")

    r = sub.add_parser("run", help="run the whole application locally (embedded engine)")
    r.add_argument("app")
    _plan_args(r)
    r.add_argument("--until-idle", type=float, metavar="SECONDS",
                   help="stop after SECONDS with no message moving (once one has entered)")
    r.add_argument("--max-messages", type=int, metavar="N",
                   help="stop once N messages have reached the sinks")
    r.add_argument("--quiet", action="store_true", help="no status display")
    r.add_argument("--work-dir",
                   help="where sockets, logs and the default state store go (default: a new "
                        "temporary directory, so state starts empty; give the same one to resume)")
    r.add_argument("--redelivery-delay", type=float, default=0.0, metavar="SECONDS",
                   help="a restarted vertex gets its unacknowledged messages back only after "
                        "SECONDS, newer ones flowing meanwhile, as JetStream's ackWait does")
    r.add_argument("--fresh", action="store_true",
                   help="delete the app's state in the state store before the run")
    r.add_argument("--state-store-file", metavar="PATH",
                   help="read the state store URL from this file (keeps a password out of ps; "
                        "NFBUILDER_STATE_STORE in the environment does too)")
    r.add_argument("--dead-letters", metavar="FILE",
                   help="append dead letters here, one JSON object per line (default: "
                        "dead-letters.jsonl in the work dir)")
    r.add_argument("--busy-warning", type=float, default=10.0, metavar="SECONDS",
                   help="report a step busy on one message for longer than this (default 10)")
    r.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                   help="how long a stopping run waits for messages in flight (default 10)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    own, app_args = _split(sys.argv[1:] if argv is None else argv)
    ns = _parser().parse_args(own)
    try:
        if ns.command == "compile":
            return _compile(ns, app_args)
        if ns.command == "graph":
            return _graph(ns, app_args)
        if ns.command == "validate":
            return _validate(ns)
        if ns.command == "serve":
            return _serve(ns, app_args)
        if ns.command == "run":
            return _run(ns, app_args)
    except _UserError as exc:
        print(f"nfbuilder {ns.command}: {exc}", file=sys.stderr)
        return exc.code
    return EXIT_USAGE


class _UserError(Exception):
    """What the user gave cannot be used: printed as one line, exit ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _load_app(spec: str, args: list[str]):  # type: ignore[no-untyped-def]
    from nfbuilder.dsl import WallarooParameterError
    from nfbuilder.loader import AppLoadError, load_app

    try:
        return load_app(spec, args)
    except AppLoadError as exc:
        raise _UserError(str(exc)) from None
    except WallarooParameterError as exc:  # raised by build() outside application_setup frames
        raise _UserError(f"{spec}: {exc}") from None


def _options(ns: argparse.Namespace):  # type: ignore[no-untyped-def]
    from nfbuilder.plan import PlanOptions

    try:
        return PlanOptions(
            image=getattr(ns, "image", "nfbuilder-app:latest"),
            namespace=getattr(ns, "namespace", None),
            partitions=ns.partitions,
            max_replicas=ns.max_replicas,
            fuse=ns.fuse,
            state_store=ns.state_store,
            state_store_secret=getattr(ns, "state_store_secret", None),
            state_key_secret=getattr(ns, "state_key_secret", None),
            ordered=not ns.unordered,
            id_retention_s=ns.id_retention,
            sink_retry_interval=ns.sink_retry_interval,
            sink_retry_cap=ns.sink_retry_cap,
            isbsvc=getattr(ns, "isbsvc", None),
            dead_letters=ns.dead_letter_sink,
            max_frame=ns.max_frame,
        )
    except ValueError as exc:
        raise _UserError(f"bad option: {exc}") from None


def _load(spec: str, args: list[str], ns: argparse.Namespace):  # type: ignore[no-untyped-def]
    from nfbuilder.plan import AppRef, plan

    options = _options(ns)
    loaded = _load_app(spec, args)
    return loaded, plan(loaded.app, options, AppRef(loaded.module_name, loaded.args))


def _serve(ns: argparse.Namespace, app_args: list[str]) -> int:
    import logging

    from nfbuilder.runtime.server import bind_to_parent
    from nfbuilder.runtime.settings import Settings, SettingsError
    from nfbuilder.runtime.state.store import StateStoreError
    from nfbuilder.runtime.vertex import ServeError, build_program, serve_program

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise _UserError(str(exc)) from None
    bind_to_parent(settings.parent_pid)
    loaded = _load_app(ns.app, app_args)
    try:
        program = build_program(loaded, ns.vertex, fuse=ns.fuse,
                                state_store=settings.state_store, digest=settings.plan_digest,
                                id_retention_s=settings.id_retention_s,
                                partition=settings.replica,
                                dead_letters=ns.dead_letter_sink, ordered=not ns.unordered)
    except KeyError as exc:
        raise _UserError(str(exc.args[0])) from None
    except ServeError as exc:  # a built-in vertex, or a plan other than the manifest's
        raise _UserError(str(exc)) from None
    except StateStoreError as exc:  # unreachable store: say which (password masked) and stop
        raise _UserError(f"vertex {ns.vertex!r}: {exc}", code=1) from None
    try:
        return serve_program(program, settings, transformer=ns.transformer)
    except ServeError as exc:  # --transformer for a vertex without one (checked first)
        raise _UserError(str(exc)) from None


def _run(ns: argparse.Namespace, app_args: list[str]) -> int:
    import logging

    from nfbuilder.local.engine import Engine, EngineError, EngineOptions

    for name in ("redelivery_delay", "grace"):
        if getattr(ns, name) < 0:
            flag = "--" + name.replace("_", "-")
            raise _UserError(f"bad option: {flag} must be >= 0, got {getattr(ns, name)}")
    ns.state_store = _run_store_url(ns)
    for name in ("until_idle", "max_messages", "busy_warning"):
        value = getattr(ns, name)
        if value is not None and value <= 0:
            flag = "--" + name.replace("_", "-")
            raise _UserError(f"bad option: {flag} must be > 0, got {value}")
    options = EngineOptions(
        plan=_options(ns), until_idle=ns.until_idle, max_messages=ns.max_messages,
        quiet=ns.quiet, work_dir=ns.work_dir, fresh=ns.fresh,
        redelivery_delay=ns.redelivery_delay, dead_letters=ns.dead_letters,
        busy_warning_s=ns.busy_warning, grace_s=ns.grace,
    )
    loaded = _load_app(ns.app, app_args)
    logging.basicConfig(level=logging.WARNING)
    try:
        return _event_loop_run(Engine(loaded, options).run())
    except EngineError as exc:
        raise _UserError(str(exc), code=1) from None


def _has_credentials(url: str) -> bool:
    """Whether ``url`` names a user or password (``scheme://user:pw@host/...``)."""
    return "@" in url.strip().partition("://")[2].split("/", 1)[0]


def _run_store_url(ns: argparse.Namespace) -> str | None:
    """The store URL of ``run``: ``--state-store`` (refused with a password in it: every user
    sees a command line in ``ps``), else ``--state-store-file``, else NFBUILDER_STATE_STORE."""
    import os

    from nfbuilder.plan.graph import STATE_STORE_ENV

    if ns.state_store:
        if _has_credentials(ns.state_store):
            raise _UserError(
                "--state-store has credentials in it, which every user of this machine can "
                f"read in ps; put the URL in a file (--state-store-file PATH) or in "
                f"{STATE_STORE_ENV}")
        return str(ns.state_store)
    if ns.state_store_file:
        try:
            with open(ns.state_store_file, encoding="utf-8") as f:
                url = f.read().strip()
        except OSError as exc:
            raise _UserError(f"--state-store-file {ns.state_store_file}: {exc.strerror}") \
                from None
        if not url:
            raise _UserError(f"--state-store-file {ns.state_store_file} is empty")
        return url
    return os.environ.get(STATE_STORE_ENV, "").strip() or None


def _event_loop_run(main: Any) -> int:
    """Run the engine on uvloop where it is installed (its loop costs less per message)."""
    try:
        import uvloop
    except ImportError:  # not on Windows
        import asyncio

        return int(asyncio.run(main))
    return int(uvloop.run(main))


def _compile(ns: argparse.Namespace, app_args: list[str]) -> int:
    from nfbuilder import __version__
    from nfbuilder.emit.artifacts import render_artifacts, write_artifacts

    store = (ns.state_store or "").strip()
    # any Redis form (redis://, rediss://, redis+tls://, ...), and any URL with credentials
    if store.split(":", 1)[0].lower().startswith("redis") or _has_credentials(store):
        raise _UserError(
            "a Redis URL would be written into the manifest as plain text; keep it in a Secret "
            "instead: kubectl create secret generic NAME --from-literal=url=<redis URL>, then "
            "compile with --state-store-secret NAME[:KEY]"
        )
    loaded, graph = _load(ns.app, app_args, ns)
    files = render_artifacts(graph, app_file=loaded.path, version=__version__)
    write_artifacts(files, ns.output)
    for line in graph.describe():
        print(line)
    store = graph.options.state_store_secret or graph.options.state_store
    if any(v.state_name for v in graph.vertices()) and not store:
        print("note: no --state-store given: state vertices use memory:// (not durable); "
              "use --state-store-secret NAME for a Redis URL kept in a Secret", file=sys.stderr)
    elif any(v.state_name for v in graph.vertices()) and not graph.options.state_key_secret:
        print("note: no --state-key-secret given: state snapshots are not signed, so whoever "
              "can write the store can run code in the state vertices", file=sys.stderr)
    print(f"wrote {ns.output}/pipeline.yaml, {ns.output}/Dockerfile and "
          f"{sum(1 for f in files if f.startswith('entrypoints/'))} entrypoints")
    return 0


def _graph(ns: argparse.Namespace, app_args: list[str]) -> int:
    from nfbuilder.emit.diagram import render

    _, graph = _load(ns.app, app_args, ns)
    sys.stdout.write(render(graph, ns.format))
    return 0


def _validate(ns: argparse.Namespace) -> int:
    from nfbuilder.emit.manifest_schema import MissingDependencyError
    from nfbuilder.emit.validate import check_file

    bad = 0
    for path in ns.files:
        try:
            findings = check_file(path)
        except MissingDependencyError as exc:
            raise _UserError(str(exc)) from None
        except OSError as exc:
            raise _UserError(f"{path}: {exc.strerror}") from None
        for finding in findings:
            print(f"{path}: {finding}")
        bad += len(findings)
        if not findings:
            print(f"{path}: ok")
    return 1 if bad else 0
