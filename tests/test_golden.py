"""Every example app compiles to exactly its checked-in ``apps/<name>.pipeline.yaml``."""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nfbuilder.emit.validate import check_file

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the example apps live in the repository, not in the package
    sys.path.insert(0, str(ROOT))
from apps import goldens  # noqa: E402 - importable only after ROOT is on sys.path

#: every example app, with or without an apps.data module (those are for the TCP examples)
APPS = sorted(goldens.ARGS)

REGEN = ROOT / "scripts" / "regen_golden.py"


def test_every_example_app_has_a_golden() -> None:
    apps = {p.stem for p in (ROOT / "apps").glob("*.py")} - {"__init__", "goldens"}
    assert sorted(apps) == APPS, "give each app in apps/ its golden args in apps/goldens.py"


@pytest.mark.parametrize("name", APPS)
def test_manifest_matches_golden(name: str) -> None:
    path = goldens.golden_path(name)
    assert path.exists(), (
        f"{path.relative_to(ROOT)} is missing: run `make regen` "
        "(python scripts/regen_golden.py) and commit it."
    )
    expected = path.read_bytes()
    actual = goldens.render(name).encode()
    if actual != expected:
        diff = "".join(difflib.unified_diff(
            expected.decode().splitlines(keepends=True), actual.decode().splitlines(keepends=True),
            str(path.relative_to(ROOT)), "compiled now", n=2,
        ))
        pytest.fail(
            f"apps/{name}.py no longer compiles to {path.relative_to(ROOT)}. If the change is "
            f"intended, run `make regen` and review the diff; otherwise fix the emitter.\n"
            f"{diff[:4000]}"
        )


@pytest.mark.parametrize("name", APPS)
def test_golden_is_a_valid_manifest(name: str) -> None:
    assert [str(f) for f in check_file(goldens.golden_path(name))] == []


def test_render_unknown_app_says_which_apps_exist() -> None:
    with pytest.raises(KeyError, match="no golden args for app 'nope'; known apps: alphabet"):
        goldens.render("nope")


def test_regen_refuses_under_ci() -> None:
    before = {n: goldens.golden_path(n).read_bytes() for n in APPS}
    env = {**os.environ, "CI": "true"}
    done = subprocess.run([sys.executable, str(REGEN)], check=False, env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 1
    assert "refusing to rewrite the golden files because CI is set (CI='true')" in done.stderr
    assert done.stdout == ""
    assert before == {n: goldens.golden_path(n).read_bytes() for n in APPS}
