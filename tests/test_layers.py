"""The layering rules of ARCHITECTURE.md, checked on the source.

drivers talk to hardware and nothing else; the firmware core never touches a
hardware or network library; sync never touches drivers. The two foundation
modules (errors, clock) may be imported by every layer.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOUNDATION = {"linetap.firmware.errors", "linetap.firmware.clock", "linetap.firmware.untrusted",
              "linetap.firmware.backoff"}
HARDWARE_AND_NETWORK = ("paho", "sounddevice", "gpiozero", "serial")
# The firmware modules that build drivers, start threads or speak to the user.
FIRMWARE_EDGE = {"app.py", "cli.py", "demo.py", "doctor.py", "service.py"}


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


@pytest.mark.parametrize("path", [p for p in _sources("firmware") if p.name not in FIRMWARE_EDGE],
                         ids=lambda p: str(p.relative_to(ROOT / "firmware")))
def test_firmware_core_is_sans_io(path: Path) -> None:
    bad = {n for n in _imports(path)
           if any(_under(n, lib) for lib in HARDWARE_AND_NETWORK) or _under(n, "linetap.drivers")
           and not _under(n, "linetap.drivers.events")}
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
