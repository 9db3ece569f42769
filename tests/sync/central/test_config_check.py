"""``linetap-central config check``: every mistake named with its fix; ``--connect`` on the real PostgreSQL,
SeaweedFS and TSA of the run, never printing a credential."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from local_tsa import LocalTsa, closed_url
from s3 import store_toml

from linetap.sync.central.cli import main
from linetap.sync.central.keys import keys_init
from linetap.sync.central.locals3 import LocalSeaweed


def check(folder: Path, capsys, *options: str) -> tuple[int, str]:
    code = main(["--data-dir", str(folder), "config", "check", *options])
    out = capsys.readouterr()
    return code, out.out + out.err


def findings(folder: Path, capsys, *options: str) -> tuple[int, dict]:
    code, out = check(folder, capsys, "--json", *options)
    return code, json.loads(out)


def with_password(url: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1) if "@" in rest else ("postgres", rest)
    return f"{scheme}://{user.split(':')[0]}:{password}@{host}"


def test_a_store_without_keys_is_told_to_make_them_then_the_defaults_pass(tmp_path: Path, capsys) -> None:
    code, out = check(tmp_path, capsys)
    assert code == 1 and out.count("linetap-central keys init") == 3 and "3 problems" in out
    keys_init(tmp_path)
    code, out = check(tmp_path, capsys, "--connect")
    assert code == 0, out
    assert out.strip().endswith("OK (nothing to reach: reached)")
    assert not (tmp_path / "index.db").exists()  # checking made no index


def test_a_schema_mistake_is_named_with_its_path(tmp_path: Path, capsys) -> None:
    keys_init(tmp_path)
    (tmp_path / "central.toml").write_text('[store]\nurl = "s3://Bad_Bucket"\n[retention]\ndefault_dayz = 3\n')
    code, out = check(tmp_path, capsys)
    assert code == 1
    assert "store.url" in out and "s3://bucket/prefix" in out
    assert "default_dayz" in out


def test_files_the_config_names_are_looked_at_without_connecting(tmp_path: Path, capsys) -> None:
    keys_init(tmp_path)
    (tmp_path / "keys" / "s3.credentials").write_text("[default]\naws_access_key_id = a\naws_secret_access_key = b\n")
    os.chmod(tmp_path / "keys" / "s3.credentials", 0o644)
    (tmp_path / "central.toml").write_text(
        '[broker]\ntls = true\nca_file = "tls/ca.pem"\ncert_file = "tls/c.pem"\nkey_file = "tls/c.key"\n'
        '[index]\nurl = "postgresql://linetap@db.example/linetap"\npassword_file = "keys/pg.password"\n'
        '[store]\nurl = "s3://recordings"\ncredentials_file = "keys/s3.credentials"\nobject_lock = "governance"\n'
        '[retention]\ndefault_days = 30\n')
    code, report = findings(tmp_path, capsys)
    assert code == 1 and not report["ok"]
    messages = {(f["severity"], f["section"]): f["message"] for f in report["findings"]}
    assert "broker-init" in messages["problem", "broker"]
    assert "password_file" in messages["problem", "index"] and "does not exist" in messages["problem", "index"]
    assert "chmod 600" in messages["problem", "store"]
    assert "flagged_days = 0" in messages["warning", "store"]


def test_connect_reaches_postgres_the_bucket_and_the_tsa_without_printing_a_secret(
        tmp_path: Path, capsys, pg_url: str, seaweed: LocalSeaweed, s3_bucket: str, local_tsa: LocalTsa,
        tsa_files: Path) -> None:
    keys_init(tmp_path)
    (tmp_path / "tsa").mkdir()
    for name in ("ca.pem", "tsa.pem"):
        shutil.copy(tsa_files / name, tmp_path / "tsa" / name)
    config = tmp_path / "site.toml"
    config.write_text(f'[index]\nurl = "{with_password(pg_url, "hunter2-pg")}"\n'
                      + store_toml(seaweed, s3_bucket, tmp_path, "compliance")
                      + f'[retention]\ndefault_days = 30\nflagged_days = 90\n[timestamps]\ntsa_url = "{local_tsa.url}"\n'
                        'ca_file = "tsa/ca.pem"\ntsa_cert_file = "tsa/tsa.pem"\n')
    assert main(["--data-dir", str(tmp_path), "migrate", "--config", str(config)]) == 0
    code, out = check(tmp_path, capsys, "--config", str(config), "--connect")
    assert code == 0, out
    assert "PostgreSQL index, S3 bucket, TSA: reached" in out and "1 warnings" in out  # the password in the URL
    assert "hunter2-pg" not in out and seaweed.secret_key not in out


def test_connect_names_what_failed(tmp_path: Path, capsys, pg_url: str, seaweed: LocalSeaweed) -> None:
    keys_init(tmp_path)
    plain = seaweed.create_bucket("config-check-nolock", object_lock=False)
    config = tmp_path / "site.toml"
    config.write_text(f'[index]\nurl = "{pg_url}"\n' + store_toml(seaweed, plain, tmp_path, "compliance")
                      + f'[retention]\ndefault_days = 30\nflagged_days = 30\n[timestamps]\ntsa_url = "{closed_url()}"\n'
                        'ca_file = "tsa/ca.pem"\ntsa_cert_file = "tsa/tsa.pem"\n')
    code, report = findings(tmp_path, capsys, "--config", str(config), "--connect")
    assert code == 1
    messages = {f["section"]: f["message"] for f in report["findings"] if f["severity"] == "problem"}
    assert "linetap-central migrate" in messages["index"]  # an empty database: not at this schema
    assert "object lock" in messages["store"] and "new bucket" in messages["store"]
    assert "tsa/ca.pem" in messages["timestamps"]  # the certificates are missing: caught before asking
    (tmp_path / "keys" / "s3.credentials").unlink()
    (tmp_path / "keys" / "s3.credentials").write_text(
        f"[default]\naws_access_key_id = {seaweed.access_key}\naws_secret_access_key = not-the-secret\n")
    os.chmod(tmp_path / "keys" / "s3.credentials", 0o600)
    code, out = check(tmp_path, capsys, "--config", str(config), "--connect")
    assert code == 1 and "check the credentials" in out and "not-the-secret" not in out


@pytest.mark.parametrize("text", ["[ingest]\nstale_staging_days = 0\n", "[broker]\nport = 70000\n"])
def test_out_of_range_values_are_refused(tmp_path: Path, capsys, text: str) -> None:
    keys_init(tmp_path)
    (tmp_path / "central.toml").write_text(text)
    code, out = check(tmp_path, capsys)
    assert code == 1 and ("stale_staging_days" in out or "broker.port" in out)
