import pytest

from clipserve.cli import build_parser
from clipserve.server.settings import ServerSettings, load_settings


def test_defaults_are_loopback_and_fp32() -> None:
    settings = ServerSettings()
    assert (settings.host, settings.port, settings.precision, settings.api_key) == (
        "127.0.0.1",
        51000,
        "fp32",
        None,
    )


def test_file_then_environment_then_flags(tmp_path, monkeypatch) -> None:
    config = tmp_path / "clipserve.yaml"
    config.write_text("port: 8000\nmax_batch_size: 8\nallow_url: true\nmodel: RN50::openai\n")
    monkeypatch.setenv("CLIPSERVE_PORT", "9000")
    monkeypatch.setenv("CLIPSERVE_PRECISION", "int8")
    monkeypatch.setenv("CLIPSERVE_MAX_WAIT_MS", "2.5")
    settings = load_settings(config, port=9100, api_key=None)
    assert settings.port == 9100  # flag over variable over file
    assert settings.precision == "int8" and settings.max_wait_ms == 2.5  # variables
    assert settings.max_batch_size == 8 and settings.allow_url is True and settings.model == "RN50::openai"
    assert settings.api_key is None


def test_unknown_keys_in_the_file_are_refused(tmp_path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("prot: 8000\n")
    with pytest.raises(ValueError, match=r"unknown settings in .*: prot"):
        load_settings(config)


def test_serve_flags_mirror_every_setting() -> None:
    args = build_parser().parse_args(["serve", "--port", "1234", "--allow-url", "--max-wait-ms", "7.5"])
    assert (args.port, args.allow_url, args.max_wait_ms, args.model) == (1234, True, 7.5, None)
    settings = load_settings(
        None, **{k: v for k, v in vars(args).items() if k in ServerSettings.__dataclass_fields__}
    )
    assert (settings.port, settings.allow_url, settings.max_wait_ms) == (1234, True, 7.5)
