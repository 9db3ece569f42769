"""The box's local config file: TOML in, one frozen :class:`Config` out.

One model per section; each component is given only its own section
(``config.audio`` to the audio pipeline, ``config.controls`` to the buttons).
A new section is a new :class:`~linetap.firmware.schema.Schema` subclass with
defaults for every key, added as a field of :class:`Config` and documented in
``linetap.example.toml`` (a test keeps the two in step).

:func:`load_config` reads the file, validates it and loads the board profile
it names, so that ``linetap config check`` and start-up meet every mistake at
once, as one :class:`~linetap.firmware.errors.ConfigError`. The app gets the
profile from ``config.board_profile()``; ``config.device.board`` is the name
or path it comes from. A relative profile path in the file is made absolute
against the config file's folder, so the loaded config names it exactly.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StrictStr, model_validator

from linetap.firmware.board import BoardProfile, is_profile_path, load_board
from linetap.firmware.errors import ConfigError
from linetap.firmware.manifest import DEVICE_ID
from linetap.firmware.schema import Invalid, Problem, Schema, load_model, read_toml

logger = logging.getLogger(__name__)

EXAMPLE_FILE = "linetap.example.toml"


def _as_device_id(text: str) -> str:
    """The closest valid device id to ``text`` (lowercase, [a-z0-9-], at most 64 characters)."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", text.lower())
    return re.sub(r"-{2,}", "-", cleaned)[:64].strip("-")


def _check_device_id(value: str) -> str:
    if DEVICE_ID.fullmatch(value):
        return value
    suggestion = _as_device_id(value)
    example = f"e.g. {suggestion!r}" if suggestion else "e.g. 'lt-front-desk-1'"
    raise ValueError(f"must be 1-64 characters of a-z, 0-9 and '-', starting and ending with a "
                     f"letter or digit (it becomes an MQTT topic level and the certificate CN); "
                     f"{example}")


def default_device_id() -> str:
    """``lt-`` + this machine's host name, made a valid device id."""
    return _as_device_id(f"lt-{socket.gethostname()}")


DeviceId = Annotated[StrictStr, AfterValidator(_check_device_id)]


class DeviceSection(Schema):
    id: DeviceId = Field(default_factory=default_device_id)
    # A built-in board name, or the path of a profile TOML (relative to the config file's folder).
    board: str = "sim"


class AudioSection(Schema):
    # Every allowed rate is a multiple of 1000 Hz, so any whole block_ms is a whole number of frames.
    rate: Literal[8000, 16000, 48000] = 16000  # pipeline rate; the codec is resampled to it
    block_ms: int = Field(default=20, ge=5, le=100)  # audio block length
    queue_blocks: int = Field(default=100, ge=2, le=10_000)  # capture ring between callback and worker

    @property
    def block_frames(self) -> int:
        return self.rate * self.block_ms // 1000


class ControlsSection(Schema):
    long_press_s: float = Field(default=1.5, gt=0, le=10)  # hold a button this long for a long press


DtmfKey = Literal["", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "#"]


class ConsentSection(Schema):
    announce: bool = True  # play the announcement into every recorded call
    announce_when: Literal["connect", "far-speech"] = "connect"
    far_speech_wait_s: float = Field(default=8.0, gt=0, le=60)  # with far-speech: announce anyway after this
    language: str = "en"  # which of the prompts to play
    prompts: dict[str, str] = Field(default_factory=lambda: {"en": "builtin:en"}, strict=False)
    prompt_level_dbfs: float = Field(default=-18.0, ge=-40, le=-3)  # prompts are brought to this RMS level
    max_prompt_s: float = Field(default=15.0, gt=0, le=60)
    warning_tone: bool = True  # 1400 Hz, 0.5 s, repeated while recording
    warning_interval_s: float = Field(default=15.0, ge=5, le=600)
    warning_level_dbfs: float = Field(default=-20.0, ge=-40, le=-3)
    opt_out_key: DtmfKey = ""  # a DTMF key the caller presses to refuse recording; "" turns it off
    opt_out_window_s: float = Field(default=30.0, gt=0, le=600)  # from the announcement's start

    @model_validator(mode="after")
    def _language_has_a_prompt(self) -> ConsentSection:
        if self.announce and self.language not in self.prompts:
            raise Invalid([Problem(("language",), self.language,
                                   f"no prompt for this language; add it to consent.prompts "
                                   f"(which has {', '.join(sorted(self.prompts)) or 'none'})")])
        return self


class CallsSection(Schema):
    ring_timeout_s: float = Field(default=8.0, gt=0, le=60)  # no RING for this long: a missed call
    hangup_grace_s: float = Field(default=0.8, ge=0, le=5)  # a shorter on-hook is a flash, not a hang-up
    caller_id_max_age_s: float = Field(default=20.0, gt=0, le=120)
    # Voice activity: far-end speech for the announcement, and call start/end on boards with no hook signal.
    vad_threshold_db: float = Field(default=10.0, ge=1, le=40)  # above the noise floor
    vad_min_level_dbfs: float = Field(default=-50.0, ge=-90, le=0)
    vad_hangover_s: float = Field(default=0.3, ge=0, le=5)
    start_window_s: float = Field(default=3.0, gt=0, le=30)  # voice on both sides within this starts a call
    end_silence_s: float = Field(default=60.0, gt=0, le=3600)  # two-sided silence this long ends it
    hold_min_s: float = Field(default=10.0, gt=0, le=3600)  # two-sided silence this long is a hold span


# The one bound of the segment length: the spool and the encoder ask here. Below half a second
# the fsyncs, age headers and upload messages per second of audio outweigh what a power cut saves.
SEGMENT_S_MIN = 0.5
SEGMENT_S_MAX = 120.0
MAX_SPOOL_BYTES = 2**44  # 16 TiB: more than any card the box takes


def segment_s_problem(value: float) -> str | None:
    """Why ``value`` cannot be a segment length in seconds, or None."""
    if SEGMENT_S_MIN <= value <= SEGMENT_S_MAX:
        return None
    return f"use {SEGMENT_S_MIN:g} to {SEGMENT_S_MAX:g} seconds"


class SpoolSection(Schema):
    # Audio per encrypted segment: what a power cut can lose.
    segment_s: float = Field(default=10.0, ge=SEGMENT_S_MIN, le=SEGMENT_S_MAX)
    bitrate: int = Field(default=24000, ge=12000, le=128000)  # Opus bit rate for the stereo call, bit/s
    keep_synced_days: float = Field(default=7.0, ge=0, le=3650)  # synced recordings stay this long on the box
    max_bytes: int = Field(default=0, ge=0, le=MAX_SPOOL_BYTES)  # 0: no limit but free space
    min_free_mb: int = Field(default=256, ge=16, le=MAX_SPOOL_BYTES // 2**20)  # free-space floor
    on_full: Literal["stop-and-alarm", "overwrite-oldest"] = "stop-and-alarm"


class SyncSection(Schema):
    broker: str = ""  # MQTT broker host name; "" keeps recordings on the box only
    port: int = Field(default=8883, ge=1, le=65535)
    # TLS with a CA and this box's client certificate (CN = device.id). Plain TCP only for a
    # broker on this machine (the demo): anything else would expose the fleet's topics.
    tls: bool = True
    ca_file: str = "keys/ca.pem"  # relative paths are inside the data directory
    # The TLS client certificate and key: never keys/device.key, the Ed25519 key that signs manifests.
    cert_file: str = "keys/tls.crt"
    key_file: str = "keys/tls.key"
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    reconnect_max_s: float = Field(default=120.0, ge=1, le=3600)  # back-off ceiling after the broker drops
    window: int = Field(default=32, ge=1, le=1000)  # upload messages in flight before an acknowledgement
    ack_timeout_s: float = Field(default=60.0, ge=1, le=3600)  # resend what is not acknowledged by then
    bandwidth_bytes_s: int = Field(default=0, ge=0, le=10**9)  # upload cap; 0: no cap
    telemetry_s: float = Field(default=60.0, ge=5, le=3600)  # fleet telemetry period

    @model_validator(mode="after")
    def _plain_tcp_only_on_loopback(self) -> SyncSection:
        if self.broker and not self.tls and self.broker not in ("localhost", "127.0.0.1", "::1"):
            raise Invalid([Problem(("tls",), self.tls,
                                   f"plain TCP to {self.broker!r} would send the fleet's traffic "
                                   "unprotected; set tls = true with ca_file, cert_file and key_file")])
        return self


class LogSection(Schema):
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(Schema):
    device: DeviceSection = Field(default_factory=DeviceSection)
    audio: AudioSection = AudioSection()
    controls: ControlsSection = ControlsSection()
    consent: ConsentSection = Field(default_factory=ConsentSection)
    calls: CallsSection = CallsSection()
    spool: SpoolSection = SpoolSection()
    sync: SyncSection = SyncSection()
    log: LogSection = LogSection()

    def board_profile(self) -> BoardProfile:
        """Load the board profile ``device.board`` names (a fresh read each call; call it once).

        :func:`load_config` has already loaded it once, so for a config it
        returned this fails only if the profile file changed since.
        """
        return load_board(self.device.board)


def load_config(path: str | Path | None) -> Config:
    """Read, validate and return the config at ``path``, with its board profile loaded.

    ``None`` means no file: every default, on the simulated board. Raises one
    ConfigError listing every problem (file missing, TOML syntax, unknown or
    mistyped keys, an unusable board).
    """
    if path is None:
        config, source = Config(), "defaults"
    else:
        path = Path(path)
        data = read_toml(path, missing_hint=f"create it from {EXAMPLE_FILE} "
                                             f"(shipped at the top of the linetap source tree)")
        _resolve_board_path(data, relative_to=path.parent)
        config, source = load_model(Config, data, source=str(path)), str(path)
    try:
        board = config.board_profile()
    except ConfigError as exc:
        raise ConfigError(f"{source}: device.board = {config.device.board!r} is not usable:\n{exc}") from None
    logger.info("config loaded source=%s device_id=%s board=%s rate=%d", source, config.device.id,
                board.name, config.audio.rate)
    return config


def check_prompts(config: Config, *, source: str) -> None:
    """Load every configured prompt as start-up does (``linetap config check``); one ConfigError lists each bad one.

    Start-up loads them anyway, so :func:`load_config` does not: decoding
    and resampling every prompt twice would only slow the service down.
    """
    from linetap.firmware.consent import load_prompt

    consent = config.consent
    if not consent.announce:
        return
    problems = []
    for language, location in consent.prompts.items():
        try:
            load_prompt(language, location, rate=config.audio.rate, max_seconds=consent.max_prompt_s,
                        level_dbfs=consent.prompt_level_dbfs)
        except ConfigError as exc:
            problems.append(f"{source}: consent.prompts.{language} = {location!r}: {exc}")
    if problems:
        raise ConfigError("\n".join(problems))


def overlay_config(config: Config, pushed: Path) -> Config:
    """``config`` (the local file) with the keys of ``pushed``, a config the fleet pushed, laid over it."""
    data = read_toml(pushed, missing_hint="it is written when the fleet pushes a config; "
                                          "without it the local file applies alone")
    merged = merge_pushed(config, data, source=str(pushed))
    logger.info("pushed config overlaid source=%s", pushed)
    return merged


def merge_pushed(local: Config, pushed: dict, *, source: str) -> Config:
    """The local config with each key a pushed config names replaced, validated as one config.

    A pushed config names only what the fleet manages: keys it leaves out keep
    the local file's values (so pushing ``[log]`` alone cannot blank a box's
    broker), and each push is judged against the local file, not the pushes
    before it, so removing a key from the next push gives the local value
    back. ``[device]`` (id and board) is the box's own and is refused.
    """
    if "device" in pushed:
        raise ConfigError(f"{source}: device: is each box's own section (its id and board) and cannot be "
                          "pushed; remove the [device] table")
    data = local.model_dump()
    for section, values in pushed.items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **values}
        else:
            data[section] = values  # not a known table: the schema names the mistake
    return load_model(Config, data, source=source)


def _resolve_board_path(data: dict, *, relative_to: Path) -> None:
    """A relative profile path means relative to the config file, not to the service's working folder."""
    device = data.get("device")
    if not isinstance(device, dict):
        return
    board = device.get("board")
    if isinstance(board, str) and is_profile_path(board) and not Path(board).is_absolute():
        device["board"] = str((relative_to / board).absolute())


def data_dir(cli_value: str | None, *, default_for_box: str = "/var/lib/linetap") -> Path:
    """Where spool, catalogue and keys live: ``--data-dir``, else ``$LINETAP_DATA_DIR``, else the default."""
    return Path(cli_value or os.environ.get("LINETAP_DATA_DIR") or default_for_box)
