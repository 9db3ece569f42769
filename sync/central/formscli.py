"""``linetap-central forms``: add an evaluation form (a TOML file) to the store, and list the forms.

A form is read and checked by :mod:`~linetap.sync.central.qa.forms`; every
mistake is named with its key and its fix, and nothing is stored until the
whole form is right. A form's ``version`` is kept with every evaluation
scored on it, so a stored version never changes: adding the same file again
does nothing, and a changed form needs the next version number.
:mod:`linetap.sync.central.cli` registers the command with
:func:`add_forms_commands`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from linetap.firmware.errors import ConfigError
from linetap.firmware.options import add_json
from linetap.firmware.schema import FileRefused, read_bounded

EPILOG = """\
A form in TOML:

  id = "inbound"            # lower-case letters, digits, - and _
  version = 1               # a changed form gets the next number
  title = "Inbound service call"
  pass_score = 80           # percent (default 80)

  [[sections]]
  title = "Opening"
  weight = 1                # optional, default 1

  [[sections.questions]]
  id = "greeting"
  text = "Greeted the caller with the company's name"
  kind = "yes_no"           # or "scale" with scale_max = 2..10
  weight = 2                # optional, default 1
  allow_na = false          # may it be answered "not applicable"
  critical = true           # a "no" fails the whole evaluation
"""


def add_forms_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Plugged into :func:`linetap.sync.central.cli.build_parser`."""
    forms = sub.add_parser("forms", parents=[common], help="evaluation forms for the QA console",
                           epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    forms_sub = forms.add_subparsers(dest="forms_command", metavar="ACTION", required=True)
    add = forms_sub.add_parser("add", parents=[common], help="check a form's TOML file and store it",
                               epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add.add_argument("file", type=Path, metavar="FILE")
    listing = forms_sub.add_parser("list", parents=[common], help="every stored form and version")
    for parser in (add, listing):
        parser.add_argument("--config", type=Path, metavar="FILE",
                            help="central config with [index] (default: DATA_DIR/central.toml)")
        add_json(parser)
    add.set_defaults(run=_add)
    listing.set_defaults(run=_list)


def _read(path: Path) -> bytes:
    from linetap.sync.central.qa.forms import MAX_FORM_BYTES

    try:
        return read_bounded(path, max_bytes=MAX_FORM_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; give the path of the form's TOML file") from None
    except FileRefused as e:
        raise ConfigError(f"{path}: {e}; give the path of the form's TOML file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror}); check its permissions") from None


def _add(args: argparse.Namespace) -> int:
    from linetap.firmware.clock import SystemClock
    from linetap.sync.central.accesslog import os_actor
    from linetap.sync.central.cli import data_dir, index_section
    from linetap.sync.central.indexes import open_index
    from linetap.sync.central.qa.forms import parse_form

    raw = _read(args.file)
    form = parse_form(raw, source=str(args.file))
    with open_index(index_section(args), data_dir(args)) as index:
        added = index.add_form(form.id, form.version, form.title, raw.decode("utf-8"), os_actor(),
                               round(SystemClock().wall() * 1000))
    questions = sum(len(s.questions) for s in form.sections)
    if args.json:
        print(json.dumps({"form": form.id, "version": form.version, "added": added, "questions": questions}))
    else:
        what = "added" if added else "already stored, unchanged"
        print(f"form {form.id} version {form.version} ({form.title!r}, {questions} questions): {what}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from linetap.sync.central.cli import data_dir, index_section, iso
    from linetap.sync.central.indexes import open_index

    with open_index(index_section(args), data_dir(args)) as index:
        rows = index.forms()
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print("no forms yet; add one with `linetap-central forms add FILE`")
    for row in rows:
        print(f"{row['form_id']}  v{row['version']}  {row['title']}  added {iso(row['added_ms'])} by {row['added_by']}")
    return 0
