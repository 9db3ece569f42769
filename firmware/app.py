"""The box, wired: drivers from the board profile, the call loop, and what the CLI runs.

Threads (service mode, :func:`run`):

- ``linetap-audio-reader`` reads blocks from the codec and posts them to the
  call loop's queue;
- the drivers' own threads (gpiozero, hook debounce, modem reader) post
  events to the same queue and return at once;
- the calling thread runs :meth:`CallLoop.run`: it alone touches the call
  flow, the recorder and the sink, so the core needs no locks. An event is
  handled as soon as it arrives, not at the next audio block, which is what
  keeps the hook-off-to-announcement latency small.

Replay and the demo drive the same loop synchronously (:meth:`CallLoop.process`)
on the simulated board, with a :class:`ManualClock` so a call runs as fast as
the machine allows.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections.abc import Callable
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from linetap.drivers.audio import Block, Codec, SampleSource, SimCodec, SoundDeviceCodec
from linetap.drivers.events import ButtonPressed, CallerId, HookChanged, LineState, Ring
from linetap.drivers.gpio import Panel, sim_pin_factory
from linetap.drivers.line import SimModem, V253Line
from linetap.firmware import callflow as cf
from linetap.firmware.board import BoardProfile
from linetap.firmware.clock import Clock, ManualClock, SystemClock
from linetap.firmware.config import Config
from linetap.firmware.consent import Prompt, decode_mono, load_prompt
from linetap.firmware.dsp import CallActivity, VadSettings, warning_tone
from linetap.firmware.errors import ConfigError, DeviceError, LinetapError
from linetap.firmware.keys import INIT_HINT, KeyMissing
from linetap.firmware.recorder import Recorder, Recording, Sink
from linetap.firmware.spool import CodecParams, Spool, SpoolSettings, SpoolSink

if TYPE_CHECKING:
    from linetap.firmware.service import Notifier
    from linetap.sync.agent import AppHooks, BoxSync

logger = logging.getLogger(__name__)

# Events the call flow takes; anything else a driver reports is telemetry.
_FLOW_EVENTS = (Ring, CallerId, HookChanged, ButtonPressed)
_HOOK_SOURCE = {"hook-gpio": "gpio", "v253": "modem", "vad": "vad"}
# Blocks waiting in the loop's queue beyond which the loop is not keeping up (200 ms at 20 ms blocks).
MAX_BACKLOG_BLOCKS = 10


# ------------------------------------------------------------------ board --

@dataclass
class Board:
    """The drivers a board profile names, built and owned together."""

    profile: BoardProfile
    codec: Codec
    panel: Panel | None = None  # None only while the board is being built
    line: V253Line | None = None
    pin_factory: Any = None  # gpiozero's MockFactory on the simulated board
    modem: SimModem | None = None  # the simulated modem on the simulated board

    def close(self) -> None:
        for part in (self.line, self.modem, self.panel, self.codec):
            if part is not None:
                part.close()
        if self.pin_factory is not None:
            self.pin_factory.close()


def build_board(config: Config, clock: Clock, on_event: Callable[[object], None], *,
                near: np.ndarray | SampleSource | None = None, far: np.ndarray | SampleSource | None = None,
                keep_played: bool = True) -> Board:
    """Build the codec, panel and line interface of ``config``'s board.

    ``near``/``far`` feed a simulated codec (arrays, or sources streamed as
    the call runs); ``keep_played=False`` spares it keeping the line signal.
    A real board ignores them. A device the profile names but the machine
    lacks is an error, never a switch to the simulation.
    """
    profile = config.board_profile()
    audio, gpio = profile.audio, profile.gpio
    if audio.driver == "sim":
        silence = np.zeros(config.audio.block_frames, np.int16)
        codec: Codec = SimCodec(near if near is not None else silence,
                                far if far is not None else silence, rate=config.audio.rate,
                                block_frames=config.audio.block_frames, clock=clock,
                                queue_blocks=config.audio.queue_blocks, keep_played=keep_played)
    else:
        codec = sound_device_codec(config)
    board = Board(profile=profile, codec=codec)
    try:
        board.pin_factory = board_pin_factory(config)
        board.panel = make_panel(config, board.pin_factory, on_event)
        if profile.line.driver == "sim":
            board.modem = SimModem()
            board.line = V253Line(board.modem.path, clock=clock, on_event=on_event)
        elif profile.line.driver == "v253":
            assert profile.line.port is not None
            board.line = V253Line(profile.line.port, clock=clock, on_event=on_event,
                                  baudrate=profile.line.baudrate)
    except BaseException:
        board.close()
        raise
    logger.info("board ready name=%s audio=%s gpio=%s line=%s call_detect=%s", profile.name,
                audio.driver, gpio.pin_factory, profile.line.driver, profile.call_detect.source)
    return board


def sound_device_codec(config: Config) -> SoundDeviceCodec:
    """The real codec the board profile names, opened by name."""
    audio = config.board_profile().audio
    assert audio.device is not None  # the profile schema requires it for sounddevice
    return SoundDeviceCodec(audio.device, rate=config.audio.rate, block_frames=config.audio.block_frames,
                            channels=audio.channels, near=audio.near, far=audio.far,
                            out_channels=audio.out_channels, line_out=tuple(audio.line_out),
                            queue_blocks=config.audio.queue_blocks, native_rate=audio.native_rate)


def board_pin_factory(config: Config) -> Any:
    """gpiozero's MockFactory on the simulated board (handset on its cradle); None on a real board.

    On a real board gpiozero loads the factory the profile names itself.
    """
    gpio = config.board_profile().gpio
    if gpio.pin_factory != "mock":
        # gpiozero's own way of naming the factory; Panel raises if it cannot load it.
        os.environ.setdefault("GPIOZERO_PIN_FACTORY", gpio.pin_factory)
        return None
    factory = sim_pin_factory()
    if gpio.hook is not None:
        # The simulated handset starts on its cradle (a floating mock pin reads low).
        on_hook = factory.pin(gpio.hook)
        (on_hook.drive_low if gpio.hook_active == "high" else on_hook.drive_high)()
    return factory


def make_panel(config: Config, pin_factory: Any, on_event: Callable[[object], None] | None) -> Panel:
    """The front panel on the profile's pins."""
    gpio = config.board_profile().gpio
    return Panel(rec_led=gpio.rec_led,
                 status_led=(gpio.status_led.red, gpio.status_led.green, gpio.status_led.blue),
                 pause_button=gpio.pause_button, flag_button=gpio.flag_button,
                 hook=gpio.hook, hook_active_high=gpio.hook_active == "high",
                 hook_debounce=gpio.hook_debounce_ms / 1000,
                 long_press=config.controls.long_press_s,
                 pin_factory=pin_factory, on_event=on_event)


# ------------------------------------------------------------------ spool --

def open_spool(config: Config, data_dir: Path, clock: Clock,
               on_alarm: Callable[[str, str], None] | None = None) -> SpoolSink:
    """The spool under ``data_dir`` (recovery runs now) and the sink the recorder writes to.

    Raises KeyMissing when the box has no central recipient or signing key:
    it must not record what it cannot encrypt and sign.
    """
    settings = SpoolSettings(segment_s=config.spool.segment_s,
                             keep_synced_days=config.spool.keep_synced_days,
                             max_bytes=config.spool.max_bytes or None,
                             min_free_bytes=config.spool.min_free_mb * 1024 * 1024,
                             on_full=config.spool.on_full)
    spool = Spool(data_dir, device_id=config.device.id, clock=clock, settings=settings,
                  on_alarm=on_alarm)
    for finding in spool.recovery.findings:
        logger.warning("spool recovery %s", " ".join(f"{k}={v}" for k, v in finding.as_dict().items()))
    codec = CodecParams(rate=config.audio.rate, bitrate=config.spool.bitrate,
                        segment_s=config.spool.segment_s)
    return SpoolSink(spool, codec)


class _NoSink:
    """Stands in for the spool when the box may not record (no key): keeps nothing."""

    def open(self, call: cf.CallRecord) -> None:
        pass

    def write(self, frames: np.ndarray) -> None:
        pass

    def discard(self) -> None:
        pass

    def close(self, recording: Recording) -> None:
        pass


# ------------------------------------------------------------- call loop --

@dataclass(frozen=True)
class Identify:
    """A fleet request: show the identify pattern for ``seconds``, then what the call flow shows."""

    seconds: float


@dataclass(frozen=True)
class TestAnnouncement:
    """A fleet request: play the prompt into the idle line, recording nothing."""


@dataclass(frozen=True)
class Happening:
    """One thing the box did or saw, for the demo's narration and the log."""

    t: float  # stream seconds
    device: str
    what: str


def policy_from(config: Config, prompt: Prompt | None,
                consent_note: dict[str, Any] | None = None) -> cf.CallPolicy:
    """The call flow's policy; ``consent_note`` names consent keys a fleet push changed (noted per call)."""
    consent, calls = config.consent, config.calls
    return cf.CallPolicy(
        announce=consent.announce, announce_when=consent.announce_when,
        far_speech_wait_s=consent.far_speech_wait_s,
        prompt_sha256=prompt.sha256 if prompt else "", language=consent.language,
        warning_tone=consent.warning_tone, warning_interval_s=consent.warning_interval_s,
        opt_out_key=consent.opt_out_key or None, opt_out_window_s=consent.opt_out_window_s,
        ring_timeout_s=calls.ring_timeout_s, hangup_grace_s=calls.hangup_grace_s,
        caller_id_max_age_s=calls.caller_id_max_age_s,
        fleet_consent=tuple(consent_note["changed"]) if consent_note else (),
        config_version=consent_note["config_version"] if consent_note else 0)


def load_prompts(config: Config) -> dict[str, Prompt]:
    """Every configured prompt, converted and checked now, so a bad one stops the box at start-up."""
    if not config.consent.announce:
        return {}
    return {language: load_prompt(language, location, rate=config.audio.rate,
                                  max_seconds=config.consent.max_prompt_s,
                                  level_dbfs=config.consent.prompt_level_dbfs)
            for language, location in config.consent.prompts.items()}


def vad_settings(config: Config) -> VadSettings:
    calls = config.calls
    return VadSettings(threshold_db=calls.vad_threshold_db, min_level_dbfs=calls.vad_min_level_dbfs,
                       hangover_s=calls.vad_hangover_s)


class CallLoop:
    """The call flow, the recorder and the devices, driven by one thread.

    ``inbox`` is the queue the board's drivers were given to post into
    (``build_board(config, clock, inbox.put)``); :meth:`post` is thread-safe;
    everything else runs on the thread that calls :meth:`process` / :meth:`run`.
    """

    def __init__(self, config: Config, board: Board, sink: Sink | None, clock: Clock, *,
                 inbox: queue.SimpleQueue[object] | None = None,
                 prompts: dict[str, Prompt] | None = None,
                 on_happening: Callable[[Happening], None] | None = None,
                 on_recording: Callable[[Recording], None] | None = None,
                 heartbeat: Callable[[], None] | None = None,
                 consent_note: dict[str, Any] | None = None) -> None:
        self._config = config
        self._heartbeat = heartbeat
        self._board = board
        assert board.panel is not None, "build the board with build_board()"
        self._codec = board.codec
        self._panel = board.panel
        self._clock = clock
        self.prompts = load_prompts(config) if prompts is None else prompts
        prompt = self.prompts.get(config.consent.language)
        self.flow = cf.CallFlow(policy_from(config, prompt, consent_note), clock)
        vad = vad_settings(config)
        activity = None
        if board.profile.call_detect.source == "vad":
            activity = CallActivity(config.audio.rate, start_window_s=config.calls.start_window_s,
                                    end_silence_s=config.calls.end_silence_s, vad=vad)
        self.recorder = Recorder(config.audio.rate, _Notify(sink or _NoSink(), self), vad=vad,
                                 call_activity=activity, hold_min_s=config.calls.hold_min_s)
        self._tone = warning_tone(config.audio.rate, config.consent.warning_level_dbfs)
        self._hook_source = _HOOK_SOURCE[board.profile.call_detect.source]
        # The drivers were built before the loop, posting into this same queue.
        self._queue: queue.SimpleQueue[object] = inbox if inbox is not None else queue.SimpleQueue()
        self._prompt_playing = False
        self._stream_t = 0.0
        self._on_happening = on_happening
        self._on_recording = on_recording
        self.line_state: str | None = None
        self._status_pattern = "idle"
        # Set by the app once the fleet connection exists: alarm(name, active, detail), any thread.
        self.on_alarm: Callable[[str, bool, str], None] | None = None
        self._identify_until: float | None = None
        self._panel.show_status("idle")
        if sink is None:
            self.handle(cf.Fault(f"no central recipient or device key: {INIT_HINT}"))

    # -- input --

    def post(self, item: object) -> None:
        """Hand a driver event or an audio block to the loop (any thread)."""
        self._queue.put(item)

    def drain(self) -> None:
        """Process everything posted so far, without waiting."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            self.process(item)

    def run(self, stop: threading.Event) -> None:
        """Process posted items until ``stop`` is set or the audio ends (a None is posted)."""
        while not stop.is_set():
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is None:
                return
            self.process(item)

    def process(self, item: object) -> None:
        if isinstance(item, Block):
            self._on_block(item)
        elif isinstance(item, LineState):
            self.line_state = item.state
            self._tell("line", f"modem {item.state}" + (f" ({item.detail})" if item.detail else ""))
            if item.state in ("lost", "ready"):
                self._alarm("modem-lost", item.state == "lost", item.detail)
        elif isinstance(item, HookChanged) and item.source != self._hook_source:
            logger.debug("hook event from %s ignored (this board detects calls by %s)",
                         item.source, self._hook_source)
        elif isinstance(item, _FLOW_EVENTS):
            self._tell(*_describe_input(item))
            self.handle(item)
        elif isinstance(item, Identify):
            self._identify_until = self._clock.monotonic() + item.seconds
            self._panel.show_status("identify")
            self._tell("led", f"status LED: identify for {item.seconds:g} s")
        elif isinstance(item, TestAnnouncement):
            self._test_announcement()
        else:
            logger.debug("driver event not used by the call flow: %s", type(item).__name__)

    def _on_block(self, block: Block) -> None:
        self._stream_t = block.t
        for event in self.recorder.feed(block.frames):
            if isinstance(event, HookChanged):
                self._tell("vad", f"voice activity: call {'started' if event.off_hook else 'ended'}")
            self.handle(event)
        if self._prompt_playing and self._codec.play_pending() == 0:
            self._prompt_playing = False
            self.handle(cf.PromptFinished())
        self.handle(cf.Tick())
        if self._identify_until is not None and self._clock.monotonic() >= self._identify_until:
            self._identify_until = None
            self._panel.show_status(self._status_pattern)
        # Only a loop that processes audio and keeps up says it is alive (the service watchdog).
        if self._heartbeat is not None and self._queue.qsize() <= MAX_BACKLOG_BLOCKS:
            self._heartbeat()

    def handle(self, event: cf.Event) -> None:
        for action in self.flow.handle(event):
            self._execute(action)

    def finish(self) -> None:
        """End of the audio stream: hang up any call and let the recorder catch up."""
        if self.flow.call is not None:
            self.handle(HookChanged(off_hook=False, source=self._hook_source))  # type: ignore[arg-type]
            self._clock.sleep(self.flow.policy.hangup_grace_s)
            self.handle(cf.Tick())
        self.recorder.flush()

    # -- output: the only place the call flow's actions touch devices --

    def _execute(self, action: cf.Action) -> None:
        match action:
            case cf.OpenCall(call=call):
                self.recorder.open(call)
                self._tell("call", f"call {call.call_id} opened"
                           + (" (caller ID known)" if call.caller else ""))
            case cf.Keep(on=on):
                # The REC LED and the keeping of audio change in the same step.
                self.recorder.keep(on)
                self._panel.set_recording(on)
                self._tell("rec", "REC LED on: keeping audio" if on else "REC LED off: audio no longer kept")
            case cf.Pause(on=on):
                self.recorder.pause(on)
                self._panel.set_recording("paused" if on else True)
                self._tell("rec", "paused: silence is stored, REC LED blinks" if on else "resumed")
            case cf.PlayPrompt(language=language):
                prompt = self.prompts[language]
                self._codec.play(prompt.samples)
                self._prompt_playing = True
                self._tell("codec", f"announcement ({language}, {prompt.seconds:.1f} s) into the line")
            case cf.StopPrompt():
                self._codec.stop_playing()
                self._prompt_playing = False
                self._tell("codec", "announcement stopped")
            case cf.PlayWarningTone():
                self._codec.play(self._tone)
                self._tell("codec", "warning tone 1400 Hz into the line")
            case cf.Discard():
                self.recorder.discard()
                self._tell("rec", "audio kept so far destroyed")
            case cf.Indicate(pattern=pattern):
                # The call flow shows "fault" exactly when a call should be kept and cannot be.
                if (pattern == "fault") != (self._status_pattern == "fault"):
                    self._alarm("not-recording", pattern == "fault", self.flow.fault or "")
                self._status_pattern = pattern
                self._panel.show_status(pattern)
                self._tell("led", f"status LED: {pattern}")
            case cf.CloseCall(call=call):
                self.recorder.close(call)
                self._tell("call", f"call {call.call_id} closed ({call.ended_by})")
            case _:
                raise AssertionError(f"unhandled action {action!r}")

    def _test_announcement(self) -> None:
        prompt = self.prompts.get(self._config.consent.language)
        if self.flow.call is not None or prompt is None:
            logger.warning("test announcement skipped reason=%s",
                           "call in progress" if prompt is not None else "no prompt configured")
            return
        self._codec.play(prompt.samples)
        self._tell("codec", f"test announcement ({prompt.seconds:.1f} s) into the line, not recorded")

    def _alarm(self, name: str, active: bool, detail: str) -> None:
        logger.log(logging.WARNING if active else logging.INFO, "alarm %s name=%s detail=%s",
                   "raised" if active else "cleared", name, detail)
        if self.on_alarm is not None:
            self.on_alarm(name, active, detail)

    def _tell(self, device: str, what: str) -> None:
        happening = Happening(round(self._stream_t, 3), device, what)
        logger.info("t=%.3f device=%s %s", happening.t, device, what)
        if self._on_happening is not None:
            self._on_happening(happening)

    def _recorded(self, recording: Recording) -> None:
        if self._on_recording is not None:
            self._on_recording(recording)


class _Notify:
    """A sink wrapper that also tells the loop when a recording is complete."""

    def __init__(self, sink: Sink, loop: CallLoop) -> None:
        self._sink, self._loop = sink, loop

    def open(self, call: cf.CallRecord) -> None:
        self._sink.open(call)

    def write(self, frames: np.ndarray) -> None:
        self._sink.write(frames)

    def discard(self) -> None:
        self._sink.discard()

    def close(self, recording: Recording) -> None:
        self._sink.close(recording)
        self._loop._recorded(recording)


def _describe_input(event: object) -> tuple[str, str]:
    match event:
        case Ring():
            return "line", "RING"
        case CallerId():
            return "line", "caller ID received"
        case HookChanged(off_hook=off_hook, source=source):
            return source, "handset off hook" if off_hook else "handset on hook"
        case ButtonPressed(button=button, long=long):
            return "button", f"{button.upper()} {'long' if long else 'short'} press"
    return "?", type(event).__name__


# ---------------------------------------------------------------- commands --

def run(config: Config, data_dir: Path) -> int:
    """The service: run calls until stopped (SIGTERM, a fleet restart) or the audio device is lost.

    A config the fleet pushed (``<data>/config/pushed.toml``) is laid over
    ``config``; if the drivers do not start with a pushed config still on
    trial, the config before it is brought back and the box reports the
    pushed version rejected (see :mod:`linetap.sync.agent`).
    """
    import signal

    from linetap.firmware.service import Notifier
    from linetap.sync.agent import PushedConfig, set_log_level
    from linetap.sync.pushpolicy import consent_note

    clock = SystemClock()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    notifier = Notifier(clock)
    inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
    pushed = PushedConfig(data_dir)
    local = config
    try:
        config = pushed.overlay(local)
        prompts = load_prompts(config)  # a bad prompt stops the box now, not at the first call
        board = build_board(config, clock, inbox.put)
    except LinetapError as exc:
        if not pushed.on_trial:
            raise
        config = pushed.roll_back(local, f"{type(exc).__name__}: {exc}")
        prompts = load_prompts(config)
        board = build_board(config, clock, inbox.put)
    pushed.confirm()
    set_log_level(config.log.level)
    sink: SpoolSink | None = None
    sync: BoxSync | None = None
    try:
        try:
            sink = open_spool(config, data_dir, clock)
        except KeyMissing as exc:
            # Keep running: the box still detects calls and shows the fault pattern,
            # so an installer sees that it cannot record.
            logger.error("not recording: %s", exc)
        loop = CallLoop(config, board, sink, clock, inbox=inbox, prompts=prompts,
                        heartbeat=notifier.pipeline_alive,
                        consent_note=consent_note(local, config, pushed.version),
                        on_recording=lambda _recording: sync.notify() if sync is not None else None)
        if sink is not None:
            sync = start_sync(config, sink.spool, data_dir, clock,
                              hooks=fleet_hooks(loop, board, stop, notifier), local_config=local)
            if sync is not None:
                loop.on_alarm = sync.alarm
        reader = _AudioReader(board.codec, loop.post, stop)
        board.codec.start()
        reader.start()
        notifier.ready()
        try:
            loop.run(stop)
        finally:
            notifier.stopping()
            stop.set()
            reader.join()
        loop.finish()
        if reader.error is not None:
            raise reader.error
    finally:
        board.close()
        notifier.close()
        if sync is not None:
            sync.close()
        if sink is not None:
            sink.spool.close()
    return 0


def fleet_hooks(loop: CallLoop, board: Board, stop: threading.Event, notifier: Notifier) -> AppHooks:
    """What the fleet's commands do on this box: requests to the call loop, or the stop event."""
    from linetap.sync.agent import AppHooks, AudioFigures

    def test_announcement() -> None:
        if loop.flow.call is not None:
            raise DeviceError("test-announcement: a call is in progress; try again when the line is idle")
        if loop.prompts.get(loop.flow.policy.language) is None:
            raise ConfigError("test-announcement: no announcement is configured (consent.announce is off)")
        loop.post(TestAnnouncement())

    def restart(reason: str) -> None:
        logger.warning("restart requested reason=%s", reason)
        notifier.status(f"restart requested: {reason}")
        stop.set()  # the service exits; systemd's Restart=always starts it again

    def audio() -> AudioFigures:
        stats = board.codec.stats()
        assert board.panel is not None
        return AudioFigures(recording=board.panel.rec_led_lit, near_dbfs=None, far_dbfs=None,
                            overruns=stats.overruns + stats.dropped_blocks)

    def check_config(new: Config) -> None:
        new.board_profile()
        load_prompts(new)

    return AppHooks(identify=lambda seconds: loop.post(Identify(seconds)), test_announcement=test_announcement,
                    restart=restart, audio=audio, check_config=check_config)


def start_sync(config: Config, spool: Spool, data_dir: Path, clock: Clock, *,
               hooks: AppHooks | None = None, local_config: Config | None = None) -> BoxSync | None:
    """Upload and take fleet orders over the broker in ``sync.broker``; None when it is empty.

    ``hooks`` are :class:`linetap.sync.agent.AppHooks` (see :func:`fleet_hooks`).
    """
    if not config.sync.broker:
        logger.warning("sync.broker is not set: recordings stay on the box until it is")
        return None
    from linetap.sync.agent import BoxSync

    return BoxSync(config, spool, data_dir, clock=clock, hooks=hooks, local_config=local_config).start()


class _AudioReader(threading.Thread):
    """Moves blocks from the codec to the call loop; posts None when the audio ends."""

    def __init__(self, codec: Codec, post: Callable[[object], None], stop: threading.Event) -> None:
        super().__init__(name="linetap-audio-reader", daemon=True)
        self._codec, self._post, self._stopping = codec, post, stop
        self.error: LinetapError | None = None

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                block = self._codec.read(timeout=2.0)
                self._post(block)
                if block is None:
                    return
        except DeviceError as exc:
            self.error = exc
            self._post(None)

    def join(self, timeout: float | None = 5.0) -> None:
        super().join(timeout)
        if self.is_alive():
            raise DeviceError("the audio reader did not stop within 5 s; the codec is stalled")


def list_devices(*, as_json: bool) -> int:
    """Print the audio devices and serial ports this machine has (for writing a board profile)."""
    import serial.tools.list_ports

    from linetap.drivers.audio import list_devices

    try:
        audio = [dataclasses.asdict(d) for d in list_devices()]
    except DeviceError as exc:
        audio = [{"error": str(exc)}]
    ports = [{"device": p.device, "description": p.description} for p in serial.tools.list_ports.comports()]
    if as_json:
        print(json.dumps({"audio": audio, "serial": ports}, indent=2))
        return 0
    print("audio devices:")
    for d in audio:
        print(f"  {d}" if "error" in d else
              f"  {d['index']:>2}: {d['name']} (in {d['inputs']}, out {d['outputs']}, "
              f"{d['default_rate']:.0f} Hz)")
    print("serial ports:" + ("" if ports else " none"))
    for p in ports:
        print(f"  {p['device']}: {p['description']}")
    return 0


def read_speech(path: Path, rate: int) -> np.ndarray:
    """A WAV or Ogg file as mono int16 at ``rate`` (mixed down and resampled as needed)."""
    if not Path(path).is_file():
        raise ConfigError(f"audio file {path} does not exist (or is not a file)")
    mono = decode_mono(Path(path).read_bytes(), rate, label=f"audio file {path}")
    return (np.clip(mono, -1, 1) * 32767).astype(np.int16)


def demo(config: Config, data_dir: Path, *, realtime: bool = False) -> int:
    from linetap.firmware.demo import run_demo

    return run_demo(config, data_dir, realtime=realtime)


def replay(config: Config, data_dir: Path, near: Path, far: Path, *, as_json: bool,
           realtime: bool) -> int:
    from linetap.firmware.demo import run_replay

    return run_replay(config, data_dir, near, far, as_json=as_json, realtime=realtime)
