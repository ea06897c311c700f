"""Import a user's application and turn ``application_setup(args)`` into an ``Application``.

::

    loaded = load_app("apps/word_count.py", ["--in", "127.0.0.1:7010", "--out", "127.0.0.1:7002"])
    loaded.module_name   # 'word_count'
    loaded.app.pipelines[0].name

Errors in the user's module come back as ``AppLoadError`` with a short message naming the file
and line, never as a bare traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType

import attrs

from nfbuilder.topology import Application, TopologyError, from_actions


class AppLoadError(Exception):
    """The application could not be imported or built; ``str()`` says where and why."""


@attrs.frozen
class LoadedApp:
    module_name: str
    module: ModuleType = attrs.field(eq=False)
    path: str | None
    search_dir: str | None  # directory to put on PYTHONPATH so other processes can import it
    args: tuple[str, ...]
    app: Application = attrs.field(eq=False)


def _where(exc: BaseException, path: str | None) -> str:
    """``file:line`` of the innermost frame in the user's file (else the innermost frame)."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return path or "?"
    chosen = frames[-1]
    if path:
        mine = [f for f in frames if os.path.abspath(f.filename) == os.path.abspath(path)]
        if mine:
            chosen = mine[-1]
    return f"{chosen.filename}:{chosen.lineno}"


def import_app_module(spec: str) -> tuple[str, ModuleType, str | None, str | None]:
    """Import ``spec`` (``pkg.module`` or ``path/to/app.py``): (name, module, file, search dir)."""
    search_dir = path = None
    if spec.endswith(".py") or os.sep in spec:
        path = os.path.abspath(spec)
        if not os.path.isfile(path):
            raise AppLoadError(
                f"{spec}: no such file. Give a .py file or an importable module name."
            )
        search_dir = os.path.dirname(path)
        name = os.path.splitext(os.path.basename(path))[0]
        if search_dir not in sys.path:
            sys.path.insert(0, search_dir)
    else:
        name = spec
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise AppLoadError(
                f"cannot import the application module {name!r}: not found on the Python path "
                f"({sys.path[0] or os.getcwd()} first). Give a path to the .py file instead."
            ) from None
        raise AppLoadError(f"{_where(exc, path)}: importing {name!r} failed: {exc!r}") from None
    except Exception as exc:  # noqa: BLE001 - any error in user code is reported, not raised
        # ``path`` makes _where point at the user's line, not at nfbuilder's frame that raised
        # (a decorator's WallarooParameterError at import time).
        raise AppLoadError(f"{_where(exc, path)}: importing {name!r} failed: {exc!r}") from None
    file = getattr(module, "__file__", None)
    return name, module, file, search_dir


def load_app(spec: str, args: Sequence[str] = ()) -> LoadedApp:
    """Import the app and build it with ``application_setup([module, *args])``."""
    name, module, file, search_dir = import_app_module(spec)
    setup = getattr(module, "application_setup", None)
    if not callable(setup):
        raise AppLoadError(
            f"{file or name}: the module defines no application_setup(args) function. "
            "Add one that returns ApplicationBuilder(...)...build()."
        )
    try:
        actions = setup([name, *args])
    except Exception as exc:  # noqa: BLE001
        raise AppLoadError(f"{_where(exc, file)}: application_setup failed: {exc}") from None
    if not isinstance(actions, list) or not actions or not isinstance(actions[0], tuple):
        raise AppLoadError(
            f"{file or name}: application_setup returned {type(actions).__name__}, not the list "
            "from ab.build(). End it with 'return ab.build()'."
        )
    try:
        app = from_actions(actions)
    except TopologyError as exc:
        raise AppLoadError(f"{file or name}: the action list cannot be compiled: {exc}") from None
    return LoadedApp(name, module, file, search_dir, tuple(args), app)
