"""The config the fleet pushed, as the box keeps it: ``<data>/config/pushed.toml`` and ``pushed.json``.

The fleet agent (:mod:`linetap.sync.fleet`) judges a push; the box's
service module (:mod:`linetap.sync.boxsync`) then keeps its text here, on
trial when it needs a restart. ``service.run`` lays it over the local file at
start (:meth:`PushedConfig.overlay`, which judges it again with the push
policy against the local file as it is then) and rolls it back if the
drivers fail with it (:meth:`PushedConfig.roll_back`); the rejection is
reported on the next connection. ``pushed.json`` is read through
:func:`linetap.firmware.untrusted.loads`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from linetap.firmware.config import Config
from linetap.firmware.durable import remove_durably, write_durably
from linetap.firmware.errors import ConfigError
from linetap.firmware.untrusted import Untrusted, loads
from linetap.sync import pushpolicy

logger = logging.getLogger(__name__)

CONFIG_DIR = "config"
PUSHED_TOML = "pushed.toml"
PUSHED_STATE = "pushed.json"
MAX_STATE_BYTES = 1024 * 1024  # fleet/state.json and config/pushed.json (which keeps two pushed documents)


class PushedConfig:
    """The config the fleet pushed, kept under ``<data>/config/``.

    ``pushed.toml`` is the document in effect (the operator's text; the box
    overlays it on the local file with :func:`overlay_config`);
    ``pushed.json`` holds its version and sha256, the document before it
    (for a rollback), whether it is still on trial (not yet started with
    since a restart was asked for) and a rejection the fleet agent has not
    been told of yet. ``pushed.json`` is written first: a ``pushed.toml``
    whose hash does not match it was cut short and is rolled back.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.folder = Path(data_dir) / CONFIG_DIR
        self.toml_path = self.folder / PUSHED_TOML
        self.state_path = self.folder / PUSHED_STATE
        self._overlay_failed = False

    def state(self) -> dict[str, Any] | None:
        try:
            state = loads(self.state_path.read_bytes(), what=str(self.state_path), max_bytes=MAX_STATE_BYTES,
                          max_depth=4)
        except FileNotFoundError:
            return None
        except Untrusted as e:
            raise ConfigError(f"{e}; delete it and {PUSHED_TOML} to run on the local config, then push the "
                              "config again") from None
        if not _pushed_state_ok(state):
            raise ConfigError(f"{self.state_path} is not {{version, sha256, trial, previous, rejected}} as this "
                              f"box writes it; delete it and {PUSHED_TOML} to run on the local config, then "
                              "push the config again")
        return state

    @property
    def version(self) -> int:
        state = self.state()
        return 0 if state is None else state["version"]

    @property
    def on_trial(self) -> bool:
        """True while a start-up failure should roll the pushed config back rather than stop the box."""
        state = self.state()
        return self._overlay_failed or (state is not None and state["trial"])

    def overlay(self, local: Config) -> Config:
        """The config to run: ``local``, with the pushed document over it if there is one."""
        state = self.state()
        if state is None or state["sha256"] is None:
            return local
        try:
            data = self.toml_path.read_bytes()
        except FileNotFoundError:
            data = b""
        if hashlib.sha256(data).hexdigest() != state["sha256"]:
            self._overlay_failed = True
            raise ConfigError(f"{self.toml_path} does not match the version {state['version']} recorded in "
                              f"{self.state_path}: writing it was cut short")
        try:
            return self._merge(local, data.decode("utf-8", errors="replace"), state["version"])
        except ConfigError:
            self._overlay_failed = True
            raise

    def _merge(self, local: Config, text: str, version: int) -> Config:
        """``text`` laid over ``local`` and judged by the push policy as at the push; ConfigError if not."""
        source = f"{self.toml_path} (version {version})"
        merged = pushpolicy.pushed_config(text, local, source=source)
        verdict = pushpolicy.judge(local, merged, pushpolicy.BoxFacts(data_dir=self.data_dir,
                                                                       resolve=os.path.realpath))
        if verdict.refusals:
            raise ConfigError(f"{source} is refused by this box's push policy against its own file: "
                              + "; ".join(verdict.refusals))
        logger.info("pushed config overlaid source=%s", self.toml_path)
        return merged

    def save(self, version: int, text: str, *, trial: bool) -> None:
        """Make ``text`` the pushed config, keeping the one before for a rollback."""
        before = self.state()
        previous = None if before is None else {"version": before["version"], "toml": self._text(before)}
        data = text.encode("utf-8")
        self._write({"previous": previous, "rejected": None, "sha256": hashlib.sha256(data).hexdigest(),
                     "trial": trial, "version": version})
        write_durably(self.toml_path, data)

    def confirm(self) -> None:
        """The drivers started with the pushed config: it is no longer on trial."""
        state = self.state()
        if state is not None and state["trial"]:
            self._write({**state, "trial": False})
            logger.info("pushed config confirmed version=%d", state["version"])

    def roll_back(self, local: Config, reason: str) -> Config:
        """Go back to the config before the pushed one, remember why, and return it."""
        state = self.state()
        failed = 0 if state is None else state["version"]
        previous = None if state is None else state["previous"]
        text = None if previous is None else previous["toml"]
        self._write({"previous": None, "rejected": {"reason": reason, "version": failed},
                     "sha256": None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest(),
                     "trial": False, "version": 0 if previous is None else previous["version"]})
        self._write_text(text)
        self._overlay_failed = False
        logger.error("pushed config rolled back version=%d back_to=%d reason=%s", failed,
                     self.version, reason)
        if text is None:
            return local
        try:
            return self._merge(local, text, self.version)
        except ConfigError as e:  # the one before fails too (the local file changed since): local alone
            self._write({"previous": None, "rejected": {"reason": reason, "version": failed}, "sha256": None,
                         "trial": False, "version": 0})
            self._write_text(None)
            logger.error("pushed config rolled back to the local file version=%d reason=%s", failed, e)
            return local

    def take_rejection(self) -> dict[str, Any] | None:
        """A rollback's ``{"version", "reason"}`` not yet reported; cleared once taken."""
        state = self.state()
        if state is None or state["rejected"] is None:
            return None
        self._write({**state, "rejected": None})
        return state["rejected"]

    def _text(self, state: dict[str, Any]) -> str | None:
        if state["sha256"] is None:
            return None
        return self.toml_path.read_text(encoding="utf-8")

    def _write(self, state: dict[str, Any]) -> None:
        write_durably(self.state_path, json.dumps(state, sort_keys=True, indent=1).encode("utf-8"))

    def _write_text(self, text: str | None) -> None:
        if text is None:
            remove_durably(self.toml_path)
        else:
            write_durably(self.toml_path, text.encode("utf-8"))


def _pushed_state_ok(state: Any) -> bool:
    """``pushed.json`` as :class:`PushedConfig` writes it."""
    if not isinstance(state, dict) or set(state) != {"previous", "rejected", "sha256", "trial", "version"}:
        return False
    previous, rejected = state["previous"], state["rejected"]
    return (isinstance(state["version"], int) and isinstance(state["trial"], bool)
            and (state["sha256"] is None or isinstance(state["sha256"], str))
            and (previous is None or isinstance(previous, dict) and set(previous) == {"toml", "version"}
                 and isinstance(previous["version"], int) and (previous["toml"] is None
                                                                or isinstance(previous["toml"], str)))
            and (rejected is None or isinstance(rejected, dict) and set(rejected) == {"reason", "version"}
                 and isinstance(rejected["reason"], str) and isinstance(rejected["version"], int)))
