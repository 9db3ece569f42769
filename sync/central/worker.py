"""Central ingest workers: many of them, in threads or processes, and ``linetap-central serve``.

One worker, its threads and its rules (late acknowledgement, one message
never stops a worker, only a store that cannot work ends one) are in
:mod:`linetap.sync.central.ingestworker`. Here: :func:`run_workers` starts
``n`` of them in one shared group (threads share one interpreter; processes
give each a core), :class:`WorkerGroup` watches and stops them, and
:func:`serve` runs them with the fleet tracker until SIGTERM; its exit status
is 1 when a worker failed, so the service manager restarts the service.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from linetap.firmware.errors import ConfigError, SyncError
from linetap.sync.central.ingestworker import STOP_POLL_S, IngestWorker, Receiver
from linetap.sync.dynsec import identity_settings
from linetap.sync.mqtt import BrokerSettings

if TYPE_CHECKING:
    from linetap.sync.central.config import BrokerSection

logger = logging.getLogger(__name__)

class _WorkerProcess:
    """An :class:`IngestWorker` in a process of its own, seen from the parent."""

    def __init__(self, context: multiprocessing.context.BaseContext, make_ingest: Callable[[], Receiver],
                 settings: BrokerSettings, group: str, client_id: str) -> None:
        self.client_id = client_id
        self._ready = context.Event()
        self._stop = context.Event()
        self._process = context.Process(target=_process_main, name=f"ingest-{client_id}",
                                        args=(make_ingest, settings, group, client_id, self._ready, self._stop))
        self._closed = False

    def start(self) -> _WorkerProcess:
        self._process.start()
        return self

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    @property
    def failure(self) -> BaseException | None:
        code = self._process.exitcode
        if code is None or (code == 0 and self._stop.is_set()):
            return None
        return SyncError(f"ingest worker process {self.client_id} ended with exit code {code}")

    def close(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._process.join(timeout)
        if self._process.is_alive():
            logger.warning("ingest worker process did not stop client_id=%s; terminating", self.client_id)
            self._process.terminate()
            self._process.join(timeout)


def _process_main(make_ingest: Callable[[], Receiver], settings: BrokerSettings, group: str, client_id: str,
                  ready: threading.Event, stop: threading.Event) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    ingest = make_ingest()
    with IngestWorker(ingest, settings, group=group, client_id=client_id) as worker:
        while not stop.wait(STOP_POLL_S) and worker.failure is None:
            if worker.ready:
                ready.set()
    close_ingest = getattr(ingest, "close", None)
    if close_ingest is not None:
        close_ingest()
    if worker.failure is not None:
        raise SystemExit(1)


class WorkerGroup:
    """Workers started by :func:`run_workers`; closing it stops them all."""

    def __init__(self, workers: Sequence[IngestWorker | _WorkerProcess]) -> None:
        self.workers = list(workers)

    def wait_ready(self, timeout: float) -> bool:
        """Every worker connected and subscribed (shared by the timeout, not per worker)."""
        deadline = time.monotonic() + timeout
        return all(worker.wait_ready(max(0.0, deadline - time.monotonic())) for worker in self.workers)

    @property
    def failure(self) -> BaseException | None:
        return next((w.failure for w in self.workers if w.failure is not None), None)

    def close(self, timeout: float = 10.0) -> None:
        for worker in self.workers:
            worker.close(timeout)

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_workers(n: int, make_ingest: Callable[[], Receiver], broker_settings: BrokerSettings, *,
                group: str = "ingest", client_id_prefix: str | None = None,
                processes: bool = False) -> WorkerGroup:
    """Start ``n`` workers in one shared group, each with its own ``make_ingest()``.

    Threads share one interpreter (the store's fsyncs overlap, its Python does
    not); ``processes=True`` gives each worker a process so n workers use n
    cores; ``make_ingest`` must then be picklable (a module-level function or a
    ``functools.partial`` of one). Client ids are ``<prefix>-<i>``, the same at
    every start, so each worker resumes its broker session. Over TLS each
    worker shows its own certificate, ``<prefix>-<i>.pem`` next to
    ``cert_file``: the shipped broker makes the certificate CN the client id.
    """
    if n < 1:
        raise ConfigError(f"number of ingest workers {n} must be at least 1")
    prefix = client_id_prefix or f"linetap-central-{group}-{socket.gethostname()}"
    workers: list[IngestWorker | _WorkerProcess] = []
    context = multiprocessing.get_context("spawn")  # never fork a process that runs threads
    try:
        for i in range(n):
            client_id = f"{prefix}-{i}"
            own = identity_settings(broker_settings, client_id)
            if processes:
                workers.append(_WorkerProcess(context, make_ingest, own, group, client_id).start())
            else:
                workers.append(IngestWorker(make_ingest(), own, group=group, client_id=client_id).start())
    except BaseException:
        WorkerGroup(workers).close()
        raise
    return WorkerGroup(workers)


def serve(broker_settings: BrokerSettings, make_ingest: Callable[[], Receiver], *, workers: int = 1,
          group: str = "ingest", client_id_prefix: str | None = None, processes: bool = False,
          stop: threading.Event | None = None) -> int:
    """Run ingest workers until SIGTERM/SIGINT (or ``stop``); the exit status for the CLI.

    0 after a requested stop; 1 when a worker failed, so the service manager
    restarts the service (the failed message is still unacknowledged and
    comes back). Once every worker is subscribed it says ``READY=1`` to the
    service manager (:func:`notify_ready`; the unit is ``Type=notify``).
    """
    stop = stop or threading.Event()
    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda _signum, _frame: stop.set())
    try:
        with run_workers(workers, make_ingest, broker_settings, group=group, client_id_prefix=client_id_prefix,
                         processes=processes) as group_:
            ready = False
            while not stop.wait(1.0 if ready else 0.05):
                if group_.failure is not None:
                    logger.error("central ingest stopping: %s", group_.failure)
                    return 1
                if not ready and group_.wait_ready(0):
                    ready = True
                    notify_ready(f"{workers} ingest workers subscribed to group {group}")
            return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def notify_ready(status: str) -> None:
    """Tell the service manager that serve is ingesting (sd_notify ``READY=1`` to ``$NOTIFY_SOCKET``, as
    ``Type=notify`` waits for); nothing without that variable. A manager that is away is only logged."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(f"READY=1\nSTATUS={status}".encode(), "\0" + address[1:] if address[0] == "@" else address)
        except OSError as e:
            logger.warning("sd_notify failed error=%s", e.strerror)


# ------------------------------------------------------------------- the CLI --

def add_serve_command(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """``linetap-central serve``: plugged into :mod:`linetap.sync.central.cli`."""
    parser = subparsers.add_parser("serve", parents=[common],
                                   help="ingest uploads from the broker until stopped (SIGTERM)")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="central config with [broker] and [timestamps] (default: DATA_DIR/central.toml, "
                             "else a broker on 127.0.0.1:1883 without TLS, and no timestamps)")
    parser.set_defaults(run=_serve_command)


def broker_settings(section: BrokerSection, data_dir: Path) -> BrokerSettings:
    """The config's ``[broker]`` as worker settings; relative TLS paths are inside ``data_dir``."""
    def inside(name: str | None) -> Path | None:
        return None if name is None else Path(data_dir) / name

    return BrokerSettings(host=section.host, port=section.port, tls=section.tls,
                          ca_file=inside(section.ca_file), cert_file=inside(section.cert_file),
                          key_file=inside(section.key_file), keepalive=section.keepalive_s,
                          reconnect_max_s=float(section.reconnect_max_s))


@contextlib.contextmanager
def _chunk_server(start: Callable[..., Any], settings: BrokerSettings, folder: Path, client_id: str) -> Iterator[None]:
    """The releases' chunk server (``update/get``), when its identity has a certificate; without one, ingest
    runs on and the error names the certificate to issue (a store upgraded without it still stores calls)."""
    try:
        own = identity_settings(settings, client_id)
    except ConfigError as e:
        logger.error("remote updates cannot be served: %s", e)
        yield
        return
    server = start(own, folder, client_id=client_id)
    try:
        yield
    finally:
        server.close()


def _serve_command(args: argparse.Namespace) -> int:
    from linetap.sync.central.chunkserver import start_chunk_server
    from linetap.sync.central.cli import data_dir
    from linetap.sync.central.config import load_config
    from linetap.sync.central.tracker import start_tracker
    from linetap.sync.central.ingest import Ingest
    from linetap.sync.central.keys import load_store_key
    from linetap.sync.central.peaksjob import start_peaks
    from linetap.sync.central.tsa import start_stamping

    folder = data_dir(args)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = load_config(args.config, folder)
    # No receipt, no ack: a store without its store key does not start (the error names `keys init`).
    # Each worker's Ingest loads the key once more in its own process.
    load_store_key(folder)
    section = config.broker
    settings = broker_settings(section, folder)
    # The fleet's status, birth, telemetry and alarms go to the index while the store runs.
    tracker_id = f"{section.client_id}-fleet"
    # Picklable: each worker process opens its own index and store ([index], [store]) from the config.
    make_ingest = functools.partial(Ingest, folder, config=config)
    # Staging a box never completed is aged out at every start (and by `retention run`),
    # so a restart loop cannot let it pile up.
    with make_ingest() as ingest:
        check = getattr(ingest.store, "check", None)  # a bucket: reachable, and able to lock when asked to
        if check is not None:
            check(object_lock=config.store.object_lock != "off")
        for aged in ingest.age_out():
            logger.warning("aged out incomplete upload device=%s recording=%s object=%s bytes=%d",
                           aged.device_id, aged.recording_id, aged.object, aged.bytes)
        ingest.issue_missing_receipts()  # recordings stored before this store kept a receipt log
    # Trusted timestamps over the chain heads on their schedule, in a thread that never stops ingest.
    with start_tracker(identity_settings(settings, tracker_id), folder, client_id=tracker_id,
                       index_config=config.index), \
            start_stamping(folder, config.timestamps, index_config=config.index), \
            start_peaks(folder, config), \
            _chunk_server(start_chunk_server, settings, folder, f"{section.client_id}-updates"):
        # Ingest is process-safe on one data dir: several workers each get a core.
        return serve(settings, make_ingest, workers=section.workers,
                     group=section.group, client_id_prefix=section.client_id, processes=section.workers > 1)
