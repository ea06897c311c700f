"""Without an optional extra (jsonschema, redis) the user gets an instruction, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nfbuilder.cli import main
from nfbuilder.emit import manifest_schema
from nfbuilder.emit.manifest_schema import MissingDependencyError
from nfbuilder.emit.validate import check_pipeline
from nfbuilder.runtime.state import StateStoreError, open_store

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "apps" / "reverse.pipeline.yaml"
NO_JSONSCHEMA = (
    "checking a manifest against the Numaflow CRD schema needs the jsonschema package, which "
    "is not installed: pip install 'nfbuilder[validate]'"
)


@pytest.fixture
def no_jsonschema(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``import jsonschema`` fails, and no validator built earlier in this process is reused."""
    manifest_schema._validator.cache_clear()
    monkeypatch.setitem(sys.modules, "jsonschema", None)
    yield
    manifest_schema._validator.cache_clear()


@pytest.mark.usefixtures("no_jsonschema")
def test_validating_without_jsonschema_says_what_to_install() -> None:
    with pytest.raises(MissingDependencyError) as err:
        check_pipeline({"apiVersion": "numaflow.numaproj.io/v1alpha1", "kind": "Pipeline"})
    assert str(err.value) == NO_JSONSCHEMA
    assert isinstance(err.value, ImportError)  # code catching ImportError keeps working


@pytest.mark.usefixtures("no_jsonschema")
def test_validate_command_without_jsonschema_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["validate", str(GOLDEN)]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"nfbuilder validate: {NO_JSONSCHEMA}\n")


def test_redis_store_without_redis_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(StateStoreError) as err:
        open_store("redis://:secret@localhost:6379/0", namespace="t")
    assert str(err.value) == (
        "Redis state store redis://:***@localhost:6379/0 needs the redis package, which is not "
        "installed: pip install 'nfbuilder[redis]' (or use a sqlite:/// store)"
    )


@pytest.mark.parametrize(("package", "module"), [
    ("jsonschema", "nfbuilder.emit.validate"),
    ("redis", "nfbuilder.runtime.state.redis_store"),
])
def test_modules_import_without_their_extra(package: str, module: str) -> None:
    code = f"import sys; sys.modules[{package!r}] = None; import {module}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
