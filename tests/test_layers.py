"""The layering rules of ARCHITECTURE.md, checked on the source.

drivers talk to hardware and nothing else; the firmware core never touches a
hardware or network library; sync never touches drivers. The foundation
modules (errors, clock, untrusted, backoff) may be imported by every layer.

The sans-IO cores (V.253 parser, upload protocol, fleet core, signed
envelopes, wire format, call flow) import no socket, thread, process, file or
hardware module, open no file and never sleep. No production module is over
500 lines and no function over 60, but for named data tables.
"""

from __future__ import annotations

import ast
import functools
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOUNDATION = {"linetap.firmware.errors", "linetap.firmware.clock", "linetap.firmware.untrusted",
              "linetap.firmware.backoff"}
HARDWARE_AND_NETWORK = ("paho", "sounddevice", "gpiozero", "serial")
# The firmware modules (and the doctor package) that build drivers, start threads or speak to the user.
FIRMWARE_EDGE = {"callloop.py", "cli.py", "demo.py", "devices.py", "doctor", "replay.py", "scripted.py",
                 "selftest.py", "service.py"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("path", _sources("drivers"), ids=lambda p: p.name)
def test_drivers_import_no_firmware_or_sync(path: Path) -> None:
    bad = {n for n in _imports(path)
           if (_under(n, "linetap.firmware") and not any(_under(n, f) for f in FOUNDATION)
               and n != "linetap.firmware")
           or _under(n, "linetap.sync")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", [p for p in _sources("firmware")
                                  if p.relative_to(ROOT / "firmware").parts[0] not in FIRMWARE_EDGE],
                         ids=lambda p: str(p.relative_to(ROOT / "firmware")))
def test_firmware_core_is_sans_io(path: Path) -> None:
    bad = {n for n in _imports(path)
           if any(_under(n, lib) for lib in HARDWARE_AND_NETWORK) or _under(n, "linetap.sync")
           or _under(n, "linetap.drivers") and not _under(n, "linetap.drivers.events")}
    assert not bad, f"{path.relative_to(ROOT)} (firmware core) imports {sorted(bad)}"


@pytest.mark.parametrize("path", _sources("sync"), ids=lambda p: str(p.relative_to(ROOT / "sync")))
def test_sync_imports_no_drivers(path: Path) -> None:
    bad = {n for n in _imports(path) if _under(n, "linetap.drivers")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_every_package_folder_is_packaged() -> None:
    """A subpackage missing from pyproject works in the editable install and vanishes from the wheel.

    Code packages have an ``__init__.py``; data-only folders are packages too when
    package-data names them (that is how setuptools ships their files).
    """
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = setuptools["package-dir"]
    declared = set(setuptools["packages"])
    found = set(setuptools["package-data"])
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]))
    assert found == declared, f"pyproject packages differ from folders: missing {sorted(found - declared)}, extra {sorted(declared - found)}"
    for package in setuptools["package-data"]:
        top = next(p for p in mapping if package == p or package.startswith(p + "."))
        folder = ROOT / mapping[top] / Path(*package[len(top):].split(".")[1:])
        assert folder.is_dir() and any(folder.iterdir()), f"package-data names {package}, but {folder} is empty or missing"


# ------------------------------------------------------------------ sans-IO cores --

# The protocol and state-machine cores take bytes, events and the time in and give actions out;
# the modules around them own sockets, threads, files and processes. Each core is named by its
# modules (a glob per folder, so a module made a package stays covered).
SANS_IO_CORES = {
    "V.253 parser": ("drivers/v253.py", "drivers/v253/**/*.py", "drivers/callerid.py"),
    "HID telephony": ("drivers/hid/descriptor.py", "drivers/hid/telephony.py", "drivers/hid/forward.py",
                      "drivers/hid/gadget.py"),
    "upload protocol": ("sync/upload.py", "sync/upload/**/*.py", "sync/uploadevents.py"),
    "fleet core": ("sync/fleet.py", "sync/fleet/**/*.py", "sync/fleetwire.py", "sync/fleetcommands.py",
                   "sync/pushpolicy.py"),
    "signed envelopes": ("sync/signed.py", "sync/signed/**/*.py"),
    "releases and update wire": ("sync/release.py", "sync/updatewire.py"),
    "box update core": ("sync/update.py", "sync/updateevents.py"),
    "update gate decisions": ("sync/slotgate.py",),
    "delivery receipts": ("firmware/receipt.py",),
    "trusted timestamps": ("sync/central/timestamps.py",),
    "console playback and peaks": ("sync/central/media.py", "sync/central/peaks.py"),
    "quality assessment": ("sync/central/qa/**/*.py",),
    "wire format": ("sync/wire.py", "sync/wire/**/*.py"),
    "USB audio bridge": tuple(f"drivers/usbbridge/{name}.py" for name in ("core", "resampler", "control", "fifo")),
    "call flow": ("firmware/callflow.py", "firmware/callflow/**/*.py", "firmware/callevents.py",
                  "firmware/callrecord.py"),
}
# Modules of a core's own folder that a core imports but that are no part of any core: the core
# uses their values only. A module split out of a core lands in the core above, not here.
CORE_NEIGHBOURS = {
    "drivers/events.py": "the plain event dataclasses every layer shares",
    "firmware/config.py": "the settings sections the call flow reads (loading them is the caller's job)",
    "firmware/keys.py": "the store key's id, a pure function (receipts load no key file)",
    "firmware/manifest.py": "canonical JSON and what a recording id and a hash look like",
}
IO_MODULES = ("socket", "ssl", "threading", "_thread", "queue", "multiprocessing", "concurrent", "asyncio",
              "subprocess", "os", "shutil", "tempfile", "sqlite3", "select", "selectors", *HARDWARE_AND_NETWORK)
# io itself is allowed (BytesIO and StringIO are memory); its file openers are not.
IO_NAMES = {"io.open", "io.FileIO", "builtins.open", "time.sleep"}
# pathlib is allowed for names; these calls (on a Path or anything else) touch the file system.
FILE_METHODS = {"open", "read_text", "read_bytes", "write_text", "write_bytes", "touch", "mkdir", "unlink",
                "rmdir", "iterdir", "glob", "rglob"}


@functools.cache
def _package_dirs() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def _module_path(name: str) -> Path | None:
    """The source file of a ``linetap.*`` module name, or None (not a project module, or a name in one)."""
    for package, folder in _package_dirs().items():
        if name == package or name.startswith(package + "."):
            base = ROOT / folder / Path(*name[len(package):].split(".")[1:])
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    return candidate
    return None


def _core_modules() -> list[tuple[str, Path]]:
    return sorted({(core, path) for core, globs in SANS_IO_CORES.items()
                   for pattern in globs for path in ROOT.glob(pattern)})


def _io_uses(path: Path) -> list[str]:
    """What in ``path`` does I/O: imports of I/O modules, file openers and file methods, time.sleep."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = [f"import {name}" for name in sorted(_imports(path))
             if any(_under(name, module) for module in IO_MODULES) or name in IO_NAMES]
    aliases = {alias.asname or alias.name: alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "open":
            found.append(f"open() at line {node.lineno}")
        elif isinstance(func, ast.Attribute):
            owner = aliases.get(func.value.id, func.value.id) if isinstance(func.value, ast.Name) else None
            if owner is not None and f"{owner}.{func.attr}" in IO_NAMES:
                found.append(f"{owner}.{func.attr}() at line {node.lineno}")
            elif func.attr in FILE_METHODS:
                found.append(f".{func.attr}() at line {node.lineno}")
    return found


@pytest.mark.parametrize("core, path", [pytest.param(core, path, id=f"{core}: {path.relative_to(ROOT)}")
                                        for core, path in _core_modules()])
def test_sans_io_cores_do_no_io(core: str, path: Path) -> None:
    uses = _io_uses(path)
    assert not uses, f"{path.relative_to(ROOT)} ({core}, sans-IO) does I/O: {'; '.join(uses)}"


def test_every_sans_io_core_is_found_and_its_split_modules_are_in_it() -> None:
    """A core module that moved must be found again, and one split out of it must be checked too."""
    cores = {path for _, path in _core_modules()}
    for core, globs in SANS_IO_CORES.items():
        assert any(path for c, path in _core_modules() if c == core), f"{core}: no module matches {globs}"
    for path in sorted(cores):
        for name in sorted(_imports(path)):
            target = _module_path(name)
            # Packages (``from linetap.sync import wire``) and modules of other folders are not its own.
            if (target is None or target in cores or target.name == "__init__.py"
                    or path.parent != target.parent and path.parent not in target.parents):
                continue
            rel = str(target.relative_to(ROOT))
            assert any(_under(name, f) for f in FOUNDATION) or rel in CORE_NEIGHBOURS, (
                f"{path.relative_to(ROOT)} imports {rel}, a module of its own folder in no sans-IO core: "
                "add it to its core in SANS_IO_CORES (or, if it only lends values, to CORE_NEIGHBOURS)")
    for rel in CORE_NEIGHBOURS:
        assert (ROOT / rel).is_file(), f"CORE_NEIGHBOURS names {rel}, which is gone"


# ------------------------------------------------------------------------ sizes --

PRODUCTION = ("firmware", "drivers", "sync", "hardware")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
# Functions that are data tables may be longer: the body is one literal of rows (after a
# docstring), returned or assigned. Code that builds a table (an argparse parser, a loop of
# add_* calls) is not one. Each entry says what its rows are.
DATA_TABLES: dict[str, str] = {}


def _production() -> list[Path]:
    return [path for folder in PRODUCTION for path in _sources(folder)]


def _module_lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def _functions(path: Path) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    """Every function and method of a module by "path::qualified.name" (nested ones too)."""
    found: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if not isinstance(child, ast.ClassDef):
                    found[f"{path.relative_to(ROOT)}::{prefix}{child.name}"] = child
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(), filename=str(path)), "")
    return found


def _function_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    return node.end_lineno - node.lineno + 1


def _is_data_table(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    body = node.body[1:] if ast.get_docstring(node) is not None else node.body
    literal = (ast.Dict, ast.List, ast.Tuple, ast.Set)
    return (len(body) == 1 and isinstance(body[0], (ast.Return, ast.Assign, ast.AnnAssign))
            and isinstance(body[0].value, literal))


def _all_functions() -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    return {name: node for path in _production() for name, node in _functions(path).items()}


def test_no_production_module_is_over_the_limit() -> None:
    over = {str(p.relative_to(ROOT)): _module_lines(p) for p in _production()}
    over = {rel: lines for rel, lines in over.items() if lines > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines: {over}"


def test_no_production_function_is_over_the_limit() -> None:
    over = {name: _function_lines(node) for name, node in _all_functions().items()
            if _function_lines(node) > MAX_FUNCTION_LINES and name not in DATA_TABLES}
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines (split them): {over}"


def test_data_tables_are_tables_and_need_the_exception() -> None:
    functions = _all_functions()
    for name in DATA_TABLES:
        assert name in functions, f"DATA_TABLES names {name}, which is gone"
        assert _is_data_table(functions[name]), f"{name} is in DATA_TABLES but is more than one literal of rows"
        assert _function_lines(functions[name]) > MAX_FUNCTION_LINES, f"{name} fits the limit: drop it from DATA_TABLES"
