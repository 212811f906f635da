"""The mixed-budget benchmark's workload and engine settings (no engine: the script's run is
recorded under benchmarks/results/mixed-budgets)."""

from __future__ import annotations

from benchmarks.mixed_budgets import _parse, engine_kwargs, is_short
from benchmarks.presets import resolve_model


def test_short_turns_are_the_asked_fraction_spread_over_the_set() -> None:
    flags = [is_short(i, 0.7) for i in range(20)]
    assert sum(flags) == 14
    # Spread, not bunched: long generations never run back to back at 30%.
    assert not any(not a and not b for a, b in zip(flags, flags[1:]))
    assert sum(is_short(i, 0.0) for i in range(10)) == 0 and all(is_short(i, 1.0) for i in range(10))


def test_only_the_mixed_engine_has_room_for_exact_requests() -> None:
    args = _parse(["--out", "x.json", "--budget", "64", "--max-model-len", "1024"])
    model = resolve_model("tiny-llama")
    assert "additional_config" not in engine_kwargs(args, "stock", model)
    tova = engine_kwargs(args, "tova", model)["additional_config"]
    assert tova["kv_budget"] == 64 and "kv_budget_max" not in tova
    assert engine_kwargs(args, "mixed", model)["additional_config"]["kv_budget_max"] == 1024
