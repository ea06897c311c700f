"""Generate nfbuilder/_proto/ from proto/nfbuilder/proto/*.proto.

Usage::

    python scripts/gen_proto.py           # regenerate nfbuilder/_proto/ in place
    python scripts/gen_proto.py --check   # exit 1 if the committed files are stale

The .proto files live under ``proto/nfbuilder/proto/`` so that protoc registers them in the
descriptor pool as ``nfbuilder/proto/<name>.proto``: they cannot collide with pynumaflow's files
(``pynumaflow/proto/...``). protoc derives Python imports from that path
(``from nfbuilder.proto import ...``); this script rewrites them to the real package
``nfbuilder._proto``, which keeps the generated code out of the public namespace.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.resources
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_DIR = PROTO_ROOT / "nfbuilder" / "proto"
OUT_DIR = ROOT / "nfbuilder" / "_proto"

# protoc's import path and the package the files really live in.
_PROTOC_MODULE = "nfbuilder.proto"
_REAL_MODULE = "nfbuilder._proto"

_INIT_TEXT = '''"""Generated gRPC/protobuf code for the Numaflow v1 services. Do not edit.

Regenerate with ``make proto`` (``python scripts/gen_proto.py``) from ``proto/nfbuilder/proto/``.

Example::

    from nfbuilder._proto import map_pb2, map_pb2_grpc
"""
'''


def _protoc(out: Path) -> None:
    """Run grpc_tools.protoc over every .proto file, writing the package tree under ``out``."""
    from grpc_tools import protoc  # imported lazily: only needed by this dev script

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_DIR.glob("*.proto"))
    if not protos:
        raise SystemExit(f"gen_proto: no .proto files found in {PROTO_DIR}")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"gen_proto: protoc failed with exit code {code}; args: {args}")


def generate(dest: Path) -> None:
    """Generate the final ``nfbuilder/_proto`` file set into ``dest`` (created/emptied)."""
    with tempfile.TemporaryDirectory(prefix="nfb-proto-") as tmp:
        raw = Path(tmp)
        _protoc(raw)
        produced = raw / "nfbuilder" / "proto"
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for src in sorted(produced.iterdir()):
            if src.suffix not in (".py", ".pyi"):
                continue
            text = src.read_text(encoding="utf-8")
            text = text.replace(f"from {_PROTOC_MODULE} import", f"from {_REAL_MODULE} import")
            (dest / src.name).write_text(text, encoding="utf-8")
        (dest / "__init__.py").write_text(_INIT_TEXT, encoding="utf-8")


def _differences(expected: Path, actual: Path) -> list[str]:
    names = {p.name for p in expected.iterdir()} | (
        {p.name for p in actual.iterdir() if p.is_file() and p.suffix in (".py", ".pyi")}
        if actual.is_dir()
        else set()
    )
    diffs = []
    for name in sorted(names):
        want, have = expected / name, actual / name
        if not want.exists():
            diffs.append(f"{name}: not produced by the .proto files (stale, delete it)")
        elif not have.exists():
            diffs.append(f"{name}: missing")
        elif not filecmp.cmp(want, have, shallow=False):
            diffs.append(f"{name}: differs")
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="verify nfbuilder/_proto is up to date; write nothing"
    )
    opts = parser.parse_args(argv)
    if not opts.check:
        generate(OUT_DIR)
        print(f"gen_proto: wrote {OUT_DIR.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory(prefix="nfb-proto-check-") as tmp:
        fresh = Path(tmp) / "_proto"
        generate(fresh)
        diffs = _differences(fresh, OUT_DIR)
    if diffs:
        print(
            "gen_proto --check: nfbuilder/_proto is out of date with proto/:\n  "
            + "\n  ".join(diffs)
            + "\nRun `make proto` (python scripts/gen_proto.py) and commit the result. "
            "(Generated code also depends on the installed grpcio-tools version.)",
            file=sys.stderr,
        )
        return 1
    print("gen_proto --check: nfbuilder/_proto is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
