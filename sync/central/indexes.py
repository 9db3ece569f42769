"""Which index a central store uses: :func:`open_index` from the config's ``[index]`` section.

Without ``[index] url`` it is the embedded SQLite file ``<data dir>/index.db``
(:class:`~linetap.sync.central.index.SqliteIndex`); with one, the PostgreSQL
database it names (:class:`~linetap.sync.central.pgindex.PgIndex`, imported
only then, so the embedded store needs no PostgreSQL driver). The password
of a PostgreSQL index is read from ``password_file`` (mode 0600 or stricter,
refused otherwise) or left to libpq (``PGPASSWORD``, ``~/.pgpass``); it never
reaches a log line.
"""

from __future__ import annotations

import stat
from pathlib import Path

from linetap.firmware.errors import ConfigError
from linetap.firmware.schema import FileRefused, read_bounded
from linetap.sync.central.config import IndexSection
from linetap.sync.central.index import INDEX_FILE, IndexTables, SqliteIndex

MAX_PASSWORD_BYTES = 1024


def open_index(section: IndexSection | None, data_dir: Path, *, migrate: bool = True) -> IndexTables:
    """The index the section names (None or no url: the embedded SQLite file under ``data_dir``).

    ``migrate`` False opens a PostgreSQL index only at this program's schema
    version (``linetap-central migrate`` brings it there); SQLite files always
    migrate when opened.
    """
    if section is None or section.url is None:
        return SqliteIndex(Path(data_dir) / INDEX_FILE)
    from linetap.sync.central.pgindex import PgIndex

    return PgIndex(section.url, password=index_password(section, Path(data_dir)), pool_size=section.pool_size,
                   connect_timeout_s=section.connect_timeout_s, migrate=migrate)


def describe(section: IndexSection | None, data_dir: Path) -> str:
    """Where the index is, fit for a log line or a message (a URL without its password)."""
    if section is None or section.url is None:
        return str(Path(data_dir) / INDEX_FILE)
    from linetap.sync.central.config import redacted

    return redacted(section.url)


def index_password(section: IndexSection, data_dir: Path) -> str | None:
    """The password from ``[index] password_file`` (a relative path is under the data dir), else None."""
    if section.password_file is None:
        return None
    path = Path(section.password_file)
    if not path.is_absolute():
        path = data_dir / path
    hint = "write the PostgreSQL password alone on one line in it, mode 0600"
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(f"[index] password_file {path} has mode {mode:04o}, readable by others; fix it "
                              f"with `chmod 600 {path}` (and change the password if others may have read it)")
        raw = read_bounded(path, max_bytes=MAX_PASSWORD_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"[index] password_file {path} does not exist; {hint}") from None
    except FileRefused as e:
        raise ConfigError(f"[index] password_file {path} {e}; {hint}") from None
    except OSError as e:
        raise ConfigError(f"[index] password_file {path} cannot be read ({e.strerror}); check its owner") from None
    try:
        password = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(f"[index] password_file {path} is not UTF-8 text; {hint}") from None
    if not password or "\n" in password or "\x00" in password:
        raise ConfigError(f"[index] password_file {path} does not hold one password on one line; {hint}")
    return password
