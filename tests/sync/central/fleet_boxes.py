"""Lightweight boxes for the fleet tests: the box's own FleetAgent on one paho client each.

A :class:`SimBox` drives the agent the way the box's link does: a new
session (and Will) before every connect, the online status and birth after
it, ``config/desired`` and ``cmd/+`` answered from paho's thread. The effects
only note what they were asked. Keys are derived from the device id, so the
test process and the box processes agree on them without passing any.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import ssl
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from linetap.firmware.clock import SystemClock
from linetap.firmware.config import Config
from linetap.firmware.errors import DeviceMissing
from linetap.sync import fleet, fleetcommands, fleetwire
from linetap.sync.fleet import Action, FleetAgent
from linetap.sync.fleetwire import BirthInfo, SpoolFigures
from linetap.sync.signed import key_table

SPOOL = SpoolFigures(unsynced_recordings=2, unsynced_bytes=48_000, oldest_unsynced_age_s=30,
                     free_bytes=8_000_000_000)


def device_key(device_id: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"linetap-test-box:" + device_id.encode()).digest())


class SyncedClock(SystemClock):
    """The machine's time, taken as NTP-synchronised (as on a box in service), so expiry is judged."""

    def synced(self) -> bool:
        return True


class SimBox:
    """One box, over TLS when ``tls`` gives the CA, certificate and key files.

    ``on_online(device_id, session)`` runs on its paho thread once the broker has its birth.
    """

    def __init__(self, device_id: str, host: str, port: int, operator: Ed25519PublicKey, *, boot: int = 1,
                 signing_key: Ed25519PrivateKey | None = None, fail_apply: bool = False,
                 software_version: str = "1.4.0", tls: tuple[Path, Path, Path] | None = None,
                 on_online: Callable[[str, int], None] | None = None) -> None:
        self.device_id = device_id
        self.calls: list[str] = []
        self._fail_apply = fail_apply
        self._on_online = on_online
        self._software_version = software_version
        self._host, self._port = host, port
        self.agent = FleetAgent(device_id=device_id, signing_key=signing_key or device_key(device_id),
                                operator_keys=key_table([operator]), clock=SyncedClock(),
                                config=Config(device={"id": device_id}), state=None, boot=boot, can_restart=True)
        self._changed = threading.Condition()
        self._online_session = 0
        self._birth_mid: int | None = None
        self._closing = False
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
        if tls is not None:
            ca_file, cert_file, key_file = tls
            self.client.tls_set(ca_certs=str(ca_file), certfile=str(cert_file), keyfile=str(key_file),
                                cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.reconnect_delay_set(0.1, 1.0)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self._next_session()

    # What each command's effect gives back; the effects only note that they ran.
    OUTCOMES = {fleetcommands.Ping: ("ping", {"uptime_s": 5}), fleetcommands.ShowIdentify: ("identify", None),
                fleetcommands.PlayTestAnnouncement: ("test_announcement", None), fleetcommands.SyncNow: ("sync_now", None),
                fleetcommands.ReadLogs: ("logs", ["one", "two"]), fleetcommands.PurgeSynced: ("purge_synced", 0)}

    def _run(self, actions: list[Action]) -> fleet.Reply | fleet.ConfigReport:
        """Run the agent's actions as the box does (state kept nowhere); the answer to publish."""
        answer, todo = None, list(actions)
        while todo:
            action = todo.pop(0)
            if isinstance(action, (fleet.Reply, fleet.ConfigReport)):
                answer = action
            elif isinstance(action, fleetcommands.Restart) and isinstance(answer, fleet.Reply):
                self.calls.append("restart")
            elif isinstance(action, fleet.RollbackConfig):
                self.calls.append("rollback_config")
            elif isinstance(action, fleet.ApplyConfig):
                self.calls.append("apply_config")
                failed = DeviceMissing("audio device 'hw:1' is missing; plug the codec in")
                todo[:0] = self.agent.config_done(action, error=failed if self._fail_apply else None)
            elif type(action) in self.OUTCOMES:
                name, outcome = self.OUTCOMES[type(action)]
                self.calls.append(name)
                todo[:0] = self.agent.command_done(action, outcome)
        return answer

    def _next_session(self) -> None:
        self._session = self.agent.start_session()
        will = self._session.will
        self.client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)

    # -- owner --

    def start(self) -> SimBox:
        self.client.connect_async(self._host, self._port, keepalive=10, clean_start=True)
        self.client.loop_start()
        return self

    def wait_online(self, session: int = 1, timeout: float = 10.0) -> bool:
        """True once the broker has the birth of ``session`` (the online status came before it)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._online_session >= session, timeout)

    def publish(self, message: fleetwire.Outbound) -> None:
        self.client.publish(message.topic, message.payload, qos=message.qos,
                            retain=message.retain).wait_for_publish(5.0)

    def vanish(self) -> None:
        """Leave so that the broker publishes the Will, as for a box that lost power."""
        self._closing = True
        self.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
        self.client.loop_stop()

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self.client.disconnect()
            self.client.loop_stop()

    # -- paho's thread --

    def _on_connect(self, client: mqtt.Client, _userdata: object, _flags: object, reason: ReasonCode,
                    _props: object) -> None:
        if reason.is_failure:
            return
        online = self._session.online
        client.publish(online.topic, online.payload, qos=1, retain=True)
        birth = self.agent.birth(BirthInfo(self._software_version, "sim", ("hook-gpio", "rec-led"), SPOOL))
        self._birth_mid = client.publish(birth.topic, birth.payload, qos=1, retain=True).mid
        client.subscribe([(fleetwire.config_desired_topic(self.device_id), SubscribeOptions(qos=1)),
                          (fleetwire.cmd_filter(self.device_id), SubscribeOptions(qos=1))])

    def _on_publish(self, _client: mqtt.Client, _userdata: object, mid: int, _reason: ReasonCode,
                    _props: object) -> None:
        if mid != self._birth_mid:
            return
        with self._changed:
            self._online_session = self._session.session
            self._changed.notify_all()
        if self._on_online is not None:
            self._on_online(self.device_id, self._session.session)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: object, _flags: object, _reason: ReasonCode,
                       _props: object) -> None:
        if not self._closing:
            self._next_session()  # paho reconnects with the Will set now

    def _on_message(self, client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/config/desired"):
            report = self._run(self.agent.handle_config(msg.payload))
            client.publish(report.topic, report.payload, qos=report.qos, retain=report.retain)
            return
        props = msg.properties
        response = self._run(self.agent.handle_command(msg.topic, msg.payload,
                                                       getattr(props, "ResponseTopic", None),
                                                       getattr(props, "CorrelationData", None)))
        out = Properties(PacketTypes.PUBLISH)
        if response.correlation_data is not None:
            out.CorrelationData = response.correlation_data
        client.publish(response.topic, response.payload, qos=response.qos, properties=out)


def run_boxes(device_ids: Sequence[str], host: str, port: int, operator_raw: bytes,
              events: multiprocessing.Queue, stop: threading.Event) -> None:
    """A box process: start ``device_ids``, report each (device, session) online on ``events``, run until ``stop``."""
    operator = Ed25519PublicKey.from_public_bytes(operator_raw)
    boxes = [SimBox(d, host, port, operator, on_online=lambda dev, session: events.put((dev, session)))
             for d in device_ids]
    for box in boxes:
        box.start()
    stop.wait(300)
    for box in boxes:
        box.close()
