"""``linetap-central web``, ``users`` and ``desks``: the QA console and who may use it.

``web`` serves :func:`~linetap.sync.central.web.app.make_app` with uvicorn on
the ``[web]`` section's address (loopback by default), HTTPS when it names a
certificate and key, and trusting forwarded headers only from the listed
proxies. It binds before it says where it listens, so ``--port 0`` takes a
free port and prints it. ``users`` and ``desks`` write the same index tables
the admin pages do (:mod:`~linetap.sync.central.web.accounts`).
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
from pathlib import Path
from typing import Any

from linetap.firmware.errors import ConfigError
from linetap.firmware.options import add_json
from linetap.firmware.schema import FileRefused, read_bounded


def add_console_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    from linetap.sync.central.web.access import ROLES

    web = sub.add_parser("web", parents=[common], help="serve the QA console (a web app) on this store")
    web.add_argument("--config", type=Path, metavar="FILE",
                     help="central config with [web], [index] and [store] (default: DATA_DIR/central.toml)")
    web.add_argument("--host", help="listen on this address ([web] host; default 127.0.0.1)")
    web.add_argument("--port", type=int, help="listen on this port ([web] port; default 8080; 0: a free one)")
    web.set_defaults(run=_web)

    users = sub.add_parser("users", parents=[common], help="console users: add, list, disable, enable, passwd")
    users_sub = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    add = users_sub.add_parser("add", parents=[common], help="add a user (password prompted, read or generated)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--team", help="the team of an agent, or the team a supervisor or reviewer looks after")
    _password_options(add)
    add.set_defaults(run=_users_add)
    listing = users_sub.add_parser("list", parents=[common], help="every user, role, team and state")
    add_json(listing)
    listing.set_defaults(run=_users_list)
    for action, text in (("disable", "refuse their logins and end their sessions"), ("enable", "allow again")):
        parser = users_sub.add_parser(action, parents=[common], help=text)
        parser.add_argument("name")
        parser.set_defaults(run=_users_disable)
    passwd = users_sub.add_parser("passwd", parents=[common], help="a new password; their sessions end")
    passwd.add_argument("name")
    _password_options(passwd)
    passwd.set_defaults(run=_users_passwd)

    desks = sub.add_parser("desks", parents=[common], help="which agent sits at which box, over time")
    desks_sub = desks.add_subparsers(dest="desks_command", metavar="ACTION", required=True)
    assign = desks_sub.add_parser("assign", parents=[common], help="from a time on, DEVICE is AGENT's desk")
    assign.add_argument("device")
    assign.add_argument("agent")
    assign.add_argument("--from", dest="from_iso", metavar="ISO", help="from this time (UTC if naive; default now)")
    assign.set_defaults(run=_desks_assign)
    desks_list = desks_sub.add_parser("list", parents=[common], help="every assignment with its span")
    add_json(desks_list)
    desks_list.set_defaults(run=_desks_list)


def _password_options(parser: argparse.ArgumentParser) -> None:
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--password-file", type=Path, metavar="FILE", help="read the password from FILE's first line")
    how.add_argument("--generate", action="store_true",
                     help="generate one and print it once (the default when not at a terminal)")


def _password(args: argparse.Namespace) -> str | None:
    """The password asked for; None: generate one."""
    if args.password_file is not None:
        try:
            text = read_bounded(args.password_file, max_bytes=4096).decode("utf-8")
        except (OSError, FileRefused, UnicodeDecodeError) as e:
            raise ConfigError(f"--password-file {args.password_file}: cannot read a password from it ({e})") from None
        return text.splitlines()[0] if text else ""
    if args.generate or not sys.stdin.isatty():
        return None
    first = getpass.getpass("password (empty: generate one): ")
    if not first:
        return None
    if getpass.getpass("again: ") != first:
        raise ConfigError("the two passwords differ; run the command again")
    return first


def _stored(args: argparse.Namespace):
    from linetap.sync.central.cli import _tools

    return _tools(args)


def _users_add(args: argparse.Namespace) -> int:
    from linetap.sync.central.web.accounts import add_user

    with _stored(args) as tools:
        generated = add_user(tools.index, args.name, args.role, args.team, _password(args), tools.now_ms())
    print(f"added {args.role} {args.name}" + (f" in team {args.team}" if args.team else ""))
    if generated:
        print(f"password (shown once): {generated}")
    return 0


def _users_list(args: argparse.Namespace) -> int:
    with _stored(args) as tools:
        rows = [{k: v for k, v in u.items() if k != "password_hash"} for u in tools.index.users()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for u in rows:
        state = "disabled" if u["disabled"] else "active"
        audio = " audio" if u["role"] == "auditor" and u["audio_granted"] else ""
        print(f"{u['name']:<24} {u['role']:<10} {u['team'] or '-':<16} {state}{audio}")
    if not rows:
        print("no console users; add one with `linetap-central users add NAME --role admin`")
    return 0


def _users_disable(args: argparse.Namespace) -> int:
    from linetap.sync.central.web.accounts import set_disabled

    with _stored(args) as tools:
        set_disabled(tools.index, args.name, args.users_command == "disable")
    print(f"{args.users_command}d {args.name}")
    return 0


def _users_passwd(args: argparse.Namespace) -> int:
    from linetap.sync.central.web.accounts import set_password

    with _stored(args) as tools:
        generated = set_password(tools.index, args.name, _password(args))
    print(f"new password set for {args.name}; their sessions ended")
    if generated:
        print(f"password (shown once): {generated}")
    return 0


def _desks_assign(args: argparse.Namespace) -> int:
    from linetap.sync.central.cli import _when
    from linetap.sync.central.web.accounts import assign_desk

    with _stored(args) as tools:
        from_ms = tools.now_ms() if args.from_iso is None else _when(args.from_iso)
        assign_desk(tools.index, args.device, args.agent, from_ms)
    print(f"{args.device} is {args.agent}'s desk from {_iso(from_ms)}")
    return 0


def _desks_list(args: argparse.Namespace) -> int:
    with _stored(args) as tools:
        rows = tools.index.desk_assignments()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for a in rows:
        until = _iso(a["until_ms"]) if a["until_ms"] is not None else "now"
        print(f"{a['device_id']:<24} {a['agent']:<24} {_iso(a['from_ms'])} .. {until}")
    if not rows:
        print("no desk assignments; `linetap-central desks assign DEVICE AGENT`")
    return 0


def _iso(ms: int) -> str:
    from linetap.sync.central.cli import iso

    return iso(ms)


def _web(args: argparse.Namespace) -> int:
    import uvicorn

    from linetap.sync.central.cli import data_dir
    from linetap.sync.central.config import load_config
    from linetap.sync.central.web.app import make_app
    from linetap.sync.central.web.settings import Settings

    folder = data_dir(args)
    config = load_config(args.config, folder)
    host = args.host or config.web.host
    port = config.web.port if args.port is None else args.port
    app = make_app(Settings(folder, config))
    tls = config.web.tls_files(folder)
    sock = _listen(host, port)
    uv = uvicorn.Config(app, ssl_certfile=str(tls[0]) if tls else None, ssl_keyfile=str(tls[1]) if tls else None,
                        proxy_headers=config.web.proxy_headers, forwarded_allow_ips=list(config.web.trusted_proxies),
                        access_log=False, server_header=False, log_level="info", timeout_graceful_shutdown=5)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"console listening on {'https' if tls else 'http'}://{shown}:{bound}/", flush=True)
    uvicorn.Server(uv).run(sockets=[sock])
    return 0


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"the console cannot listen on {host}:{port} ({e.strerror}); choose another --port "
                          "or [web] port, or stop what uses it") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
