"""How compile puts the state store into manifests: never a Redis URL in plain text."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from engine_harness import ROOT

APP = str(Path(ROOT) / "apps" / "alphabet.py")
ARGS = ["--", "--in", "127.0.0.1:7010", "--out", "127.0.0.1:7002"]


def compile_(tmp_path: Path, *opts: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nfbuilder", "compile", APP, "-o", str(tmp_path / "out"), *opts,
         *ARGS], capture_output=True, text=True, cwd=tmp_path, timeout=120)


def state_env(tmp_path: Path) -> dict:
    doc = next(yaml.safe_load_all((tmp_path / "out" / "pipeline.yaml").read_text()))
    vertex = next(v for v in doc["spec"]["vertices"] if v["name"] == "letter-state")
    env = vertex["udf"]["container"]["env"]
    return next(e for e in env if e["name"] == "NFBUILDER_STATE_STORE")


def test_plain_redis_url_is_refused(tmp_path: Path) -> None:
    done = compile_(tmp_path, "--state-store", "redis://app:s3cret@redis:6379/0")
    assert done.returncode == 2
    assert "keep it in a Secret" in done.stderr and "--state-store-secret" in done.stderr
    assert "s3cret" not in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("url", [" redis://app:s3cret@redis:6379/0",
                                 "redis+tls://app:s3cret@redis:6380/0",
                                 "REDISS://app:s3cret@redis:6380/0"])
def test_every_redis_form_is_refused(tmp_path: Path, url: str) -> None:
    done = compile_(tmp_path, "--state-store", url)
    assert done.returncode == 2 and "keep it in a Secret" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_secret_reference_goes_into_the_manifest(tmp_path: Path) -> None:
    done = compile_(tmp_path, "--state-store-secret", "state:redis-url")
    assert done.returncode == 0, done.stderr
    assert state_env(tmp_path) == {"name": "NFBUILDER_STATE_STORE", "valueFrom": {
        "secretKeyRef": {"name": "state", "key": "redis-url"}}}


def test_no_store_means_memory_and_compile_says_so(tmp_path: Path) -> None:
    done = compile_(tmp_path)
    assert done.returncode == 0, done.stderr
    assert state_env(tmp_path) == {"name": "NFBUILDER_STATE_STORE", "value": "memory://"}
    assert "memory:// (not durable)" in done.stderr
