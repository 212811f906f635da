"""benchmarks.host_install: the metadata it writes for an offline GPU host gives vLLM the same
plugin entry points as the pip-installed package."""

from __future__ import annotations

from importlib.metadata import distribution, distributions
from pathlib import Path

from benchmarks.host_install import write_metadata
from vllm_tova import install_check


def test_host_metadata_matches_the_installed_entry_points(tmp_path: Path) -> None:
    (tmp_path / "vllm_tova-0.0.1.dist-info").mkdir()  # an older shim: replaced, not doubled
    write_metadata(tmp_path)
    found = list(distributions(path=[str(tmp_path)]))
    assert [d.metadata["Name"] for d in found] == ["vllm-tova"]
    written = {(ep.group, ep.name, ep.value) for ep in found[0].entry_points}
    assert ("vllm.general_plugins", "tova", "vllm_tova:register") in written
    # install_check spells the entry point out (a wheel carries no setup.py): keep it in step.
    assert (install_check.PLUGIN_GROUP, install_check.PLUGIN_NAME, install_check.PLUGIN_TARGET) in written
    assert written == {(ep.group, ep.name, ep.value) for ep in distribution("vllm-tova").entry_points}
    assert found[0].version == distribution("vllm-tova").version
