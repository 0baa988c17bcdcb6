"""One declaration of settings: library arguments, variables, YAML and flags agree."""

import pytest

from clipserve.cli import build_parser, given_settings
from clipserve.settings import EncodeSettings, EngineSettings, ServerSettings, resolve


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
    config.write_text("port: 8000\nbatch_size: 8\nallow_url: true\nmodel: RN50::openai\n")
    monkeypatch.setenv("CLIPSERVE_PORT", "9000")
    monkeypatch.setenv("CLIPSERVE_PRECISION", "int8")
    monkeypatch.setenv("CLIPSERVE_MAX_WAIT_MS", "2.5")
    settings = resolve(ServerSettings, config, port=9100, api_key=None)
    assert settings.port == 9100  # flag over variable over file
    assert settings.precision == "int8" and settings.max_wait_ms == 2.5  # variables
    assert settings.batch_size == 8 and settings.allow_url is True and settings.model == ["RN50::openai"]
    assert settings.api_key is None


def test_the_library_reads_the_same_variables(monkeypatch) -> None:
    monkeypatch.setenv("CLIPSERVE_CACHE_DIR", "/somewhere")
    monkeypatch.setenv("CLIPSERVE_ALLOW_URL", "yes")
    settings = resolve(EngineSettings, model="RN50::openai", max_pixels=1000)
    assert (settings.cache_dir, settings.allow_url, settings.max_pixels) == ("/somewhere", True, 1000)
    monkeypatch.setenv("CLIPSERVE_MAX_PIXELS", "many")
    with pytest.raises(ValueError, match="max_pixels must be int, got 'many'"):
        resolve(EngineSettings)


def test_unknown_names_are_refused_with_a_suggestion(tmp_path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("prot: 8000\n")
    with pytest.raises(ValueError, match=r"unknown setting 'prot' in .*bad.yaml \(did you mean port\?\)"):
        resolve(ServerSettings, config)
    with pytest.raises(
        TypeError, match=r"unknown setting 'max_pixel' in arguments \(did you mean max_pixels"
    ):
        resolve(EngineSettings, max_pixel=3)


def test_serve_flags_mirror_every_setting_but_the_secret(capsys) -> None:
    parser = build_parser()
    args = parser.parse_args(["serve", "--port", "1234", "--allow-url", "--max-wait-ms", "7.5"])
    assert (args.port, args.allow_url, args.max_wait_ms, args.model) == (1234, True, 7.5, None)
    settings = resolve(ServerSettings, None, **given_settings(args, ServerSettings))
    assert (settings.port, settings.allow_url, settings.max_wait_ms) == (1234, True, 7.5)
    assert not hasattr(args, "api_key") and hasattr(args, "api_key_file")  # `ps` would show a key flag
    for given in (["--api-key", "visible-in-ps"], ["--api-key=visible-in-ps"], ["--api-key"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["serve", *given])
        said = capsys.readouterr().err  # not argparse's bare "unrecognized arguments": where it goes
        assert "CLIPSERVE_API_KEY" in said and "--api-key-file" in said and "visible-in-ps" not in said
    assert parser.parse_args(["serve", "--no-allow-url"]).allow_url is False


def test_api_key_from_a_file(tmp_path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    assert ServerSettings(api_key_file=str(key_file)).resolved_api_key() == "s3cret"
    with pytest.raises(ValueError, match="not both"):
        ServerSettings(api_key="a", api_key_file=str(key_file)).resolved_api_key()


def test_several_models_from_flags_variable_and_yaml(tmp_path, monkeypatch) -> None:
    args = build_parser().parse_args(
        ["serve", "--model", "ViT-B-32::openai", "--model", "RN50::openai=/models/rn50"]
    )
    settings = resolve(ServerSettings, None, **given_settings(args, ServerSettings))
    engines = settings.engines()
    assert [e.model for e in engines] == ["ViT-B-32::openai", "RN50::openai"]
    assert [e.weights for e in engines] == [None, "/models/rn50"]
    monkeypatch.setenv("CLIPSERVE_MODEL", "RN50::openai, ViT-B-32::openai")
    assert resolve(ServerSettings).model == ["RN50::openai", "ViT-B-32::openai"]
    monkeypatch.delenv("CLIPSERVE_MODEL")
    config = tmp_path / "models.yaml"
    config.write_text("model:\n  - ViT-B-32::openai\n  - RN50::openai\nmodel_ttl: 300\n")
    from_file = resolve(ServerSettings, config)
    assert from_file.model == ["ViT-B-32::openai", "RN50::openai"] and from_file.model_ttl == 300.0
    assert ServerSettings(model="RN50::openai").model == ["RN50::openai"]


def test_per_model_files_need_the_name_path_form() -> None:
    with pytest.raises(ValueError, match="--model NAME=PATH"):
        ServerSettings(model=["ViT-B-32::openai", "RN50::openai"], weights="/one/file.pt").engines()
    with pytest.raises(ValueError, match="no weights path"):
        ServerSettings(model=["RN50::openai="]).engines()
    with pytest.raises(ValueError, match="memory_policy must be refuse or evict"):
        ServerSettings(memory_policy="random").engines()
    single = ServerSettings(model="RN50::openai", weights="/one/file.pt").engines()
    assert [(e.model, e.weights) for e in single] == [("RN50::openai", "/one/file.pt")]


def test_encode_on_ray_takes_the_ray_settings_of_serve(monkeypatch) -> None:
    """One declaration: `encode --ray` and `serve --ray` share names, flags and variables."""
    monkeypatch.setenv("CLIPSERVE_RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setenv("CLIPSERVE_REPLICA_GPUS", "1")
    parser = build_parser()
    flags = ["--ray", "--replicas", "4", "--replica-cpus", "2", "--shard-size", "500"]
    args = parser.parse_args(["encode", "--text", "a cat", "-o", "out.npy", "--batch-size", "8", *flags])
    settings = resolve(EncodeSettings, None, **given_settings(args, EncodeSettings))
    assert (settings.ray, settings.replicas, settings.replica_cpus, settings.shard_size) == (
        True,
        4,
        2.0,
        500,
    )
    assert (settings.ray_address, settings.replica_gpus) == ("ray://head:10001", 1.0)
    # what the encoder takes, nothing of Ray (the suite's CLIPSERVE_BACKEND included: tests/conftest.py)
    assert settings.engine() == EngineSettings(batch_size=8, backend="onnx")
    former = ["--actors", "3", "--cpus-per-actor", "0.5", "--gpus-per-actor", "1", "--address", "auto"]
    args = parser.parse_args(["encode", "--text", "a", "-o", "out.npy", "--ray", *former])
    settings = resolve(EncodeSettings, None, **given_settings(args, EncodeSettings))
    assert (settings.replicas, settings.replica_cpus, settings.replica_gpus, settings.ray_address) == (
        3,
        0.5,
        1.0,
        "auto",
    )
    served = resolve(
        ServerSettings, None, **given_settings(parser.parse_args(["serve", *flags[:5]]), ServerSettings)
    )
    assert (served.ray_address, served.replicas, served.replica_cpus, served.replica_gpus) == (
        "ray://head:10001",
        4,
        2.0,
        1.0,
    )


def test_cache_prune_takes_the_cache_cap_setting(monkeypatch) -> None:
    monkeypatch.setenv("CLIPSERVE_CACHE_MAX_GB", "5")
    args = build_parser().parse_args(["cache", "prune"])
    assert resolve(EngineSettings, None, **given_settings(args, EngineSettings)).cache_max_gb == 5.0
    args = build_parser().parse_args(["cache", "prune", "--cache-max-gb", "2"])
    assert resolve(EngineSettings, None, **given_settings(args, EngineSettings)).cache_max_gb == 2.0
    args = build_parser().parse_args(["cache", "prune", "--max-gb", "3"])  # the earlier spelling
    assert resolve(EngineSettings, None, **given_settings(args, EngineSettings)).cache_max_gb == 3.0
