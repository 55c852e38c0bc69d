"""Scenario files: field-naming errors, and a short run of every shipped scenario."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from loadtest.sim.cli import main, run_simulation
from loadtest.sim.engine import POLICIES
from loadtest.sim.scenario import ScenarioError, load_scenario, parse_scenario

SHIPPED = ("paper-shortfall", "flash-crowd", "spot-churn", "mixed-shapes")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["pools"][0].update(latency_s=-1), "pools.0.latency_s"),
        (lambda d: d["pools"][1]["replicas"].update(initial=20), "pools.1.replicas"),
        (lambda d: d["events"][0].update(pool="nope"), "events.0.pool"),
        (lambda d: d["events"][2].update(kind="meteor"), "events.2"),
        (lambda d: d["arrivals"]["rate"].update(per_s="lots"), "arrivals.rate.constant.per_s"),
        (
            lambda d: [p.update(shapes=["512x512"]) for p in d["pools"]],
            "arrivals.shapes.1.shape: no pool serves 768x768",
        ),
        (lambda d: d.update(gateway={"ewma_alpha": 7}), "gateway: ewma_alpha"),
        (lambda d: d.update(gateway={"mode": "cost"}), "gateway.mode"),
        (lambda d: d.update(colour="blue"), "colour"),
        (lambda d: d["pools"][0].update(profile="tpu"), "profile"),
    ],
    ids=[
        "negative-latency",
        "initial-above-max",
        "unknown-event-pool",
        "unknown-event-kind",
        "rate-not-a-number",
        "shape-nobody-serves",
        "bad-gateway-setting",
        "reserved-gateway-key",
        "unknown-top-level-key",
        "unknown-profile",
    ],
)
def test_bad_scenario_names_the_field(change: Any, field: str, small_data: dict[str, Any]) -> None:
    change(small_data)
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(small_data, "bad.yaml")
    assert field in str(caught.value)
    assert "bad.yaml" in str(caught.value)


def test_cli_reports_a_bad_file_and_exits_2(
    tmp_path: Path, small_data: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    small_data["pools"][0]["slots"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(small_data))
    assert main(["--scenario", str(path), "--no-plots", "--out", str(tmp_path / "out")]) == 2
    assert "pools.0.slots" in capsys.readouterr().err
    assert main(["--scenario", str(tmp_path / "missing.yaml")]) == 2
    assert main(["--scenario", str(path), "--policies", "auto,wishful"]) == 2


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenario_runs_briefly(name: str, scenarios_dir: Path) -> None:
    scenario = load_scenario(scenarios_dir / f"{name}.yaml")
    results = run_simulation(scenario, POLICIES, duration_s=240, plots=False)
    assert list(results["policies"]) == list(POLICIES)
    for policy, summary in results["policies"].items():
        arrivals = sum(summary[c]["arrivals"] for c in ("interactive", "batch"))
        ended = sum(
            summary[c]["served"] + summary[c]["failed"] + summary[c]["shed"]
            for c in ("interactive", "batch")
        )
        assert arrivals == ended == results["arrivals"], policy
        assert summary["cost_usd"] > 0
    assert results["oracle"]["cost_usd"] > 0
    assert {t["target"] for t in results["targets"]}


def test_cli_writes_results_table_and_plots(tmp_path: Path, scenarios_dir: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    code = main(
        [
            "--scenario",
            str(scenarios_dir / "flash-crowd.yaml"),
            "--policies",
            "auto,static_alb",
            "--duration",
            "120",
            "--seed",
            "9",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert {"results.json", "results.md", "traffic_share.png", "replicas.png"} <= names
    assert {"latency.png", "cost.png"} <= names
    assert "| auto |" in (out / "results.md").read_text()


def test_max_share_reaches_the_gateway_config_only(
    tmp_path: Path, small_data: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = parse_scenario(small_data).hedged({"inf2": 0.4})
    assert scenario.name == "small-inf2-share0.4"
    settings = scenario.gateway_settings("auto", 1)
    assert {p.name: p.max_share for p in settings.pools} == {"inf2": 0.4, "g5": None, "g6": None}
    with pytest.raises(ValueError, match="no pool named tpu"):
        scenario.hedged({"tpu": 0.5})

    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(small_data))
    for bad in ("inf2", "inf2=0", "inf2=1.5", "inf2=lots", "tpu=0.5"):
        assert main(["--scenario", str(path), "--no-plots", "--max-share", bad]) == 2
        assert bad.partition("=")[0] in capsys.readouterr().err  # names the bad pair
    out = tmp_path / "out"
    args = ["--scenario", str(path), "--no-plots", "--duration", "60", "--out", str(out)]
    assert main([*args, "--policies", "auto", "--max-share", "inf2=0.4"]) == 0
    assert "small-inf2-share0.4" in capsys.readouterr().out


def test_scale_down_window_changes_the_shared_scaler_for_every_policy(
    tmp_path: Path, small_data: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = parse_scenario(small_data)
    shorter = scenario.with_scale_down_window(60)
    assert shorter.name == "small-scaledown60"
    assert shorter.autoscaler.scale_down_cooldown_s == 60
    assert scenario.autoscaler.scale_down_cooldown_s == 180  # the original is unchanged
    # The window is the simulated cluster's, not a gateway setting.
    assert shorter.gateway_settings("auto", 1) == scenario.gateway_settings("auto", 1)

    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(small_data))
    assert main(["--scenario", str(path), "--no-plots", "--scale-down-window", "-5"]) == 2
    assert "scale_down_cooldown_s" in capsys.readouterr().err
    args = ["--scenario", str(path), "--no-plots", "--duration", "60", "--out", str(tmp_path)]
    assert main([*args, "--policies", "least_request", "--scale-down-window", "60"]) == 0
    assert "small-scaledown60" in capsys.readouterr().out
