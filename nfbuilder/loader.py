"""Import a user's application and turn ``application_setup(args)`` into an ``Application``.

::

    loaded = load_app("apps/word_count.py", ["--in", "127.0.0.1:7010", "--out", "127.0.0.1:7002"])
    loaded.module_name   # 'word_count'
    loaded.app.pipelines[0].name

Errors in the user's module come back as ``AppLoadError`` with a short message naming the file
and line, never as a bare traceback.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType

import attrs

from nfbuilder.dsl.args import resolve_cli_configs
from nfbuilder.dsl.errors import WallarooParameterError
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


def _same_file(module: ModuleType | None, path: str) -> bool:
    file = getattr(module, "__file__", None)
    return file is not None and os.path.realpath(file) == os.path.realpath(path)


def _alias(path: str, name: str) -> str:
    """The stable ``sys.modules`` name of the file ``path`` when ``name`` is another file's."""
    digest = hashlib.sha1(os.path.realpath(path).encode()).hexdigest()[:8]
    return f"nfbuilder_app_{digest}_{name}"


def _exec_file(key: str, path: str) -> ModuleType:
    """Import the file ``path`` as module ``key`` (registered before it runs, as ``import`` does:
    decorated objects pickle by module + name, so ``sys.modules[obj.__module__]`` must resolve)."""
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise AppLoadError(f"{path}: cannot be imported as a Python module. Give a .py file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    # As importlib marks a module being imported. Every ``__import__`` of a module checks
    # ``__spec__._initializing``, pickle included (once per object of the app's classes): a
    # spec without the attribute costs a raised and cleared AttributeError each time.
    spec._initializing = True  # type: ignore[attr-defined]
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(key, None)
        raise
    finally:
        spec._initializing = False  # type: ignore[attr-defined]
    return module


def _import_file(name: str, path: str) -> ModuleType:
    """The module of the file ``path``, imported as ``name`` unless another file holds that name.

    Apps given as paths are keyed by their resolved path: ``/other/reverse.py`` loaded after
    ``apps/reverse.py`` in one process gets its own module (under an alias), and loading either
    again returns the module it got the first time.
    """
    if name not in sys.modules:
        return _exec_file(name, path)
    if _same_file(sys.modules[name], path):
        return sys.modules[name]
    alias = _alias(path, name)
    if _same_file(sys.modules.get(alias), path):
        return sys.modules[alias]
    return _exec_file(alias, path)


def import_app_module(spec: str) -> tuple[str, ModuleType, str | None, str | None]:
    """Import ``spec`` (``pkg.module`` or ``path/to/app.py``): (name, module, file, search dir).

        name, module, file, search_dir = import_app_module("apps/reverse.py")
        name        # 'reverse': what another process imports with search_dir on PYTHONPATH

    ``name`` is the file's basename even when another file of that name was loaded first in
    this process; ``module`` is always the module of the file given.
    """
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
        module = importlib.import_module(name) if path is None else _import_file(name, path)
    except AppLoadError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name == name and path is None:
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


def app_from_actions(
    actions: object, *, returned_by: str, where: str, args: Sequence[str] = ()
) -> Application:
    """The ``Application`` of the action list an ``application_setup`` returned.

        app_from_actions(setup(["app", *args]), returned_by="app.py: application_setup",
                         where="app.py", args=args)

    Configs that read the command line (Wallaroo 0.5's ``DefaultKafka*CLIParser``) take their
    settings from ``args``. Raises ``AppLoadError`` naming ``returned_by`` when ``actions`` is
    not the list from ``ab.build()``, and ``where`` when the list cannot be compiled.
    """
    if not isinstance(actions, list) or not actions or not isinstance(actions[0], tuple):
        raise AppLoadError(
            f"{returned_by} returned {type(actions).__name__}, not the list from ab.build(). "
            "End it with 'return ab.build()'."
        )
    try:
        return from_actions(resolve_cli_configs(actions, args))
    except (TopologyError, WallarooParameterError) as exc:
        raise AppLoadError(f"{where}: the action list cannot be compiled: {exc}") from None


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
    where = file or name
    app = app_from_actions(actions, returned_by=f"{where}: application_setup", where=where,
                           args=args)
    return LoadedApp(name, module, file, search_dir, tuple(args), app)
