"""The config file and the schema machinery every config-like file goes through."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pydantic
import pytest
from pydantic import SecretStr

from linetap.firmware import config as config_module
from linetap.firmware.config import DEVICE_ID, Config, DeviceSection, data_dir, load_config
from linetap.firmware.errors import ConfigError
from linetap.firmware.schema import MASK, Schema, load_model

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "linetap.example.toml"


def write(tmp_path: Path, text: str, name: str = "linetap.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return str(caught.value)


# ---------------------------------------------------------------- defaults --

def test_no_file_means_defaults_on_the_simulated_board() -> None:
    config = load_config(None)
    assert config == Config()
    assert config.audio.rate == 16000 and config.audio.block_frames == 320
    assert config.board_profile().name == "sim"
    assert DEVICE_ID.fullmatch(config.device.id) and config.device.id.startswith("lt-")


@pytest.mark.parametrize(("hostname", "expected"), [
    ("Front_Desk.Example.COM", "lt-front-desk-example-com"),
    ("box--7", "lt-box-7"),
    ("x" * 80, "lt-" + "x" * 61),
    ("-", "lt"),
])
def test_default_device_id_is_made_from_the_host_name(monkeypatch: pytest.MonkeyPatch,
                                                      hostname: str, expected: str) -> None:
    monkeypatch.setattr(config_module.socket, "gethostname", lambda: hostname)
    assert DeviceSection().id == expected
    assert DEVICE_ID.fullmatch(expected)


def test_example_file_loads_and_equals_the_defaults() -> None:
    assert load_config(EXAMPLE) == Config()


def test_example_file_mentions_every_key_of_every_section() -> None:
    mentioned: dict[str, set[str]] = {}
    section = ""
    for line in EXAMPLE.read_text().splitlines():
        if header := re.fullmatch(r"\[(\w+)\]", line.strip()):
            section = header.group(1)
        elif key := re.match(r"#?\s?(\w+) = ", line):
            mentioned.setdefault(section, set()).add(key.group(1))
    expected = {name: set(field.annotation.model_fields)
                for name, field in Config.model_fields.items()}
    assert mentioned == expected


def test_example_file_says_the_defaults_it_sets() -> None:
    """Each uncommented key is preceded by a 'Default:' line naming the same value."""
    text = EXAMPLE.read_text()
    data = tomllib.loads(text)
    for section, keys in data.items():
        for key, value in keys.items():
            block = re.search(rf"# Default: (.+)\n{key} = ", text)
            assert block, f"{section}.{key} has no 'Default:' line"
            assert tomllib.loads(f"v = {block.group(1)}")["v"] == value


def test_config_is_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        load_config(None).audio.rate = 8000  # type: ignore[misc]


# ------------------------------------------------------------------ errors --

def test_missing_file_names_the_path_and_the_example(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert str(missing) in str(caught.value)
    assert "linetap.example.toml" in str(caught.value)


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[audio]\nrat = 16000\n")
    assert message == f"{tmp_path / 'linetap.toml'}: audio.rat = 16000: unknown key; did you mean 'rate'?"


def test_unknown_section_suggests_the_close_one(tmp_path: Path) -> None:
    assert "audoi = {...}: unknown key; did you mean 'audio'?" in config_error(tmp_path, "[audoi]\nrate = 8000\n")


def test_unknown_key_without_a_close_one_lists_the_allowed_keys(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[controls]\nvolume = 3\n")
    assert "controls.volume = 3: unknown key; remove it (keys allowed in [controls]: long_press_s)" in message


@pytest.mark.parametrize(("text", "path", "shown"), [
    ('[audio]\nrate = "16000"\n', "audio.rate", "'16000'"),
    ('[audio]\nblock_ms = "20"\n', "audio.block_ms", "'20'"),
    ('[audio]\nqueue_blocks = "100"\n', "audio.queue_blocks", "'100'"),
    ('[controls]\nlong_press_s = "1.5"\n', "controls.long_press_s", "'1.5'"),
])
def test_quoted_numbers_are_refused_with_the_fix(tmp_path: Path, text: str, path: str, shown: str) -> None:
    message = config_error(tmp_path, text)
    assert f"{path} = {shown}:" in message
    assert "without quotes" in message


@pytest.mark.parametrize(("text", "expected"), [
    ("[audio]\nrate = 22050\n", "audio.rate = 22050: not an allowed value; use one of 8000, 16000 or 48000"),
    ("[audio]\nblock_ms = 1\n", "audio.block_ms = 1: out of range; use a value >= 5"),
    ("[controls]\nlong_press_s = 0\n", "controls.long_press_s = 0: out of range; use a value > 0"),
    ('[log]\nlevel = "INFO"\n', "log.level = 'INFO': not an allowed value; use one of 'debug', 'info'"),
    ("[device]\nboard = 4\n", "device.board = 4: must be a string, not an integer; put the value in double quotes"),
    ("audio = 3\n", "audio = 3: must be a table, not an integer"),
    ('[device]\nid = "Front Desk_1"\n', "device.id = 'Front Desk_1': must be 1-64 characters"),
])
def test_bad_values_name_path_value_and_fix(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in config_error(tmp_path, text)


def test_bad_device_id_suggests_a_valid_one(tmp_path: Path) -> None:
    assert "e.g. 'front-desk-1'" in config_error(tmp_path, '[device]\nid = "Front Desk_1"\n')


def test_every_problem_is_in_one_error_one_per_line(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[audio]\nrat = 16000\nblock_ms = "20"\n[log]\nlevel = "loud"\n')
    lines = message.splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{tmp_path / 'linetap.toml'}: ") for line in lines)


def test_toml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[audio]\nrate = 16000\nblock_ms 20\n")
    first, shown, caret = message.splitlines()
    assert first.startswith(f"{tmp_path / 'linetap.toml'}, line 3, column 10: not valid TOML: ")
    assert shown.endswith("3 | block_ms 20")
    assert caret.index("^") == shown.index("block_ms") + len("block_ms ")


def test_toml_error_at_the_end_of_the_file(tmp_path: Path) -> None:
    assert "not valid TOML" in config_error(tmp_path, '[device]\nid = "unclosed\n')


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[device]\nid = "café"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="byte 18 is not UTF-8 text; save the file as UTF-8"):
        load_config(path)


# ------------------------------------------------------------------- board --

def test_unknown_board_name_lists_the_built_in_boards(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[device]\nboard = "pi4-usb-codek"\n')
    assert "device.board = 'pi4-usb-codek' is not usable" in message
    assert "did you mean 'pi4-usb-codec'?" in message
    assert "pi-zero2w-wm8960, pi4-usb-codec, pi4-usb-inline, pi4-v253-modem, sim, sim-usb-inline" in message


def test_board_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "boards").mkdir()
    builtin = (ROOT / "hardware" / "boards" / "sim.toml").read_text()
    (tmp_path / "boards" / "desk.toml").write_text(builtin.replace('name = "sim"', 'name = "desk"'))
    config = load_config(write(tmp_path, '[device]\nboard = "boards/desk.toml"\n'))
    assert Path(config.device.board) == tmp_path / "boards" / "desk.toml"
    assert config.board_profile().name == "desk"


def test_problems_in_the_board_file_are_reported_with_its_path(tmp_path: Path) -> None:
    builtin = (ROOT / "hardware" / "boards" / "sim.toml").read_text()
    (tmp_path / "desk.toml").write_text(builtin.replace("hook = 26", "hook = 17"))
    message = config_error(tmp_path, '[device]\nboard = "desk.toml"\n')
    assert f"{tmp_path / 'desk.toml'}: gpio.hook = 17: GPIO17 is also gpio.rec_led" in message


# ---------------------------------------------------------------- data dir --

def test_data_dir_prefers_the_command_line_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINETAP_DATA_DIR", "/srv/env")
    assert data_dir("/srv/cli") == Path("/srv/cli")
    assert data_dir(None) == Path("/srv/env")
    monkeypatch.setenv("LINETAP_DATA_DIR", "")
    assert data_dir(None) == Path("/var/lib/linetap")
    monkeypatch.delenv("LINETAP_DATA_DIR")
    assert data_dir(None, default_for_box="demo-data") == Path("demo-data")


def test_both_command_lines_find_their_data_dir_by_one_helper(monkeypatch: pytest.MonkeyPatch) -> None:
    from linetap.firmware.cli import OPTIONS as BOX
    from linetap.sync.central.cli import OPTIONS as CENTRAL

    monkeypatch.setenv("LINETAP_DATA_DIR", "/srv/env")
    assert BOX.data_dir("/srv/cli") == Path("/srv/cli")
    assert BOX.data_dir(None) == Path("/srv/env")
    monkeypatch.setenv("LINETAP_DATA_DIR", "")
    assert BOX.data_dir(None) == Path("/var/lib/linetap")
    assert BOX.data_dir(None, default="demo-data") == Path("demo-data")
    monkeypatch.setenv("LINETAP_CENTRAL_DATA_DIR", "/srv/central")
    assert CENTRAL.data_dir(None) == Path("/srv/central")
    monkeypatch.delenv("LINETAP_CENTRAL_DATA_DIR")
    with pytest.raises(ConfigError, match="LINETAP_CENTRAL_DATA_DIR"):
        CENTRAL.data_dir(None)


# ------------------------------------------------------------------ secrets --

class Broker(Schema):
    host: str = "localhost"
    password: SecretStr | None = None


class WithSecret(Schema):
    broker: Broker = Broker()


def test_secret_values_never_show() -> None:
    model = load_model(WithSecret, {"broker": {"password": "hunter2"}}, source="t.toml")
    assert model.broker.password is not None
    assert model.broker.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(model)
    assert model.model_dump(mode="json")["broker"]["password"] == MASK


@pytest.mark.parametrize("data", [
    {"broker": {"password": 1234567}},  # right key, wrong type
    {"broker": {"pasword": 1234567}},  # mistyped key close to a secret field
    {"broker": {"token": 1234567}},  # unknown key with a secret-looking name
])
def test_secret_values_never_show_in_errors(data: dict) -> None:
    with pytest.raises(ConfigError) as caught:
        load_model(WithSecret, data, source="t.toml")
    message = str(caught.value)
    assert "1234567" not in message
    assert f"= {MASK}:" in message


def test_plain_values_do_show_in_errors() -> None:
    with pytest.raises(ConfigError, match=r"broker\.host = 1234567: must be a string"):
        load_model(WithSecret, {"broker": {"host": 1234567}}, source="t.toml")


def test_toml_error_on_a_secret_line_does_not_show_the_secret(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[mqtt]\npassword = hunter2\n")
    assert "line 2" in message
    assert "hunter2" not in message
    assert f"password = {MASK}" in message


def test_a_pushed_config_changes_only_the_keys_it_names() -> None:
    from linetap.firmware.config import merge_pushed

    local = Config().model_copy(update={"sync": Config().sync.model_copy(update={"broker": "mqtt.site"})})
    merged = merge_pushed(local, {"sync": {"bandwidth_bytes_s": 5000}, "log": {"level": "debug"}}, source="push")
    assert merged.sync.broker == "mqtt.site" and merged.sync.bandwidth_bytes_s == 5000
    assert merged.log.level == "debug" and merged.consent == local.consent
    with pytest.raises(ConfigError, match="device: is each box's own"):
        merge_pushed(local, {"device": {"id": "x"}}, source="push")
    with pytest.raises(ConfigError, match="sync.bandwith_bytes_s"):
        merge_pushed(local, {"sync": {"bandwith_bytes_s": 1}}, source="push")


# ---------------------------------------------- hostile files, via the CLI --

def config_check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from linetap.firmware.cli import main

    code = main(["config", "check", str(path)])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_config_check_refuses_deep_nesting_without_recursing(tmp_path: Path, capsys) -> None:
    depth = 100_000
    code, out = config_check(write(tmp_path, "x = " + "[" * depth + "]" * depth + "\n"), capsys)
    assert code == 1
    assert "line 1: arrays or tables nest deeper than 32 levels" in out and "Traceback" not in out


def test_config_check_refuses_a_file_over_the_size_cap(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, "# padding\n" * 100_000)
    code, out = config_check(path, capsys)
    assert code == 1 and f"{path}: is 1000000 bytes; at most 262144 are accepted" in out


def test_config_check_refuses_a_device_as_the_config(capsys) -> None:
    code, out = config_check(Path("/dev/zero"), capsys)
    assert code == 1 and "/dev/zero: is a character device, not a regular file" in out


def test_a_board_path_to_a_device_is_refused_without_reading_it(tmp_path: Path, capsys) -> None:
    code, out = config_check(write(tmp_path, '[device]\nboard = "/dev/zero"\n'), capsys)
    assert code == 1
    assert "device.board = '/dev/zero' is not usable" in out
    assert "/dev/zero: is a character device, not a regular file" in out


def test_a_board_path_error_never_shows_the_files_content(tmp_path: Path, capsys) -> None:
    (tmp_path / "secret.txt").write_text("root:$6$hash-that-must-not-show:19000:0\n")
    code, out = config_check(write(tmp_path, '[device]\nboard = "./secret.txt"\n'), capsys)
    assert code == 1 and "secret.txt, line 1, column" in out
    assert "hash-that-must-not-show" not in out and "19000" not in out


def test_a_board_path_to_another_toml_file_names_its_keys_not_their_values(tmp_path: Path, capsys) -> None:
    (tmp_path / "other.toml").write_text('api = "value-that-must-not-show"\n[mail]\nrelay = "x"\n')
    code, out = config_check(write(tmp_path, '[device]\nboard = "other.toml"\n'), capsys)
    assert code == 1 and "other.toml: api: unknown key" in out and "other.toml: mail: unknown key" in out
    assert "value-that-must-not-show" not in out


def test_the_config_files_own_syntax_error_still_shows_its_line(tmp_path: Path, capsys) -> None:
    code, out = config_check(write(tmp_path, "[audio]\nrate = 16000 16000\n"), capsys)
    assert code == 1 and "2 | rate = 16000 16000" in out


def test_config_check_loads_the_prompt_files(tmp_path: Path, capsys) -> None:
    text = '[consent]\nprompts = { en = "builtin:en", de = "%s" }\n'
    code, out = config_check(write(tmp_path, text % (tmp_path / "missing.wav")), capsys)
    assert code == 1 and "consent.prompts.de = " in out and "missing.wav' does not exist" in out
    code, out = config_check(write(tmp_path, text % "/dev/zero"), capsys)
    assert code == 1 and "'/dev/zero' is a character device, not a regular file" in out
    (tmp_path / "garbage.wav").write_bytes(b"RIFF" + bytes(200))
    code, out = config_check(write(tmp_path, text % (tmp_path / "garbage.wav")), capsys)
    assert code == 1 and "is not a readable WAV or Ogg file" in out


@pytest.mark.parametrize("text, key", [
    ("[spool]\nmax_bytes = 99999999999999999999\n", "spool.max_bytes = 99999999999999999999"),
    ("[spool]\nmin_free_mb = 99999999999999999999\n", "spool.min_free_mb = 99999999999999999999"),
    ("[sync]\nbandwidth_bytes_s = 99999999999999999999\n", "sync.bandwidth_bytes_s = 99999999999999999999"),
    ("[spool]\nsegment_s = 121.0\n", "spool.segment_s = 121.0"),
])
def test_every_integer_has_a_sane_range(tmp_path: Path, capsys, text: str, key: str) -> None:
    code, out = config_check(write(tmp_path, text), capsys)
    assert code == 1 and f"{key}: out of range; use a value >= " in out and " and <= " in out


def test_every_number_in_the_schemas_has_both_bounds() -> None:
    from linetap.firmware.board import BoardProfile

    def numeric_fields(model: type[pydantic.BaseModel], prefix: str = ""):
        for name, field in model.model_fields.items():
            annotation = field.annotation
            inner = [a for a in getattr(annotation, "__args__", ()) if isinstance(a, type)]
            if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
                yield from numeric_fields(annotation, prefix + name + ".")
            elif annotation in (int, float) or set(inner) & {int, float} and type(None) in inner:
                yield prefix + name, field

    unbounded = []
    for model in (Config, BoardProfile):
        for path, field in numeric_fields(model):
            kinds = {type(m).__name__ for m in field.metadata}
            if "AfterValidator" in kinds:  # GPIO numbers: checked against the header map
                continue
            if not kinds & {"Ge", "Gt"} or not kinds & {"Le", "Lt"}:
                unbounded.append(path)
    assert not unbounded


def test_segment_length_has_one_bound_that_spool_and_encoder_share() -> None:
    from linetap.firmware.encoder import OpusSegmenter
    from linetap.firmware.spool import SpoolSettings

    field = config_module.SpoolSection.model_fields["segment_s"]
    assert [(getattr(m, "ge", None), getattr(m, "le", None)) for m in field.metadata] == \
        [(config_module.SEGMENT_S_MIN, None), (None, config_module.SEGMENT_S_MAX)]
    for bad in (config_module.SEGMENT_S_MIN - 0.1, config_module.SEGMENT_S_MAX + 1):
        with pytest.raises(ConfigError, match="use 0.5 to 120 seconds"):
            OpusSegmenter(16000, segment_s=bad)
        with pytest.raises(Exception, match="use 0.5 to 120 seconds"):
            SpoolSettings(segment_s=bad)
    SpoolSettings(segment_s=config_module.SEGMENT_S_MIN)
    load_model(config_module.SpoolSection, {"segment_s": config_module.SEGMENT_S_MIN}, source="t")


def test_a_bounded_read_costs_the_file_not_the_bound(tmp_path: Path) -> None:
    """os.read allocates its whole request: asking for the bound would cost megabytes per small file."""
    import tracemalloc

    from linetap.firmware.schema import FileRefused, read_bounded

    path = tmp_path / "small"
    path.write_bytes(b"x" * 1000)
    tracemalloc.start()
    try:
        assert read_bounded(path, max_bytes=64 * 1024 * 1024) == b"x" * 1000
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024
    path.write_bytes(b"x" * 2000)
    with pytest.raises(FileRefused, match="at most 1500"):
        read_bounded(path, max_bytes=1500)
