"""A throwaway PostgreSQL cluster on loopback: for the tests, the benchmarks and ``make demo-scale``.

A production index is the operator's PostgreSQL (``[index] url``); this class
only makes a private cluster with Debian's server programs (the newest
``/usr/lib/postgresql/<version>/bin``: ``initdb``, ``pg_ctl``), starts it on
127.0.0.1 at a free port with trust authentication for one role
(``linetap``) and makes the database ``linetap``, as
:class:`~linetap.sync.broker.LocalBroker` does for Mosquitto. ``pg_ctl -w``
waits until the server accepts connections: nothing here sleeps.

PostgreSQL refuses to run as root. Run by root (CI, the demo in a container),
the cluster lives in a folder of its own under the system's temporary folder,
owned by the ``postgres`` user that Debian's package makes (a test's own
folder is usually not reachable by that user), and every server program runs
through ``runuser -u postgres``; that folder goes when the cluster is closed.
Run by anyone else, it lives in ``<folder>/data`` and runs as that user.

The cluster is tuned for throwaway use: ``fsync = off`` (a killed server loses
nothing the operating system already holds; only a machine crash would), and
``synchronous_commit`` stays on, so what a commit acknowledged survives
:meth:`LocalPostgres.stop` in any mode and a restart.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from linetap.firmware.errors import DeviceMissing, SyncError
from linetap.sync.broker import HOST, free_port

logger = logging.getLogger(__name__)

PG_ROOT = Path("/usr/lib/postgresql")
INSTALL_HINT = "install Debian's package: apt-get install postgresql (.ci/bootstrap does)"
SERVER_USER = "postgres"  # the system user Debian's package makes; the server runs as it when we are root
ROLE = "linetap"
DATABASE = "linetap"
STOP_MODES = ("smart", "fast", "immediate")


def server_bin(root: Path = PG_ROOT) -> Path:
    """The newest installed PostgreSQL's ``bin`` folder (with ``initdb`` and ``pg_ctl``)."""
    found = []
    for folder in root.glob("*/bin") if root.is_dir() else ():
        version = folder.parent.name
        if version.isdigit() and (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            found.append((int(version), folder))
    if not found:
        raise DeviceMissing(f"PostgreSQL's server programs (initdb, pg_ctl) are not under {root}/<version>/bin; "
                            f"{INSTALL_HINT}")
    return max(found)[1]


class LocalPostgres:
    """A private PostgreSQL cluster on 127.0.0.1; a context manager (start on enter, stop and clean on exit)."""

    def __init__(self, folder: Path, *, port: int | None = None, bin_dir: Path | None = None) -> None:
        self.folder = Path(folder)
        self.port = port or free_port()
        self._bin = bin_dir
        self._as_root = os.geteuid() == 0
        self._home: Path | None = None  # the cluster's folder: <folder> or, as root, one the server user owns
        self._running = False

    @property
    def host(self) -> str:
        return HOST

    @property
    def url(self) -> str:
        """The ``linetap`` database's URL (no password: the cluster trusts loopback)."""
        return self.url_for(DATABASE)

    def url_for(self, database: str) -> str:
        return f"postgresql://{ROLE}@{HOST}:{self.port}/{database}"

    @property
    def running(self) -> bool:
        return self._running

    @property
    def data_dir(self) -> Path:
        if self._home is None:
            raise SyncError("the local PostgreSQL has no cluster yet; call start() first")
        return self._home / "data"

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self._home / "server.log").read_text(errors="replace") if self._home else ""
        except OSError as e:
            return f"(no server log: {e.strerror})"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> LocalPostgres:
        """Make the cluster (first time), start the server and wait until it accepts connections."""
        if self._running:
            return self
        if self._bin is None:
            self._bin = server_bin()
        if self._home is None:
            self._home = self._make_home()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data_dir), "-A", "trust", "-U", ROLE, "-E", "UTF8",
                      "--locale=C", "--no-sync", what="initdb")
        options = (f"-p {self.port} -k {self._home} -c listen_addresses={HOST} -c fsync=off "
                   "-c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self._home / "server.log"), "-o", options,
                  "-w", "-t", "60", "start", what="pg_ctl start")
        self._running = True
        self._create_database(DATABASE)
        logger.info("postgresql running port=%d data=%s", self.port, self.data_dir)
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server, keeping the cluster. ``fast`` rolls back open transactions and
        disconnects clients; ``immediate`` is a crash (recovery at the next start)."""
        if mode not in STOP_MODES:
            raise ValueError(f"stop mode {mode!r} is not one of {STOP_MODES}")
        if not self._running:
            return
        self._running = False
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop", what="pg_ctl stop")
        logger.info("postgresql stopped port=%d mode=%s", self.port, mode)

    def restart(self, mode: str = "fast") -> LocalPostgres:
        """Stop and start again on the same port with the same data (clients see their connections drop)."""
        self.stop(mode)
        return self.start()

    def close(self) -> None:
        """Stop the server and delete the cluster; safe twice."""
        try:
            self.stop("immediate")
        finally:
            if self._home is not None and self._home != self.folder:
                shutil.rmtree(self._home, ignore_errors=True)
                (self.folder / "cluster").unlink(missing_ok=True)
            self._home = None

    def create_database(self, name: str) -> str:
        """Make an empty database (an isolated index for one test); returns its URL."""
        self._create_database(name)
        return self.url_for(name)

    def _create_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url_for("postgres"), autocommit=True, connect_timeout=10) as db:
            if db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                db.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(ROLE)))

    def _make_home(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self._as_root:
            return self.folder
        try:
            owner = pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise DeviceMissing(f"PostgreSQL will not run as root and there is no {SERVER_USER!r} user to run it "
                                f"as; {INSTALL_HINT}") from None
        home = Path(tempfile.mkdtemp(prefix="linetap-pg-"))
        os.chown(home, owner.pw_uid, owner.pw_gid)
        (self.folder / "cluster").unlink(missing_ok=True)
        (self.folder / "cluster").symlink_to(home)  # where to look for the server log
        return home

    def _run(self, program: str, *args: str, what: str) -> None:
        assert self._bin is not None
        argv = [str(self._bin / program), *args]
        if self._as_root:
            argv = ["runuser", "-u", SERVER_USER, "--", *argv]
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                              cwd=self._home, check=False)
        if done.returncode != 0:
            raise SyncError(f"{what} failed for the local PostgreSQL on port {self.port} (exit "
                            f"{done.returncode}): {(done.stderr or done.stdout).strip()}\n{self.log_tail()}")

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
