"""Gateway settings: YAML file, GATEWAY_* env, explicit overrides; each refusal names a field."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from gateway.settings import (
    ConfigError,
    GatewaySettings,
    PoolConfig,
    load_settings,
    settings_from_dict,
)

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"

VALID: dict[str, Any] = {
    "mode": "auto",
    "slo": {"interactive_seconds": 1.5},
    "port": 7000,
    "pools": [
        {
            "name": "inf2",
            "accelerator": "inf2.xlarge",
            "price_per_hour": 0.7582,
            "expected_latency_seconds": 0.67,
            "shapes": ["512x512"],
            "replicas": ["http://127.0.0.1:9001/", "http://127.0.0.1:9002"],
        },
        {
            "name": "g5",
            "accelerator": "g5.xlarge",
            "price_per_hour": 1.006,
            "dns": "sd-g5.default.svc.cluster.local:8000",
            "protocol": "genimage",
            "read_timeout_s": 30,
        },
    ],
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own GATEWAY_* variables must not leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("GATEWAY_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def with_changes(**changes: Any) -> dict[str, Any]:
    """VALID with top-level keys replaced; `pool0` is merged into the first pool."""
    data = copy.deepcopy(VALID)
    data["pools"][0].update(changes.pop("pool0", {}))
    data.update(changes)
    return data


def test_valid_file_loads(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, VALID))
    assert settings.mode == "auto"
    assert settings.port == 7000
    assert (settings.slo.interactive_seconds, settings.slo.batch_seconds) == (1.5, 60.0)
    inf2, g5 = settings.pools
    assert inf2.replicas == ("http://127.0.0.1:9001", "http://127.0.0.1:9002")
    assert inf2.shapes == frozenset({"512x512"})
    assert (inf2.dns, inf2.protocol, inf2.slots_per_replica, inf2.read_timeout_s) == (
        None,
        "v1",
        1,
        None,
    )
    assert (g5.replicas, g5.dns, g5.shapes) == ((), "sd-g5.default.svc.cluster.local:8000", None)
    assert (g5.protocol, g5.read_timeout_s, g5.expected_latency_seconds) == ("genimage", 30.0, 1.0)
    # Defaults the rest of the gateway relies on.
    assert (settings.max_attempts, settings.retry_budget_ratio, settings.workers) == (2, 0.2, 1)
    assert settings.host == "0.0.0.0"


def test_settings_from_dict_matches_file(tmp_path: Path) -> None:
    assert settings_from_dict(VALID) == load_settings(write(tmp_path, VALID))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            with_changes(mode="fastest"),
            ["mode: Input should be 'auto', 'cost', 'capacity', 'latency'", "'least_request'"],
            id="unknown-mode",
        ),
        pytest.param(
            with_changes(pool0={"price_per_hour": -0.5}),
            ["pools.0.price_per_hour: Input should be greater than or equal to 0"],
            id="negative-price",
        ),
        pytest.param(
            with_changes(pools=[VALID["pools"][1], VALID["pools"][1]]),
            ["pools: duplicate pool name 'g5'"],
            id="duplicate-pool-name",
        ),
        pytest.param(
            with_changes(pool0={"dns": "sd-inf2:8000"}),
            ["pools.0: pool 'inf2': set exactly one of 'replicas'", "both are set"],
            id="replicas-and-dns",
        ),
        pytest.param(
            with_changes(pool0={"replicas": []}),
            ["pools.0: pool 'inf2': set exactly one of 'replicas'", "neither is set"],
            id="neither-replicas-nor-dns",
        ),
        pytest.param(
            with_changes(pool0={"replicas": None, "dns": "no-port"}),
            ["pools.0.dns:", "'no-port' must be 'host:port'"],
            id="dns-without-port",
        ),
        pytest.param(
            with_changes(pool0={"shapes": ["512x500"]}),
            ["pools.0.shapes: shape '512x500' must be 'WxH' with positive multiples of 8"],
            id="shape-not-multiple-of-8",
        ),
        pytest.param(
            with_changes(pool0={"shapes": ["big"]}),
            ["pools.0.shapes: shape 'big'"],
            id="shape-not-wxh",
        ),
        pytest.param(
            with_changes(pools=[]), ["pools: at least one pool is required"], id="no-pools"
        ),
        pytest.param(
            {k: v for k, v in VALID.items() if k != "pools"},
            ["pools: Field required"],
            id="pools-missing",
        ),
        pytest.param(
            with_changes(prot=8080),
            ["prot: Extra inputs are not permitted"],
            id="unknown-top-level-key",
        ),
        pytest.param(
            with_changes(pool0={"weight": 3}),
            ["pools.0.weight: Extra inputs are not permitted"],
            id="unknown-pool-key",
        ),
        pytest.param(
            with_changes(pool0={"name": "Inf2"}),
            ["pools.0.name: String should match pattern"],
            id="uppercase-pool-name",
        ),
        pytest.param(
            with_changes(pool0={"replicas": ["http://a:1", "http://A:1/"]}),
            ["pools.0.replicas: pool 'inf2': duplicate replica URL 'http://A:1/'"],
            id="duplicate-replica",
        ),
        pytest.param(
            with_changes(workers=0, max_attempts=9),
            ["workers: Input should be greater than or equal to 1", "max_attempts: Input should"],
            id="every-field-reported",
        ),
        pytest.param(
            with_changes(probe_interval_s=1.0, probe_timeout_s=2.0),
            ["probe_timeout_s: must not exceed probe_interval_s"],
            id="probe-timeout-above-interval",
        ),
    ],
)
def test_invalid_config_names_the_field(
    tmp_path: Path, data: dict[str, Any], expected: list[str]
) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message
    with pytest.raises(ConfigError):
        settings_from_dict(data)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://x", "must be an absolute http:// or https:// URL"),
        ("http://", "has no host"),
        ("127.0.0.1:9001", "must be an absolute http:// or https:// URL"),
        ("http://h:99999", "is malformed"),
        ("http://h/path?x", "must have no path, query or fragment"),
        ("http://h/v1", "must have no path, query or fragment"),
        ("http://user:pw@h:1", "has an invalid host part"),
    ],
)
def test_malformed_replica_url_names_pool_and_url(url: str, reason: str) -> None:
    data = with_changes(pool0={"replicas": ["http://127.0.0.1:9001", url]})
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data)
    assert f"pools.0.replicas: pool 'inf2': replica URL {url!r} {reason}" in str(info.value)


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("http://h:9001/", "http://h:9001"),
        ("HTTPS://Sd-Inf2:8443", "https://sd-inf2:8443"),
        ("http://[::1]:9001", "http://[::1]:9001"),
    ],
)
def test_replica_url_is_normalised(url: str, normalised: str) -> None:
    settings = settings_from_dict(with_changes(pool0={"replicas": [url]}))
    assert settings.pools[0].replicas == (normalised,)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("pools: [", "invalid YAML at line 1"),
        ("mode: auto\nmode: cost\n", "invalid YAML at line 2, column 1: duplicate key 'mode'"),
        ("- a\n- b\n", "the top level must be a mapping of settings, got list"),
        ("", "got an empty file"),
    ],
    ids=["unclosed-flow", "duplicate-key", "top-level-list", "empty"],
)
def test_unparsable_file(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert f"{path}: file not found" in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_settings(tmp_path)  # a directory


def test_env_beats_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, with_changes(mode="capacity", slo={"batch_seconds": 30}))
    monkeypatch.setenv("GATEWAY_MODE", "cost")
    monkeypatch.setenv("GATEWAY_PORT", "9000")
    monkeypatch.setenv("GATEWAY_SLO__INTERACTIVE_SECONDS", "0.5")
    settings = load_settings(path)
    assert (settings.mode, settings.port) == ("cost", 9000)
    # A nested variable replaces one key and keeps the file's others.
    assert (settings.slo.interactive_seconds, settings.slo.batch_seconds) == (0.5, 30.0)


def test_invalid_env_names_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_MODE", "cheapest")
    with pytest.raises(ConfigError, match="mode: Input should be"):
        load_settings(write(tmp_path, VALID))


def test_unknown_env_variable_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_SOMETHING_ELSE", "1")
    assert load_settings(write(tmp_path, VALID)).port == 7000


def test_overrides_beat_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "9000")
    monkeypatch.setenv("GATEWAY_HOST", "10.0.0.1")
    settings = load_settings(write(tmp_path, VALID), port=9100, workers=4, host=None)
    assert (settings.port, settings.workers) == (9100, 4)
    assert settings.host == "10.0.0.1"  # a None override (absent CLI flag) changes nothing


def test_invalid_override_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, VALID), workers=65, listen=1)
    message = str(info.value)
    assert "workers: Input should be less than or equal to 64" in message
    assert "listen: Extra inputs are not permitted" in message


def test_settings_are_frozen() -> None:
    settings = settings_from_dict(VALID)
    with pytest.raises(ValidationError):
        settings.port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.pools[0].price_per_hour = 0.0  # type: ignore[misc]
    assert isinstance(settings.pools, tuple)
    assert hash(settings.pools[0]) == hash(PoolConfig.model_validate(VALID["pools"][0]))


def test_constructor_kwargs_lose_to_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_MODE", "latency")
    settings = GatewaySettings(pools=VALID["pools"], mode="cost")
    assert settings.mode == "latency"


def test_admin_token_is_not_in_repr() -> None:
    settings = settings_from_dict(with_changes(admin_token="s3cret"))
    assert settings.admin_token == "s3cret"
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize("name", ["demo.yaml", "compose.yaml", "aws-reference.yaml"])
def test_example_configs_load(name: str) -> None:
    settings = load_settings(CONFIG_DIR / name)
    names = [pool.name for pool in settings.pools]
    assert names[0] == "inf2"
    assert all(pool.price_per_hour > 0 for pool in settings.pools)
    if name == "aws-reference.yaml":
        assert names == ["inf2", "trn1", "g5-triton", "g6", "g5-cuda"]
        assert all(pool.dns and pool.dns.endswith(":8000") for pool in settings.pools)
    else:
        assert names == ["inf2", "g5", "g6"]
        assert len(settings.pools[0].replicas) == 2
