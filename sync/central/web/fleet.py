"""The fleet page: every box's state from the tracker, and admins' signed commands and config pushes.

``GET /fleet`` shows what ``linetap-central serve``'s tracker keeps in the
index (:func:`~linetap.sync.central.fleet.fleet_views`): online or offline,
last seen, software and config version, backlog, synced-without-receipt and
active alarms. Admins send a command or push a config in two steps: the form
is checked (:mod:`~linetap.sync.central.web.fleetview`) and shown back for
confirmation; the confirmed post seals it with the operator key and publishes
it exactly as ``linetap-central fleet cmd`` and ``fleet config push`` do
(:func:`~linetap.sync.central.fleet.send_command`,
:func:`~linetap.sync.central.fleet.push_config`), waits for the boxes' signed
answers, and appends the attempt and its outcome to the access log.

The operator key. The web process reads ``keys/operator.key`` (0600 in a 0700
folder, refused when readable by others) only for a confirmed push, keeps it
no longer than the push, never logs it or sends it to a browser. Only the
admin role reaches these posts, behind the session and CSRF checks.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from linetap.firmware.errors import ConfigError, SyncError
from linetap.sync.central import fleet as fleettools
from linetap.sync.central.web.audit import audit
from linetap.sync.central.web.fleetview import (CommandRequest, ConfigRequest, command_choices, command_request,
                                               config_request, fleet_rows)
from linetap.sync.central.web.pages import page

logger = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 15.0  # as `fleet cmd`
CONFIG_TIMEOUT_S = 30.0  # as `fleet config push`
MAX_RESULT_CHARS = 64 * 1024  # a logs answer is at most 64 KiB


def routes() -> list[Route]:
    return [Route("/fleet", fleet_page, name="fleet"),
            Route("/fleet/command", command, methods=["POST"], name="fleet_command"),
            Route("/fleet/config", config, methods=["POST"], name="fleet_config")]


def _context(request: Request, **extra: Any) -> dict[str, Any]:
    settings = request.app.state.settings
    rows = fleet_rows(fleettools.fleet_views(settings.stored.index), round(settings.clock.wall() * 1000))
    user = request.state.user
    return {"rows": rows, "online": sum(r.state == "online" for r in rows),
            "alarmed": sum(bool(r.alarms) for r in rows), "tracked": any(r.state != "unknown" for r in rows),
            "may_push": user is not None and user["role"] == "admin", "commands": command_choices(), **extra}


def fleet_page(request: Request) -> Response:
    return page(request, "fleet.html", _context(request))


def _form(request: Request) -> Any:
    return request.state.form  # read, bounded and CSRF-checked by the app's guard


def command(request: Request) -> Response:
    form = _form(request)
    try:
        wanted = command_request(form)
    except ConfigError as e:
        return page(request, "fleet.html", _context(request, error=str(e)), status_code=400)
    if form.get("confirm") != "yes":
        hidden = [("device", wanted.device_id), ("command", wanted.name),
                  *((k, str(v)) for k, v in wanted.args.items())]
        return page(request, "confirm.html", {
            "heading": "Send a command", "action": "/fleet/command", "hidden": hidden, "confirm_value": "yes",
            "question": f"Send {wanted.describe()}, signed with this store's operator key?",
            "details": _command_effect(wanted.name), "button": "Send it", "cancel": "/fleet"})
    return _send_command(request, wanted)


def _command_effect(name: str) -> str:
    effects = {"restart": "The box's service restarts once it has answered: a call in progress is closed "
                          "and kept.",
               "purge-synced": "The box deletes the recordings it has synced and holds a receipt for.",
               "test-announcement": "The box plays its consent announcement on the line now."}
    return effects.get(name, "")


def _send_command(request: Request, wanted: CommandRequest) -> Response:
    settings = request.app.state.settings
    try:
        result = fleettools.send_command(_broker(settings), settings.data_dir, wanted.device_id, wanted.name,
                                         wanted.args, timeout=COMMAND_TIMEOUT_S, clock=settings.clock,
                                         index_config=settings.config.index)
    except (SyncError, ConfigError) as e:
        audit(request, "fleet-command", device_id=wanted.device_id, detail=f"{wanted.describe()}: failed: {str(e)[:300]}")
        return page(request, "fleet.html", _context(request, error=str(e)), status_code=502)
    why = f" ({result.code}: {result.reason})" if result.code else ""
    audit(request, "fleet-command", device_id=wanted.device_id,
          detail=f"{wanted.describe()} (seq {result.seq}): {result.status}{why}")
    shown = json.dumps(result.result, indent=2, sort_keys=True)[:MAX_RESULT_CHARS] if result.result else ""
    notice = (f"{wanted.describe()}: {result.status}{why}, answered in {result.seconds:.2f} s"
              + ("" if result.time_checked else " (the box's clock is not synchronised)"))
    return page(request, "fleet.html", _context(request, notice=notice, result=shown),
                status_code=200 if result.ok else 409)


def config(request: Request) -> Response:
    form = _form(request)
    text = str(form.get("config", ""))[:70_000]
    try:
        wanted = config_request(form, [str(d) for d in form.getlist("device")])
    except ConfigError as e:
        return page(request, "fleet.html", _context(request, error=str(e), config_text=text), status_code=400)
    if form.get("confirm") != "yes":
        hidden = [("config", wanted.text), *(("device", d) for d in wanted.devices or ())]
        if wanted.devices is None:
            hidden.append(("all", "1"))
        return page(request, "confirm.html", {
            "heading": "Push a config", "action": "/fleet/config", "hidden": hidden, "confirm_value": "yes",
            "question": f"Push this {wanted.describe()}, signed with this store's operator key? Each box takes "
                        "it as its next config version.",
            "details": wanted.text, "button": "Push it", "cancel": "/fleet"})
    return _push_config(request, wanted)


def _push_config(request: Request, wanted: ConfigRequest) -> Response:
    settings = request.app.state.settings
    result = fleettools.push_config(_broker(settings), settings.data_dir, wanted.devices, wanted.text,
                                    source="the console", timeout=CONFIG_TIMEOUT_S, clock=settings.clock,
                                    index_config=settings.config.index)
    for o in result.outcomes:
        audit(request, "fleet-config", device_id=o.device_id,
              detail=f"config version {o.version}: {o.outcome}" + (f" ({o.code}: {o.reason})" if o.code else ""))
    lines = [f"{o.device_id}: {o.outcome}" + (f", version {o.version}" if o.version is not None else "")
             + (f" ({o.code}: {o.reason})" if o.code else f", changed {', '.join(o.changed) or 'nothing'}")
             for o in result.outcomes]
    return page(request, "fleet.html", _context(request, notice="Config pushed.", result="\n".join(lines)),
                status_code=200 if result.ok else 409)


def _broker(settings: Any) -> Any:
    from linetap.sync.central.worker import broker_settings

    return broker_settings(settings.config.broker, settings.data_dir)
