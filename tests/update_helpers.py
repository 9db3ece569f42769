"""Real releases for the update tests: wheels of this working tree, signed, staged as the box stages them.

``tree_wheel(out, version)`` builds the working tree into a wheel with
``pip wheel --no-deps`` (offline: the build backend comes from
``.venv/box-wheels``, which ``.ci/bootstrap`` downloads); with a ``version``
the tree is copied to a temporary folder first and its ``pyproject.toml``
bumped, so the checkout is never touched. ``make_release`` signs a manifest
over that wheel and the box's dependency wheels; ``stage`` lays it out under
``<box data>/update/staged/<release_id>/`` as the box process does
(:mod:`linetap.sync.appslots`). Wheels are slow to build (seconds): build one
per test session (a session-scoped fixture) and copy.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from linetap.firmware.keys import public_key_b64
from linetap.sync import appslots, release

ROOT = Path(__file__).resolve().parent.parent
BOX_WHEELS = ROOT / ".venv" / "box-wheels"
PYTHON_TAG = f"cp{sys.version_info.major}{sys.version_info.minor}"
CREATED_MS = 1_767_225_600_000
_TREE_IGNORE = shutil.ignore_patterns(".venv", ".git", "build", "tests", "bench", "image", "*.egg-info",
                                      "__pycache__", ".pytest_cache", ".hypothesis", "demo-data")


def tree_version() -> str:
    """The version the working tree's pyproject.toml declares."""
    return re.search(r'(?m)^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text()).group(1)


def tree_wheel(out: Path, version: str | None = None, patch: Callable[[Path], None] | None = None) -> Path:
    """A wheel of the working tree (its version bumped to ``version`` when given) in folder ``out``;
    ``patch(tree)`` may change the copy first (a broken release is built from a broken tree)."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="linetap-tree-") as tmp:
        tree = Path(tmp) / "tree"
        shutil.copytree(ROOT, tree, ignore=_TREE_IGNORE)
        if version is not None:
            pyproject = tree / "pyproject.toml"
            text, count = re.subn(r'(?m)^version = "[^"]+"$', f'version = "{version}"', pyproject.read_text())
            assert count == 1, "pyproject.toml has no single version line to bump"
            pyproject.write_text(text)
        if patch is not None:
            patch(tree)
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index",
                               "--find-links", str(BOX_WHEELS), "-w", str(out), str(tree)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"pip wheel failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    found = sorted(out.glob(f"linetap-{version or tree_version()}-*.whl"))
    assert len(found) == 1, f"expected one linetap wheel in {out}, found {found}"
    return found[0]


def dependency_wheels() -> list[Path]:
    """The box's dependencies for this machine (what a release carries besides linetap)."""
    wheels = sorted(p for p in BOX_WHEELS.glob("*.whl") if not p.name.startswith("setuptools-"))
    assert wheels, f"no wheels in {BOX_WHEELS}: run .ci/bootstrap (make install)"
    return wheels


@dataclass
class Release:
    """A signed release on disk: its manifest bytes, signature and files by sha256."""

    manifest: bytes
    signature: bytes
    files: dict[str, Path]  # sha256 → the file's bytes on disk
    key: Ed25519PrivateKey
    parsed: release.Release = field(init=False)

    def __post_init__(self) -> None:
        self.parsed = release.verify(self.manifest, self.signature, [self.key.public_key()])

    @property
    def release_id(self) -> str:
        return self.parsed.release_id

    @property
    def version(self) -> str:
        return self.parsed.version


def make_release(linetap_wheel: Path, key: Ed25519PrivateKey, *, extra: list[Path] | None = None,
                 min_previous: str = "0.0.1", boards: tuple[str, ...] = ("*",), machine: str | None = None,
                 python: str = PYTHON_TAG, created_ms: int = CREATED_MS) -> Release:
    """Sign a release of ``linetap_wheel`` plus ``extra`` (default: the box's dependency wheels)."""
    version = linetap_wheel.name.split("-")[1]
    paths = [linetap_wheel, *(dependency_wheels() if extra is None else extra)]
    described = [release.describe_file(p.name, p.read_bytes()) for p in paths]
    manifest = release.build_manifest(version=version, min_previous=min_previous, created_ms=created_ms,
                                      boards=list(boards), machine=machine or platform.machine(),
                                      python=python, files=described)
    return Release(manifest=manifest, signature=release.sign(manifest, key),
                   files={d.sha256: p for d, p in zip(described, paths)}, key=key)


def stage(data_dir: Path, rel: Release, *, offer: bytes | None = None) -> Path:
    """Lay ``rel`` out as the box does: ``staged/<id>/release.json``, ``release.sig``, ``<sha256>`` each."""
    folder = appslots.staged_dir(data_dir, rel.release_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / appslots.STAGED_MANIFEST).write_bytes(rel.manifest)
    (folder / appslots.STAGED_SIGNATURE).write_bytes(rel.signature)
    for sha, path in rel.files.items():
        target = folder / sha
        if not target.exists():
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
    if offer is not None:
        (folder / appslots.STAGED_OFFER).write_bytes(offer)
    return folder


def next_version(version: str) -> str:
    """``0.1.0`` → ``0.1.1``: the version a test release bumps the tree to."""
    *head, last = version.split(".")
    return ".".join([*head, str(int(last) + 1)])


class Kit:
    """What the update tests of a session share (``update_kit`` in tests/sync/conftest.py): keys, and the
    working tree's wheel at the next version, built once; :meth:`wheel` builds other versions once each."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.key = Ed25519PrivateKey.generate()  # the release key
        self.operator = Ed25519PrivateKey.generate()
        self.factory = tree_version()
        self.next = next_version(self.factory)
        self._wheels: dict[str, Path] = {}
        self._mini: Release | None = None

    def wheel(self, version: str) -> Path:
        if version not in self._wheels:
            self._wheels[version] = tree_wheel(self.folder / version, version)
        return self._wheels[version]

    def mini(self) -> Release:
        """The next version's linetap wheel alone: quick to install, enough for ``linetap --version``
        (``linetap run`` fails on its first import of a dependency)."""
        if self._mini is None:
            self._mini = make_release(self.wheel(self.next), self.key, extra=[])
        return self._mini

    def full(self) -> Release:
        """The next version with every dependency wheel: ``linetap run`` works in it."""
        return make_release(self.wheel(self.next), self.key)


def keys_init(data_dir: Path, recipient: str) -> None:
    """The box's own keys, so that ``linetap run`` starts (as provisioning does on the image)."""
    from linetap.firmware.keys import keys_init as init
    init(data_dir, recipient)


def trust(app_root: Path, release_key: Ed25519PrivateKey, operator_key: Ed25519PrivateKey | None = None) -> None:
    """Provision the app root's trusted keys (``release.pub``, ``operator.pub``) as the image does."""
    app_root.mkdir(parents=True, exist_ok=True)
    (app_root / appslots.RELEASE_KEY).write_text(public_key_b64(release_key.public_key()) + "\n")
    if operator_key is not None:
        (app_root / appslots.OPERATOR_KEY).write_text(public_key_b64(operator_key.public_key()) + "\n")
