"""The serving surface without an engine: flags, per-request refusal, eviction counts, stats."""

from __future__ import annotations

import argparse

import pytest
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.openai.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.v1.engine import EngineCoreOutputs
from vllm.v1.metrics.stats import SchedulerStats
from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

import vllm_tova
from vllm_tova.config import TovaConfig
from vllm_tova.metrics.stats import (
    EvictionCounter,
    blocks_by_class,
    TovaEngineCoreOutputs,
    TovaSchedulerStats,
    TovaStats,
    evicted_per_layer,
)
from vllm_tova.request_params import check_extra_args, row_budget


def _serve_parser() -> FlexibleArgumentParser:
    vllm_tova.register()
    return make_arg_parser(FlexibleArgumentParser())


def test_serve_parser_has_the_flags_and_maps_them_onto_additional_config() -> None:
    parser = _serve_parser()
    help_text = parser.format_help()
    assert "TovaConfig" in help_text
    args = parser.parse_args(["--kv-policy", "tova", "--kv-budget", "512", "--kv-prefill-chunk", "256"])
    engine_args = AsyncEngineArgs.from_cli_args(args)
    assert engine_args.additional_config == {"kv_policy": "tova", "kv_budget": 512, "kv_prefill_chunk": 256}
    # Without the flags nothing changes: stock vLLM.
    assert AsyncEngineArgs.from_cli_args(parser.parse_args([])).additional_config == {}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--kv-budget", "0"], "argument --kv-budget: must be an integer >= 1, got 0"),
        (["--kv-budget", "1.5"], "argument --kv-budget: must be an integer >= 1, got '1.5'"),
        (["--kv-prefill-chunk", "-4"], "argument --kv-prefill-chunk: must be an integer >= 1, got -4"),
        (["--kv-policy", "lru"], "argument --kv-policy: invalid choice: 'lru'"),
    ],
)
def test_bad_flag_values_stop_argparse(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _serve_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--kv-budget", "128"], r"--kv-budget take effect only with an eviction policy; add --kv-policy"),
        (
            ["--kv-policy", "tova", "--kv-budget", "128", "--additional-config", '{"kv_budget": 64}'],
            r"--kv-budget 128 conflicts with --additional-config kv_budget=64",
        ),
    ],
)
def test_inconsistent_flags_are_refused(argv, message) -> None:
    args = _serve_parser().parse_args(argv)
    with pytest.raises(ValueError, match=message):
        AsyncEngineArgs.from_cli_args(args)


def test_flags_agreeing_with_additional_config_are_accepted() -> None:
    argv = ["--kv-policy", "tova", "--additional-config", '{"kv_policy": "tova", "kv_budget": 64}']
    engine_args = AsyncEngineArgs.from_cli_args(_serve_parser().parse_args(argv))
    assert engine_args.additional_config == {"kv_policy": "tova", "kv_budget": 64}


def test_per_request_settings_within_the_server_limits() -> None:
    """Each refusal names the key, the limit and the flag that moves it."""
    settings = TovaConfig.from_additional_config({"kv_policy": "tova", "kv_budget": 128, "kv_budget_max": 512})
    check = lambda extra, s=settings: check_extra_args(extra, s, 32, 2048)  # noqa: E731
    check(None)
    check({"kv_budget": 128, "kv_policy": "tova", "other_key": 1})
    check({"kv_budget": 32})
    check({"kv_budget": 512})
    with pytest.raises(ValueError, match=r"'kv_budget'=544 exceeds this server's maximum --kv-budget-max / kv_budget_max=512; allowed: 32 <= kv_budget <= 512"):
        check({"kv_budget": 544})
    with pytest.raises(ValueError, match=r"'kv_budget'=100 is not a multiple of the KV block size 32.*e.g. kv_budget 96 or 128"):
        check({"kv_budget": 100})
    with pytest.raises(ValueError, match=r"'kv_budget'=16 is smaller than the KV block size 32"):
        check({"kv_budget": 16})
    with pytest.raises(ValueError, match=r"'kv_budget'='64' must be an integer"):
        check({"kv_budget": "64"})
    with pytest.raises(ValueError, match=r"'kv_policy'='h2o' is not allowed.*start a server with --kv-policy h2o"):
        check({"kv_policy": "h2o"})
    with pytest.raises(ValueError, match=r"'kv_policy'='none' .* needs room for a whole 2048-token sequence.*--kv-budget-max 2048"):
        check({"kv_policy": "none"})
    roomy = TovaConfig.from_additional_config({"kv_policy": "tova", "kv_budget": 128, "kv_budget_max": 2048})
    check({"kv_policy": "none"}, roomy)
    with pytest.raises(ValueError, match=r"'kv_policy'='none' and 'kv_budget' contradict"):
        check({"kv_policy": "none", "kv_budget": 64}, roomy)
    with pytest.raises(ValueError, match=r"'kv_prefill_chunk'=128 is not supported per request"):
        check({"kv_prefill_chunk": 128})
    with pytest.raises(ValueError, match=r"this server runs no KV eviction policy"):
        check({"kv_budget": 64}, TovaConfig())


def test_request_budget_resolution() -> None:
    settings = TovaConfig.from_additional_config({"kv_policy": "tova", "kv_budget": 128, "kv_budget_max": 2048})
    assert row_budget(None, settings, 2048) == 128
    assert row_budget({"kv_budget": 64}, settings, 2048) == 64
    assert row_budget({"kv_policy": "none"}, settings, 2048) == 2048
    assert row_budget({"kv_policy": "tova"}, settings, 2048) == 128
    with pytest.raises(ValueError, match=r"--kv-budget-max / kv_budget_max=64 is below --kv-budget / kv_budget=128"):
        TovaConfig.from_additional_config({"kv_policy": "tova", "kv_budget": 128, "kv_budget_max": 64})
    assert blocks_by_class({"a": 2, "b": 3, "c": 64}, {"a": 64, "b": 64, "c": 2048}, 2048) == {"64": 5, "none": 64}


def test_evictions_follow_tokens_absorbed_versus_budget() -> None:
    assert evicted_per_layer(0, 100, 128) == 0  # prompt chunk below K
    assert evicted_per_layer(100, 100, 128) == 72  # chunk crosses K: 200 -> 128
    assert evicted_per_layer(128, 1, 128) == 1  # decode at K
    assert evicted_per_layer(500, 256, 128) == 256  # a later chunk: all of it is trimmed
    counter = EvictionCounter(num_layers=30)
    absorbed = 0
    for n in [256, 256, 100] + [1] * 15:  # a 612-token prompt in chunks of 256, 15 decode steps
        counter.observe({"r": n}, {"r": absorbed}, {"r": 128})
        absorbed += n
    assert counter.total == 30 * (absorbed - 128)


def test_stats_survive_the_engine_to_front_end_wire_format() -> None:
    base = SchedulerStats(num_running_reqs=3, kv_cache_usage=0.5)
    tova = TovaStats(evicted_tokens_total=900, running_sequences=3, kv_blocks_held=12, kv_block_cap=4)
    frames = MsgpackEncoder().encode(EngineCoreOutputs(scheduler_stats=TovaSchedulerStats.extend(base, tova)))
    decoded = MsgpackDecoder(TovaEngineCoreOutputs).decode(frames)
    assert decoded.scheduler_stats.tova == tova
    assert decoded.scheduler_stats.num_running_reqs == 3
    assert decoded.scheduler_stats.tova.kv_blocks_per_sequence == 4.0
    # vLLM's stock decoder drops the field: the reason for patch 5.
    assert not hasattr(MsgpackDecoder(EngineCoreOutputs).decode(frames).scheduler_stats, "tova")


def test_core_client_decodes_with_the_tova_outputs_type() -> None:
    from vllm.v1.engine import core_client

    vllm_tova.register()
    assert core_client.EngineCoreOutputs is TovaEngineCoreOutputs


def test_serve_parser_is_built_by_async_engine_args(monkeypatch) -> None:
    """The flags come through vLLM's own path: AsyncEngineArgs.add_cli_args loads plugins."""
    parser = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())
    actions = {a.dest: a for a in parser._actions}
    assert actions["kv_policy"].choices[0] == "none"
    assert isinstance(actions["kv_budget"], argparse.Action)


def test_stat_logger_turns_cumulative_stats_into_prometheus_series(model_path) -> None:
    from prometheus_client import REGISTRY
    from vllm.engine.arg_utils import EngineArgs

    from tests.conftest import tova as tova_config
    from vllm_tova.metrics.loggers import TovaStatLogger

    vllm_tova.register()
    config = EngineArgs(
        model=str(model_path), block_size=32, max_model_len=2048, additional_config=tova_config(96, 256)
    ).create_engine_config()
    stat_logger = TovaStatLogger(config, engine_index=7)
    labels = {"model_name": str(model_path), "engine": "7", "policy": "tova", "budget": "96"}

    def sample(name: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    for total, running, held in [(300, 2, 6), (300, 2, 6), (1200, 3, 9)]:
        stats = TovaSchedulerStats.extend(SchedulerStats(), TovaStats(total, running, held, 3))
        stat_logger.record(stats, None)
    assert sample("vllm_tova:evicted_tokens_total") == 1200  # cumulative totals are not re-added
    assert sample("vllm_tova:running_sequences") == 3
    assert sample("vllm_tova:kv_blocks_per_sequence") == 3.0
    assert sample("vllm_tova:kv_block_cap") == 3
    stat_logger.record(SchedulerStats(), None)  # stats without the TOVA field change nothing
    assert sample("vllm_tova:evicted_tokens_total") == 1200
