"""The loader imports the file it is given, even when another app file has the same basename."""

from __future__ import annotations

import pickle
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import nfbuilder as wallaroo
from nfbuilder.loader import AppLoadError, app_from_actions, load_app

TWIN = """\
import nfbuilder as wallaroo


def application_setup(args):
    ab = wallaroo.ApplicationBuilder({name!r})
    ab.new_pipeline("p", wallaroo.TCPSourceConfig("h", "1", decoder))
    ab.to(step)
    ab.to_sink(wallaroo.TCPSinkConfig("h", "2", encoder))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return bs


@wallaroo.computation(name={name!r})
def step(data):
    return data


@wallaroo.encoder
def encoder(data):
    return data
"""


@pytest.fixture
def clean_imports(tmp_path: Path) -> Iterator[None]:
    """Remove the app modules (files under ``tmp_path``) and sys.path entries the loads add, so
    other tests see none of them. Modules of nfbuilder imported meanwhile stay: dropping them
    would give later imports second copies of their classes."""
    path = list(sys.path)
    yield
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]
    sys.path[:] = path


def _twin(folder: Path, app_name: str, source: str = TWIN) -> str:
    folder.mkdir()
    file = folder / "twin.py"
    file.write_text(source.format(name=app_name))
    return str(file)


@pytest.mark.usefixtures("clean_imports")
def test_same_basename_in_two_folders_loads_each_file(tmp_path: Path) -> None:
    first = _twin(tmp_path / "a", "first app")
    second = _twin(tmp_path / "b", "second app")

    one = load_app(first)
    two = load_app(second)
    assert (one.app.name, two.app.name) == ("first app", "second app")
    assert one.module is not two.module
    # the containers import the app by its basename with search_dir on PYTHONPATH
    assert (one.module_name, two.module_name) == ("twin", "twin")
    assert (one.search_dir, two.search_dir) == (str(tmp_path / "a"), str(tmp_path / "b"))

    again = load_app(first)
    assert again.app.name == "first app" and again.module is one.module
    assert load_app(second).module is two.module  # the alias is reused, not executed again

    # decorated objects pickle by module + name: the second file's must come back as themselves
    step = two.module.step
    assert pickle.loads(pickle.dumps(step)) is step
    assert pickle.loads(pickle.dumps(one.module.step)) is one.module.step


@pytest.mark.usefixtures("clean_imports")
@pytest.mark.parametrize(("source", "line", "text"), [
    ("def application_setup(args)\n    return []\n", 1, "importing 'twin' failed: SyntaxError"),
    ("import os\n\nraise RuntimeError('boom')\n", 3,
     "importing 'twin' failed: RuntimeError('boom')"),
])
def test_errors_in_a_second_twin_name_its_file_and_line(
    tmp_path: Path, source: str, line: int, text: str
) -> None:
    load_app(_twin(tmp_path / "a", "first app"))
    bad = _twin(tmp_path / "b", "unused", source)
    with pytest.raises(AppLoadError) as err:
        load_app(bad)
    assert str(err.value).startswith(f"{bad}:{line}: {text}")
    # a failed import leaves nothing half-initialised behind under the alias
    assert not [m for m in sys.modules if m.startswith("nfbuilder_app_") and m.endswith("_twin")]


def test_app_from_actions_says_what_was_returned() -> None:
    with pytest.raises(AppLoadError, match=r"^x.py: application_setup returned NoneType, not the "
                       r"list from ab.build\(\). End it with 'return ab.build\(\)'.$"):
        app_from_actions(None, returned_by="x.py: application_setup", where="x.py")
    with pytest.raises(AppLoadError, match=r"^x.py: the action list cannot be compiled: "):
        app_from_actions([("nonsense",)], returned_by="x.py: application_setup", where="x.py")
    ab = wallaroo.ApplicationBuilder("ok")
    ab.new_pipeline("p", wallaroo.TCPSourceConfig("h", "1", _decoder))
    ab.to_sink(wallaroo.TCPSinkConfig("h", "2", _encoder))
    assert app_from_actions(ab.build(), returned_by="setup", where="setup").name == "ok"


@wallaroo.decoder(header_length=4, length_fmt=">I")
def _decoder(bs: bytes) -> bytes:
    return bs


@wallaroo.encoder
def _encoder(data: bytes) -> bytes:
    return data
