"""Broker rights for the fleet: Mosquitto's dynamic-security plugin, one role per box.

The shipped broker (``image/mosquitto/``) names every client after its
certificate: the CN is the user name (``use_identity_as_username``) and the
user name is the client id (``use_username_as_clientid``), so no client can
take over another's session by asking for its client id. What each user name
may do is in the plugin's JSON file, which Mosquitto checks when a message is
published, when it is delivered, and (unlike an ``acl_file``) when a client
subscribes: a box asking for ``$share/ingest/linetap/v1/+/up/#`` gets "not
authorized" in its SUBACK instead of joining the centre's ingest group and
swallowing other boxes' uploads.

Mosquitto 2.0's plugin has no ``%u`` patterns, so every box has its own role
(:func:`box_role`) naming its own subtree. Three more roles:

- ``linetap-centre`` (:data:`CENTRE_ROLE`): reads and writes all of
  ``linetap/v1/#`` and may join shared ingest groups; given to each ingest
  worker (``<client_id>-<i>``), the fleet tracker (``<client_id>-fleet``) and
  the operator's tools (``central``);
- ``linetap-enrol`` (:data:`ENROL_ROLE`): may send commands to the plugin
  (``$CONTROL/dynamic-security/v1``) and read its answers; given to
  ``central`` only, which ``linetap-central enroll`` uses to give a new box
  its role while the broker runs (:func:`grant_box`).

Why enrolment talks to the running broker rather than writing the JSON file:
the plugin reads its file once at start and rewrites it after every change it
is sent, so a file edited beside a running broker is ignored and then
overwritten, and a restart to load it would drop every box's connection.
:func:`initial_config` writes the first file, before the broker's first start
(``linetap-central broker-init``).

Nothing here gives a password: clients are known by their certificate alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import queue
import secrets
import string
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from linetap.firmware.durable import write_durably
from linetap.firmware.errors import ConfigError, DeviceMissing, SyncError
from linetap.sync import wire

if TYPE_CHECKING:
    from linetap.sync.mqtt import BrokerSettings

logger = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
CENTRE_ROLE = "linetap-centre"
ENROL_ROLE = "linetap-enrol"
BOX_ROLE_PREFIX = "linetap-box-"
ADMIN = "central"  # the operator's tools: fleet commands, config pushes, enrolment
CONF_DIR = Path(__file__).resolve().parents[1] / "image" / "mosquitto"
PLUGIN_NAME = "mosquitto_dynamic_security.so"
PLUGIN_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib/arm-linux-gnueabihf",
               "/usr/lib", "/usr/local/lib", "/usr/lib/mosquitto", "/usr/local/lib/mosquitto")
ROOT = wire.ROOT

# What a box may publish, and read, under its own linetap/v1/<device>/ (see image/mosquitto/README.md).
BOX_WRITES = ("up/#", "status", "birth", "telemetry", "config/reported", "resp/#", "alarm/#", "update/get",
              "update/state")
BOX_READS = ("ack/#", "config/desired", "cmd/#", "update/offer", "update/chunk")

# Everything not granted by a role is refused, delivery included; unsubscribing never hurts.
DEFAULT_ACCESS = {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                  "unsubscribe": True}


def _acl(kind: str, topic: str) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "priority": 0, "allow": True}


def box_role_name(device_id: str) -> str:
    return BOX_ROLE_PREFIX + wire.check_device_id(device_id)


def box_role(device_id: str) -> dict[str, Any]:
    """The role of one box: its own upward topics to write, its own downward topics to read."""
    base = f"{ROOT}/{wire.check_device_id(device_id)}"
    acls = [_acl("publishClientSend", f"{base}/{leaf}") for leaf in BOX_WRITES]
    for leaf in BOX_READS:
        # subscribePattern allows any filter inside the pattern (cmd/+ inside cmd/#), nothing wider.
        acls += [_acl("subscribePattern", f"{base}/{leaf}"), _acl("publishClientReceive", f"{base}/{leaf}")]
    return {"rolename": box_role_name(device_id), "textname": f"box {device_id}", "acls": acls}


def centre_role() -> dict[str, Any]:
    """The central store's processes: the whole tree, and shared ingest subscriptions."""
    return {"rolename": CENTRE_ROLE, "textname": "central store processes",
            "acls": [_acl("publishClientSend", f"{ROOT}/#"), _acl("publishClientReceive", f"{ROOT}/#"),
                     _acl("subscribePattern", f"{ROOT}/#"),
                     # Mosquitto 2.0 checks a shared subscription with its $share/<group>/ prefix.
                     _acl("subscribePattern", f"$share/+/{ROOT}/#")]}


def enrol_role() -> dict[str, Any]:
    """Commands to the plugin itself: who may create box roles (and, with them, anything else)."""
    return {"rolename": ENROL_ROLE, "textname": "creates a role and a client for each enrolled box",
            "acls": [_acl("publishClientSend", CONTROL_TOPIC), _acl("publishClientReceive", RESPONSE_TOPIC),
                     _acl("subscribeLiteral", RESPONSE_TOPIC)]}


def centre_identities(client_id: str = "linetap-central", workers: int = 2) -> list[str]:
    """The certificate CNs ``linetap-central serve`` uses: one per ingest worker, one for the tracker, one for
    the releases' chunk server."""
    return [f"{client_id}-{i}" for i in range(workers)] + [f"{client_id}-fleet", f"{client_id}-updates"]


def identity_settings(settings: BrokerSettings, name: str) -> BrokerSettings:
    """``settings`` for the central process whose certificate CN (and so client id) is ``name``.

    Its certificate and key are ``<name>.pem`` and ``<name>.key`` next to
    ``cert_file``. Without TLS (a loopback broker) nothing changes.
    """
    if not settings.tls or settings.cert_file is None:
        return settings
    folder = Path(settings.cert_file).parent
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    missing = [str(p) for p in (cert, key) if not p.is_file()]
    if missing:
        raise ConfigError(f"central process {name!r} has no certificate of its own ({', '.join(missing)} "
                          f"missing): the broker names each client after its certificate CN, so processes "
                          f"sharing one would take over each other's session; issue a client certificate with "
                          f"CN {name} into {folder} and give {name} the role {CENTRE_ROLE} "
                          "(linetap-central broker-init; image/mosquitto/README.md)")
    return dataclasses.replace(settings, cert_file=cert, key_file=key)


def check_box_name(device_id: str, client_id: str = "linetap-central") -> str:
    """Refuse a device id that names one of the centre's identities (``central``, ``<client_id>-...``)."""
    wire.check_device_id(device_id)
    if device_id in (ADMIN, client_id) or device_id.startswith(f"{client_id}-"):
        raise ConfigError(f"device id {device_id!r} is the name of a central process (the centre's names are "
                          f"{ADMIN!r} and {client_id}-...): a box with that certificate CN would act as the centre; "
                          "give the box another id")
    return device_id


def _client(username: str, roles: Iterable[str], text: str) -> dict[str, Any]:
    return {"username": username, "textname": text,
            "roles": [{"rolename": role, "priority": 0} for role in roles]}


def initial_config(centre: Sequence[str], *, admin: str = ADMIN, boxes: Iterable[str] = ()) -> dict[str, Any]:
    """The plugin's first JSON file: the centre's identities, the enrolling tool, boxes known so far."""
    boxes = sorted(set(boxes))
    names = [admin, *centre, *boxes]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ConfigError(f"broker identities {', '.join(clash)} are given twice; a box's device id may not "
                          "be the name of a central process (each is a certificate CN)")
    clients = [_client(admin, [CENTRE_ROLE, ENROL_ROLE], "operator tools and enrolment")]
    clients += [_client(name, [CENTRE_ROLE], "central process") for name in centre]
    clients += [_client(device, [box_role_name(device)], f"box {device}") for device in boxes]
    return {"defaultACLAccess": dict(DEFAULT_ACCESS), "clients": clients, "groups": [],
            "roles": [centre_role(), enrol_role(), *(box_role(d) for d in boxes)]}


def write_initial_config(path: Path, centre: Sequence[str], *, admin: str = ADMIN, boxes: Iterable[str] = (),
                         replace: bool = False) -> Path:
    """Write :func:`initial_config` to ``path`` (0600); refuses to overwrite the broker's live file."""
    path = Path(path)
    if path.exists() and not replace:
        raise ConfigError(f"{path} exists: the broker keeps its enrolled boxes there; pass --replace only "
                          "to start again from the centre's identities and the enrolled boxes")
    data = json.dumps(initial_config(centre, admin=admin, boxes=boxes), indent=2) + "\n"
    write_durably(path, data.encode(), mode=0o600)
    return path


# ------------------------------------------------------------ at run time --

def enrol_commands(device_id: str) -> dict[str, Any]:
    """What the plugin is sent to let a newly enrolled box in with its certificate (no password).

    The role's rights go one ``addRoleACL`` each, so enrolling a box again gives a role made by an
    older version the rights added since (``update/...``); those it has answer "already exists".
    """
    role = box_role(device_id)
    return {"commands": [
        {"command": "createRole", "rolename": role["rolename"], "textname": role["textname"]},
        {"command": "createClient", "username": device_id, "textname": f"box {device_id}",
         "roles": [{"rolename": role["rolename"], "priority": 0}]},
        *({"command": "addRoleACL", "rolename": role["rolename"], **acl} for acl in role["acls"]),
    ]}


def grant_box(settings: BrokerSettings, device_id: str, *, timeout: float = 10.0) -> list[str]:
    """Give an enrolled box its broker role on the running broker; the plugin's answers to creating the
    role and the client, and how many rights were added to the role.

    An identity that already exists counts as done (enrolling again, or a key
    replaced), so the call can be repeated; a role lacking rights added since it was made gets them. Raises :class:`SyncError` naming
    the command the broker refused and why.
    """
    from linetap.sync.mqtt import BrokerClient

    answers: queue.Queue[bytes] = queue.Queue()
    subscribed = threading.Event()
    refused: list[str] = []
    client = BrokerClient(settings, client_id=f"{ADMIN}-enrol-{secrets.token_hex(4)}")

    def on_subscribe(_c: Any, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        refused.extend(str(c) for c in codes if c.is_failure)
        subscribed.set()

    client.on_subscribe = on_subscribe
    client.on_connect = lambda c, _u, _f, rc, _p: None if rc.is_failure else c.subscribe(RESPONSE_TOPIC, qos=1)
    client.on_message = lambda _c, _u, msg: answers.put(msg.payload)
    try:
        client.open()
    except OSError as e:
        raise SyncError(f"cannot reach the broker {settings.host}:{settings.port} to give {device_id} its "
                        f"broker role: {e}") from e
    client.loop_start()
    try:
        if not subscribed.wait(timeout) or refused:
            why = ", ".join(refused) or "no answer"
            raise SyncError(f"the broker did not let {ADMIN!r} read {RESPONSE_TOPIC} ({why}); the enrolling "
                            f"certificate must be CN {ADMIN} with role {ENROL_ROLE} in the broker's "
                            "dynamic-security file (linetap-central broker-init)")
        commands = enrol_commands(device_id)
        client.publish(CONTROL_TOPIC, json.dumps(commands).encode(), qos=1).wait_for_publish(timeout)
        try:
            reply = json.loads(answers.get(timeout=timeout))
        except queue.Empty:
            raise SyncError(f"the broker's dynamic-security plugin did not answer within {timeout:.0f} s; "
                            f"check that it is loaded (image/mosquitto/README.md) and that {ADMIN!r} has "
                            f"role {ENROL_ROLE}") from None
    finally:
        client.disconnect()
        client.loop_stop()
    outcomes = []
    for sent, answer in zip(commands["commands"], reply.get("responses", [])):
        error = answer.get("error")
        if error and "already exists" not in error:
            raise SyncError(f"the broker refused {sent['command']} for {device_id}: {error}")
        outcomes.append(error or "ok")
    added = sum(o == "ok" for o in outcomes[2:])
    logger.info("broker role given device_id=%s role=%s outcomes=%s rights_added=%d", device_id,
                box_role_name(device_id), outcomes[:2], added)
    return outcomes[:2] + [f"{added} rights added"]


# ------------------------------------------------- the shipped configuration --

def find_plugin() -> Path:
    """Where Debian (or a local build) put the dynamic-security plugin."""
    for folder in PLUGIN_DIRS:
        path = Path(folder) / PLUGIN_NAME
        if path.is_file():
            return path
    raise DeviceMissing(f"Mosquitto's {PLUGIN_NAME} is in none of {', '.join(PLUGIN_DIRS)}; install it with: "
                        "apt-get install mosquitto")


def render_config(*, port: int, ca_file: Path, cert_file: Path, key_file: Path, dynsec_file: Path,
                  plugin: Path | None = None, template: Path = CONF_DIR / "linetap.conf") -> str:
    """``image/mosquitto/linetap.conf`` with its variables filled in."""
    return string.Template(Path(template).read_text()).substitute(
        port=port, ca_file=ca_file, cert_file=cert_file, key_file=key_file, dynsec_file=dynsec_file,
        dynsec_plugin=plugin or find_plugin())


def shipped_listener_lines(**variables: Any) -> list[str]:
    """The listener section of the shipped config (as :class:`~linetap.sync.broker.LocalBroker` takes it)."""
    lines = [line.strip() for line in render_config(**variables).splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("listener "))
    return [line for line in lines[start + 1:] if line and not line.startswith("#")]


# ------------------------------------------------------------------- the CLI --

def add_broker_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """``linetap-central broker-init``: plugged into :mod:`linetap.sync.central.cli`."""
    parser = subparsers.add_parser(
        "broker-init", parents=[common],
        help="write the broker's first dynamic-security file: the centre's identities and enrolled boxes")
    parser.add_argument("file", type=Path, help="where the broker's plugin_opt_config_file points")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="central config ([broker] client_id and workers name the identities)")
    parser.add_argument("--replace", action="store_true", help="overwrite an existing file")
    parser.set_defaults(run=_broker_init)


def _broker_init(args: argparse.Namespace) -> int:
    from linetap.sync.central.cli import data_dir
    from linetap.sync.central.config import load_config
    from linetap.sync.central.index import INDEX_FILE
    from linetap.sync.central.indexes import open_index

    folder = data_dir(args)
    config = load_config(args.config, folder)
    section = config.broker
    boxes: list[str] = []
    if config.index.url is not None or (folder / INDEX_FILE).exists():
        with open_index(config.index, folder) as index:
            boxes = [d["device_id"] for d in index.devices()]
    centre = centre_identities(section.client_id, section.workers)
    write_initial_config(args.file, centre, boxes=boxes, replace=args.replace)
    print(f"wrote {args.file}: {ADMIN} (tools, enrolment), {', '.join(centre)} (serve), {len(boxes)} enrolled "
          "boxes\nissue one client certificate per name (CN = the name); copy the file where the broker's "
          "plugin_opt_config_file points, owned by the broker's user")
    return 0

