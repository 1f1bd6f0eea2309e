"""`--to auto`: candidates, layer errors, the budgeted search, the latency cache, and the command end to end."""

from __future__ import annotations

import itertools
import json
import math
import textwrap
from pathlib import Path

import pytest
import torch
from test_cli import ok, run
from torch import nn

from convert import CalibrationConfig, ConvertConfig, ConvertError, convert_model
from convert.auto import AutoConfig, LatencyPlanner, plan_for_speed
from convert.auto.candidates import layer_error, replacement, shortlist
from convert.auto.search import search
from convert.report.schema import AutoLayer, Candidate
from convert.surgery.analysis import analyze
from convert.surgery.factorize import full_rank, group_svd
from convert.surgery.plan import LayerPlan
from convert.surgery.whiten import whitening

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")

FAST = dict(runs=3, warmup=1, threads=1, max_candidates=4)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(8, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 1)
    ).eval()


def layers_of(model: nn.Module, x: torch.Tensor):
    return analyze(model, x).candidates()


def row(name: str, *candidates: tuple[float, float]) -> AutoLayer:
    """A layer whose candidates are (latency ms, error); the first is keep."""
    return AutoLayer(
        name, [1], [Candidate(f"c{i}", None, None, 0, e, e, ms) for i, (ms, e) in enumerate(candidates)], 0
    )


def test_search_finds_the_least_error_plan_within_the_budget() -> None:
    rows = [row("a", (4.0, 0.0), (2.0, 0.1), (1.0, 0.5)), row("b", (4.0, 0.0), (2.0, 0.3), (1.0, 0.4))]
    for budget in (8.0, 6.0, 4.0, 3.0, 2.0):
        choice, _ = search(rows, budget)
        feasible = [
            c
            for c in itertools.product(range(3), repeat=2)
            if sum(r.candidates[j].latency_ms for r, j in zip(rows, c, strict=True)) <= budget
        ]
        best = min(sum(r.candidates[j].error ** 2 for r, j in zip(rows, c, strict=True)) for c in feasible)
        got = sum(r.candidates[j].error ** 2 for r, j in zip(rows, choice, strict=True))
        assert sum(r.candidates[j].latency_ms for r, j in zip(rows, choice, strict=True)) <= budget
        assert got == pytest.approx(best), budget


def test_search_matches_brute_force_on_random_cases() -> None:
    rng = torch.Generator().manual_seed(0)
    for _ in range(50):
        rows = [
            row(
                str(i),
                (6.0, 0.0),
                *(
                    (float(torch.randint(1, 7, (1,), generator=rng)), float(torch.rand(1, generator=rng)))
                    for _ in range(3)
                ),
            )
            for i in range(3)
        ]
        budget = float(torch.randint(3, 19, (1,), generator=rng))
        choice, _ = search(rows, budget)
        plans = [c for c in itertools.product(range(4), repeat=3) if _ms(rows, c) <= budget]
        if plans:
            assert _ms(rows, choice) <= budget
            assert _err(rows, choice) == pytest.approx(min(_err(rows, c) for c in plans))


def _ms(rows: list[AutoLayer], choice) -> float:
    return sum(r.candidates[j].latency_ms for r, j in zip(rows, choice, strict=True))


def _err(rows: list[AutoLayer], choice) -> float:
    return sum(r.candidates[j].error ** 2 for r, j in zip(rows, choice, strict=True))


def test_search_spends_the_budget_the_convex_hull_leaves() -> None:
    # the hull jumps from all-keep (8 ms) to a@2ms+b@1ms (3 ms); with 6 ms, keeping b and factorizing a fits
    rows = [row("a", (4.0, 0.0), (2.0, 0.5)), row("b", (4.0, 0.0), (1.0, 0.6))]
    choice, _ = search(rows, budget_ms=6.0)
    assert choice == [1, 0]


def test_search_out_of_reach_takes_the_fastest_plan_and_keeps_a_keep_that_is_fastest() -> None:
    rows = [row("slow-factorized", (1.0, 0.0), (2.0, 0.1)), row("b", (4.0, 0.0), (3.0, 0.2))]
    choice, frontier = search(rows, budget_ms=1.0)
    assert choice == [0, 1]  # keep where factorizing is slower, whatever the budget
    assert frontier[0][0] == pytest.approx(4.0)


def test_shortlist_has_fewer_macs_and_no_dominated_form() -> None:
    torch.manual_seed(0)
    conv3, conv1 = layers_of(nn.Sequential(nn.Conv2d(16, 32, 3), nn.Conv2d(32, 64, 1)).eval(), torch.randn(1, 16, 8, 8))
    for layer in (conv3, conv1):
        spec = layer.spec
        dense = spec.out_channels * spec.in_channels * math.prod(spec.kernel)
        svds: dict[int, tuple] = {}
        plans = shortlist(layer, 50, svds)
        assert plans, layer.name
        costs = [
            p.rank * spec.in_channels * math.prod(spec.kernel) + p.groups * p.rank * spec.out_channels for p in plans
        ]
        assert all(c < dense for c in costs)
        errors = [
            float(svds[p.groups][1][:, p.rank :].square().sum() / svds[p.groups][1].square().sum()) for p in plans
        ]
        assert all(b < a for a, b in itertools.pairwise(errors)), "more MACs must buy less error"
        assert set(svds) >= {p.groups for p in plans}
    assert any(p.groups == 16 for p in shortlist(conv3, 50, {}))  # depthwise-separable is a candidate
    assert all(p.groups < 32 for p in shortlist(conv1, 50, {}))  # separable 1x1 never has fewer MACs


def test_layer_error_is_zero_at_full_rank_and_matches_the_converted_layer() -> None:
    model, x = small_net(), torch.randn(1, 8, 12, 12)
    layer = layers_of(model, x)[1]
    inner = model[0:2](x)
    exact = full_rank(32, 32, 9, 4)
    assert layer_error(layer, replacement(layer, LayerPlan(4, exact, True, exact), inner, None), inner) < 1e-5
    plan = LayerPlan(32, 1, True, 9)
    error = layer_error(layer, replacement(layer, plan, inner, group_svd(layer.weight, 32)), inner)
    converted = convert_model(model[0:3], x, ConvertConfig(target="auto"), plans={"0": "kept", "2": plan}).model
    reference = model[0:3](x)
    assert error == pytest.approx(float((converted(x) - reference).norm() / reference.norm()), rel=1e-4)


def test_model_error_of_a_candidate_is_the_error_of_the_model_converted_at_that_layer_alone(tmp_path: Path) -> None:
    model, x = small_net(), torch.randn(1, 8, 16, 16)
    plan = plan_for_speed(model, x, AutoConfig(target_speedup=1.5, cache_dir=str(tmp_path), **FAST))
    layer = plan.report.layers[1]
    for candidate in layer.candidates[1:]:
        only = LayerPlan(candidate.groups, candidate.rank, True, 0)
        result = convert_model(model, x, ConvertConfig(target="auto"), plans={layer.name: only})
        assert candidate.output_error == pytest.approx(result.report.output_rel_error, rel=1e-4, abs=1e-7)
        assert candidate.output_error > 0


def test_plan_converts_the_chosen_layers_and_the_cache_makes_a_second_run_measure_nothing(tmp_path: Path) -> None:
    model, x = small_net(), torch.randn(1, 8, 16, 16)
    config = AutoConfig(target_speedup=1.5, cache_dir=str(tmp_path / "cache"), **FAST)
    first = plan_for_speed(model, x, config)
    assert first.report.measured > 0
    assert [layer.name for layer in first.report.layers] == ["0", "2", "4"]
    second = plan_for_speed(model, x, config)
    assert second.report.measured == 0  # layers and the end-to-end fit alike: the same plan, for the same reasons
    assert second.report.cached == first.report.measured + first.report.cached
    assert (second.report.baseline_ms, second.report.fastest_ms) == (first.report.baseline_ms, first.report.fastest_ms)
    assert [r.chosen for r in second.report.layers] == [r.chosen for r in first.report.layers]
    for layer in first.report.layers:
        assert layer.candidates[0].label == "keep" and layer.candidates[0].error == 0
        assert all(c.latency_ms > 0 for c in layer.candidates)
    result = convert_model(model, x, ConvertConfig(target="auto"), plans=first.plans)
    for report_row in result.report.layers:
        plan = first.plans[report_row.name]
        assert (report_row.status == "converted") == isinstance(plan, LayerPlan)
        if isinstance(plan, LayerPlan):
            assert (report_row.groups, report_row.rank) == (plan.groups, plan.rank)
        else:
            assert report_row.reason == plan
    assert first.report.predicted_ms == pytest.approx(
        first.report.fixed_ms + first.report.scale * sum(r.candidates[r.chosen].latency_ms for r in first.report.layers)
    )


def test_target_auto_plans_with_the_latency_planner_and_traces_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import convert.surgery.analysis as analysis

    traces = []
    real_trace = analysis.trace
    monkeypatch.setattr(analysis, "trace", lambda *args, **kw: traces.append(1) or real_trace(*args, **kw))
    model, x = small_net(), torch.randn(1, 8, 8, 8)
    planner = LatencyPlanner(AutoConfig(target_speedup=1.2, **FAST))
    result = convert_model(model, x, ConvertConfig(target="auto"), planner=planner)
    assert len(traces) == 1  # the planner measures on the analysis it is given, and builds its fastest plan from it
    assert result.report.auto is not None and [r.name for r in result.report.auto.layers] == ["0", "2", "4"]
    chosen = {r.name: r.candidates[r.chosen] for r in result.report.auto.layers}
    for row in result.report.layers:
        assert (row.status == "converted") == (chosen[row.name].label != "keep")
    with pytest.raises(ConvertError, match="either a `planner` or `plans`"):
        convert_model(model, x, ConvertConfig(target="auto"), planner=planner, plans={})


def test_auto_refuses_manual_ranks() -> None:
    with pytest.raises(ConvertError, match="`target`=auto chooses"):
        ConvertConfig(target="auto", rank=2)
    with pytest.raises(ConvertError, match="target speedup"):
        AutoConfig(target_speedup=0.5)


TINY = textwrap.dedent(
    """
    import torch
    from torch import nn


    def build():
        torch.manual_seed(0)  # the same weights, so the same shortlist, on both runs
        return nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1))
    """
)


def test_cli_auto_writes_the_plan_report_and_plot(tmp_path: Path) -> None:
    (tmp_path / "tiny.py").write_text(TINY)
    args = ["tiny:build", "--to", "auto", "--input-shape", "1,8,16,16", "--target-speedup", "1.2"]
    args += ["--runs", "5", "--warmup", "1", "--threads", "1", "--device", "cpu", "--cache-dir", "cache"]
    result = ok(run(tmp_path, *args, "-o", "out"))
    assert "--to auto: target 1.2x, predicted" in result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["target"] == "auto"
    assert report["auto"]["measured"] > 0 and report["benchmark"]["speedup"]
    assert (tmp_path / "out" / "auto.png").stat().st_size > 0
    assert "Latency-aware plan" in (tmp_path / "out" / "report.md").read_text()
    ok(run(tmp_path, *args, "-o", "out2"))
    assert json.loads((tmp_path / "out2" / "report.json").read_text())["auto"]["measured"] == 0


def test_cli_auto_options_without_auto_are_refused(tmp_path: Path) -> None:
    (tmp_path / "tiny.py").write_text(TINY)
    result = run(tmp_path, "tiny:build", "--target-speedup", "3", "--input-shape", "1,8,16,16", "-o", "out")
    assert result.returncode == 2 and "--target-speedup goes with --to auto" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_cli_auto_refuses_a_manual_rank(tmp_path: Path) -> None:
    (tmp_path / "tiny.py").write_text(TINY)
    result = run(tmp_path, "tiny:build", "--to", "auto", "--rank", "2", "--input-shape", "1,8,16,16", "-o", "out")
    assert result.returncode == 2 and "--to auto chooses" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_calibrated_plan_measures_its_candidates_on_the_calibration_inputs_with_whitened_factors(
    tmp_path: Path,
) -> None:
    model, x = small_net(), torch.randn(1, 8, 12, 12)
    g = torch.Generator().manual_seed(0)  # 8 channels mixed from 2 signals: the patch covariance is far from white
    mix, signal = torch.randn(8, 2, generator=g), torch.randn(32, 2, 12, 12, generator=g)
    real = torch.einsum("cs,nshw->nchw", mix, signal) + 0.05 * torch.randn(32, 8, 12, 12, generator=g)
    planner = LatencyPlanner(AutoConfig(target_speedup=1.5, cache_dir=str(tmp_path), **FAST))
    calibration = CalibrationConfig(real, batch_size=16)
    auto = convert_model(model, x, ConvertConfig(target="auto"), planner=planner, calibration=calibration).report.auto
    assert auto.errors_on == "the first 16 calibration inputs (32 inputs from tensors in memory), whitened factors"
    layers = {layer.name: layer for layer in layers_of(model, x)}
    inputs = {"0": real[:16], "2": model[0:2](real[:16]).detach(), "4": model[0:4](real[:16]).detach()}
    whitened_total = svd_total = 0.0
    for row in auto.layers:
        layer, inner = layers[row.name], inputs[row.name]
        for candidate in row.candidates[1:]:
            plan = LayerPlan(candidate.groups, candidate.rank, True, 0)
            whitened = replacement(layer, plan, inner, None, whitening(layer, plan.groups, [inner]))
            assert candidate.error == pytest.approx(layer_error(layer, whitened, inner), rel=1e-5)
            whitened_total += candidate.error
            svd = replacement(layer, plan, inner, group_svd(layer.weight, plan.groups))
            svd_total += layer_error(layer, svd, inner)
    assert whitened_total < 0.85 * svd_total  # the weight SVD's factors lose more on the same real inputs
