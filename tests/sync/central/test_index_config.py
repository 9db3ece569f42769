"""Choosing the index: ``[index]`` in the central config, the password kept out of sight, ``migrate``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from linetap.firmware.errors import ConfigError
from linetap.sync.broker import free_port
from linetap.sync.central.cli import main
from linetap.sync.central.config import IndexSection, load_config, redacted
from linetap.sync.central.index import SCHEMA_VERSION, SqliteIndex
from linetap.sync.central.indexes import index_password, open_index
from linetap.sync.central.pgindex import PgIndex
from linetap.sync.central.store import StoreUnavailable

SECRET = "s3cret-Pa55"


def with_password(url: str, password: str = SECRET) -> str:
    return url.replace("linetap@", f"linetap:{password}@")


@pytest.mark.parametrize("url, shown", [
    ("postgresql://ops:pw@db:5432/linetap", "postgresql://ops:***@db:5432/linetap"),
    ("postgresql://ops@db/linetap?password=pw&sslmode=require",
     "postgresql://ops@db/linetap?password=***&sslmode=require"),
    ("postgresql://db/linetap", "postgresql://db/linetap"),
    ("ops:pw@db/linetap", "(not a URL with a host)"),
    ("postgresql://ops:pw@[::1/linetap", "(a URL that cannot be parsed)"),
])
def test_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert redacted(url) == shown


def write_config(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "central.toml"
    path.write_text(text)
    return path


def test_the_index_section_names_every_mistake(tmp_path: Path) -> None:
    config = write_config(tmp_path, f'[index]\nurl = "mysql://ops:{SECRET}@db/x"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(config, tmp_path)
    text = str(caught.value)
    assert "index.url = 'mysql://ops:***@db/x'" in text and "postgresql://USER@HOST:PORT/DATABASE" in text
    assert SECRET not in text
    config = write_config(tmp_path, '[index]\nurl = "postgresql://db/x"\npool_size = 0\n')
    with pytest.raises(ConfigError, match="index.pool_size = 0"):
        load_config(config, tmp_path)
    config = write_config(tmp_path, '[index]\npassword_file = "pg.password"\n')
    with pytest.raises(ConfigError, match="set url too"):
        load_config(config, tmp_path)
    assert load_config(None, tmp_path / "empty").index == IndexSection()


def test_without_a_url_the_index_is_the_embedded_file(tmp_path: Path) -> None:
    with open_index(None, tmp_path) as index:
        assert isinstance(index, SqliteIndex) and index.path == tmp_path / "index.db"


def test_the_password_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "pg.password"
    path.write_text(SECRET + "\n")
    path.chmod(0o644)
    section = IndexSection(url="postgresql://linetap@127.0.0.1:5432/x", password_file="pg.password")
    with pytest.raises(ConfigError, match="chmod 600") as caught:
        index_password(section, tmp_path)
    assert SECRET not in str(caught.value)
    path.chmod(0o600)
    assert index_password(section, tmp_path) == SECRET
    path.write_text("")
    with pytest.raises(ConfigError, match="one password on one line"):
        index_password(section, tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        index_password(IndexSection(url=section.url, password_file="nope"), tmp_path)


def test_migrate_prints_the_version_and_never_the_password(pg_url: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = write_config(tmp_path, f'[index]\nurl = "{with_password(pg_url)}"\n')
    for _ in range(2):  # again: nothing left to do, same answer
        assert main(["--data-dir", str(tmp_path), "migrate", "--config", str(config)]) == 0
        out = capsys.readouterr().out
        assert out == f"index {with_password(pg_url, '***')}: schema version {SCHEMA_VERSION}\n"
    assert SECRET not in caplog.text
    with PgIndex(pg_url, migrate=False) as index:  # migrated: opens without migrating
        assert index.version == SCHEMA_VERSION


def test_migrate_on_the_embedded_index(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data-dir", str(tmp_path), "migrate", "--json"]) == 0
    assert capsys.readouterr().out.strip() == \
        f'{{"index": "{tmp_path / "index.db"}", "schema_version": {SCHEMA_VERSION}}}'


def test_an_unreachable_server_is_named_without_the_password(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    url = f"postgresql://linetap:{SECRET}@127.0.0.1:{free_port()}/linetap"
    with pytest.raises(StoreUnavailable, match="cannot be opened: .*refused") as caught:
        PgIndex(url, connect_timeout_s=1)
    assert SECRET not in str(caught.value) and "linetap:***@127.0.0.1" in str(caught.value)
    config = write_config(tmp_path, f'[index]\nurl = "{url}"\nconnect_timeout_s = 1\n')
    assert main(["--data-dir", str(tmp_path), "migrate", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "cannot be opened" in err and SECRET not in err and SECRET not in caplog.text
