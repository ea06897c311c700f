"""``python -m nfbuilder compile | validate | graph`` as a user runs them (subprocesses)."""

from __future__ import annotations

import py_compile
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MARKET_SPREAD = ROOT / "apps" / "market_spread.py"
MARKET_ARGS = ["--", "--in", "127.0.0.1:7010,127.0.0.1:7011", "--out", "127.0.0.1:7002"]


def nfbuilder(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nfbuilder", *map(str, args)], check=False,
                          cwd=cwd,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def build(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """market_spread compiled once into <tmp>/build (shared: each subprocess costs ~0.5 s)."""
    cwd = tmp_path_factory.mktemp("compile")
    done = nfbuilder("compile", MARKET_SPREAD, "-o", "build", *MARKET_ARGS, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return cwd / "build", done


# ------------------------------------------------------------ compile


def test_compile_writes_manifest_entrypoints_dockerfile_and_app(build) -> None:  # type: ignore[no-untyped-def]
    out, _ = build
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "Dockerfile",
        "entrypoints/market-data-source.py",
        "entrypoints/orders-sink.py",
        "entrypoints/orders-source.py",
        "entrypoints/symbol-data.py",
        "market_spread.py",
        "pipeline.yaml",
    ]
    assert (out / "market_spread.py").read_bytes() == MARKET_SPREAD.read_bytes()
    # the CLI writes exactly the golden manifest for the golden args
    assert (out / "pipeline.yaml").read_bytes() == (
        ROOT / "apps" / "market_spread.pipeline.yaml").read_bytes()
    assert not [p for p in out.rglob(".nfb-*")]  # no temp files left over


def test_compile_has_an_entrypoint_for_every_container_vertex(build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out, _ = build
    docs = list(yaml.safe_load_all((out / "pipeline.yaml").read_text()))
    names = {v["name"] for d in docs if d["kind"] == "Pipeline" for v in d["spec"]["vertices"]
             if "log" not in v.get("sink", {})}  # the dead-letter sink is Numaflow's log sink
    assert {p.stem for p in (out / "entrypoints").glob("*.py")} == names
    for entry in (out / "entrypoints").glob("*.py"):
        # bytecode goes to tmp_path: the shared build directory stays as compile left it
        py_compile.compile(str(entry), cfile=str(tmp_path / (entry.name + "c")), doraise=True)
    text = (out / "entrypoints" / "symbol-data.py").read_text()
    assert ("main(['serve', '--app', 'market_spread', '--vertex', 'symbol-data', '--', '--in', "
            "'127.0.0.1:7010,127.0.0.1:7011', '--out', '127.0.0.1:7002'])") in text


def test_compile_prints_one_line_per_vertex(build) -> None:  # type: ignore[no-untyped-def]
    _, done = build
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [
        "market-spread/orders-source", "market-spread/symbol-data", "market-spread/orders-sink",
        "market-spread/market-data-source", "market-spread/dead-letters"]
    assert lines[-1] == "wrote build/pipeline.yaml, build/Dockerfile and 4 entrypoints"
    assert "note: no --state-store given: state vertices use memory:// (not durable)" in (
        done.stderr)


# ------------------------------------------------------------ validate


def test_validate_compiled_manifest_is_ok(build) -> None:  # type: ignore[no-untyped-def]
    out, _ = build
    done = nfbuilder("validate", "pipeline.yaml", cwd=out)
    assert (done.returncode, done.stdout) == (0, "pipeline.yaml: ok\n")


def test_validate_broken_manifest_exits_1(build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out, _ = build
    docs = list(yaml.safe_load_all((out / "pipeline.yaml").read_text()))
    state = next(v for v in docs[0]["spec"]["vertices"] if v["name"] == "symbol-data")
    state["scale"] = {"min": 1, "max": 3}  # ordered vertices must not scale
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump_all(docs))
    done = nfbuilder("validate", broken, cwd=tmp_path)
    assert done.returncode == 1
    assert "ordered vertices must not set scale" in done.stdout
    assert done.stdout.startswith(f"{broken}: doc 0: spec.vertices[1].scale")


def test_validate_missing_file_exits_1_and_says_so(tmp_path: Path) -> None:
    done = nfbuilder("validate", "nothere.yaml", cwd=tmp_path)
    assert done.returncode == 1
    assert "cannot read 'nothere.yaml'" in done.stdout


# ------------------------------------------------------------ graph


def reaches(edges: list[tuple[str, str]], start: str, goal: str) -> bool:
    seen, todo = {start}, [start]
    while todo:
        node = todo.pop()
        for a, b in edges:
            if a == node and b not in seen:
                seen.add(b)
                todo.append(b)
    return goal in seen


def test_graph_mermaid_joins_both_sources_at_the_state(tmp_path: Path) -> None:
    done = nfbuilder("graph", MARKET_SPREAD, *MARKET_ARGS, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("flowchart LR\n")
    edges = re.findall(r"^\s+(\w+) -->(?:\|[^|]*\|)? (\w+)$", done.stdout, re.MULTILINE)
    state = "market_spread__symbol_data"
    assert reaches(edges, "market_spread__orders_source", state)
    assert reaches(edges, "market_spread__market_data_source", state)
    assert "market_spread__symbol_data -->|orders| market_spread__orders_sink" in done.stdout
    assert not list(tmp_path.iterdir())  # graph writes nothing


def test_graph_dot(tmp_path: Path) -> None:
    done = nfbuilder("graph", MARKET_SPREAD, "--format", "dot", *MARKET_ARGS, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("digraph nfbuilder {") and done.stdout.endswith("}\n")
    edges = re.findall(r'^\s+"(\w+)" -> "(\w+)"', done.stdout, re.MULTILINE)
    for source in ("market_spread__orders_source", "market_spread__market_data_source"):
        assert reaches(edges, source, "market_spread__symbol_data")
    assert '"market_spread__symbol_data" [shape=cylinder' in done.stdout


# ------------------------------------------------------------ user errors


SETUP = "import nfbuilder as wallaroo\n\n\ndef application_setup(args):\n"

# case -> (module source, line the message must name (None: the file only), text it must hold)
BAD_APPS: dict[str, tuple[str, int | None, str]] = {
    "syntax": ("def application_setup(args)\n    return []\n", 1,
               "importing 'bad' failed: SyntaxError"),
    "raises": (SETUP + "    raise RuntimeError('boom')\n", 5, "application_setup failed: boom"),
    "no setup": ("X = 1\n", None,
                 ("the module defines no application_setup(args) function. "
                 "Add one that returns ApplicationBuilder(...)...build().")),
    "wallaroo error": (
        SETUP + "    ab = wallaroo.ApplicationBuilder('a')\n    ab.done()\n    return ab.build()\n",
        7, "application_setup failed: done() was called before any pipeline"),
    "missing --in": (SETUP + "    return wallaroo.tcp_parse_input_addrs(args)\n", 5,
                     "application_setup failed: Missing --in: give the addresses as --in"),
    "arity at import": (
        ("import nfbuilder as wallaroo\n\n\n@wallaroo.computation(name='c')\n"
        "def c(a, b):\n    return a\n"),
        4, "Incompatible function arity, your function must allow 1 arguments."),
}


@pytest.mark.parametrize("case", sorted(BAD_APPS))
def test_user_errors_are_one_short_line_exit_2_and_no_output(case: str, tmp_path: Path) -> None:
    source, line, text = BAD_APPS[case]
    app = tmp_path / "bad.py"
    app.write_text(source)
    done = nfbuilder("compile", "bad.py", "-o", "out", "--", "--x", "1", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    message = done.stderr
    assert message.count("\n") == 1 and message.endswith("\n"), message  # one line
    assert len(message.replace(str(tmp_path), "")) < 250 and "Traceback" not in message
    where = f"{app}:{line}: " if line else f"{app}: "
    assert message.startswith(f"nfbuilder compile: {where}"), message
    assert text in message
    assert not (tmp_path / "out").exists()


def test_missing_app_file(tmp_path: Path) -> None:
    done = nfbuilder("compile", "nope.py", "-o", "out", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == (
        "nfbuilder compile: nope.py: no such file. Give a .py file or an importable module name.\n"
    )
    assert not (tmp_path / "out").exists()


def test_graph_reports_user_errors_the_same_way(tmp_path: Path) -> None:
    done = nfbuilder("graph", "nope.py", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("nfbuilder graph: nope.py: no such file.")
