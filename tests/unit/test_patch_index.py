"""patches/README.md against the code: every vLLM symbol the plugin patches, subclasses,
overrides or reads privately is indexed, and every indexed symbol is one of them.

No engine: the symbols are collected by importing every ``vllm_tova`` module, walking its
classes' MROs and reading its source for private attributes of vLLM objects.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import vllm_tova
from vllm_tova import patches
from vllm_tova.patches import overrides, wrap

ROOT = Path(__file__).resolve().parents[2]
INDEX = ROOT / "patches" / "README.md"


def _is_vllm(name: str) -> bool:
    return name == "vllm" or name.startswith("vllm.")


def _owner_name(obj: Any) -> str:
    return obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", "") or ""


def _path(obj: Any) -> str:
    if inspect.ismodule(obj):
        return obj.__name__
    cls = obj if inspect.isclass(obj) else type(obj)  # an instance such as current_platform
    return f"{cls.__module__}.{cls.__qualname__}"


def plugin_modules() -> list[ModuleType]:
    names = [m.name for m in pkgutil.walk_packages(vllm_tova.__path__, "vllm_tova.")]
    return [importlib.import_module(name) for name in ["vllm_tova", *names]]


def plugin_classes() -> list[type]:
    return [
        cls
        for module in plugin_modules()
        for cls in vars(module).values()
        if inspect.isclass(cls) and cls.__module__ == module.__name__
    ]


def subclassed() -> set[str]:
    """vLLM classes a vllm_tova class names as a direct base."""
    return {_path(b) for cls in plugin_classes() for b in cls.__bases__ if _is_vllm(b.__module__)}


def overridden() -> set[str]:
    """vLLM members (methods, attributes, msgspec fields) that vllm_tova classes redefine;
    abstract methods (the interface vLLM asks for) and Python's own dunders are left out."""
    found = set()
    for cls in plugin_classes():
        mro = cls.__mro__
        ours = [c for c in mro if c.__module__.startswith("vllm_tova")]
        theirs = [c for c in mro if _is_vllm(c.__module__)]
        names = {n for c in ours for n in (*vars(c), *getattr(c, "__annotations__", {}))}
        for name in names:
            if name.startswith("__") or name == "_abc_impl":
                continue
            for base in theirs:
                declared = {*vars(base), *getattr(base, "__annotations__", {})}
                if name in declared:
                    if not getattr(vars(base).get(name), "__isabstractmethod__", False):
                        found.add(f"{_path(base)}.{name}")
                    break
    return found


def _chain(node: ast.AST) -> list[str] | None:
    """``a.b.c`` -> ["a", "b", "c"]; None for anything but names and attributes."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def _vllm_targets(module: ModuleType) -> list[tuple[str, Any, str, ast.AST]]:
    """Every ``X.attr`` in the module's source whose ``X`` is a vLLM object:
    (kind, owner, attr, node) with kind "read" or "write" (assignment or setattr)."""
    tree = ast.parse(Path(module.__file__).read_text())
    writes = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            writes.update(id(t) for t in targets)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr" and node.args:
            writes.add(id(node.args[0]))
    found = []
    for node in ast.walk(tree):
        chain = _chain(node)
        if not chain or len(chain) < 2 or chain[0] not in vars(module):
            continue
        owner = vars(module)[chain[0]]
        for part in chain[1:-1]:
            owner = getattr(owner, part, None)
        if owner is not None and _is_vllm(_owner_name(owner)):
            found.append(("write" if id(node) in writes else "read", owner, chain[-1], node))
    for node in ast.walk(tree):  # setattr(vllm_object, ...)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Name) and _is_vllm(_owner_name(vars(module).get(arg.id))):
                found.append(("write", vars(module)[arg.id], "?", arg))
    return found


def private_reads() -> set[str]:
    return {
        f"{_path(owner)}.{attr}"
        for module in plugin_modules()
        for kind, owner, attr, _ in _vllm_targets(module)
        if kind == "read" and attr.startswith("_") and not attr.startswith("__")
    }


def indexed() -> set[str]:
    """Symbols named in the index's ``###`` headings (``.member`` joins the heading's first)."""
    symbols = set()
    for line in INDEX.read_text().splitlines():
        if not line.startswith("### "):
            continue
        names = re.findall(r"`([^`]+)`", line)
        assert names and _is_vllm(names[0]), f"index heading without a vLLM symbol: {line!r}"
        symbols.update(names[0] + n if n.startswith(".") else n for n in names)
    return symbols


def test_index_matches_the_code() -> None:
    patches.apply_all()
    code = set(wrap.APPLIED) | subclassed() | overridden() | private_reads()
    index = indexed()
    assert not code - index, f"patched/subclassed/overridden/private but not in patches/README.md: {sorted(code - index)}"
    assert not index - code, f"in patches/README.md but not in the code: {sorted(index - code)}"


def test_every_override_and_private_read_has_its_signature_checked() -> None:
    assert set(overrides.OVERRIDDEN) == overridden()
    assert set(overrides.PRIVATE_CALLS) == private_reads()
    overrides.check()  # the installed vLLM matches every one of them


def test_patches_go_through_wrap() -> None:
    """Only ``wrap`` assigns to vLLM objects, so every patch is signature-checked and indexed."""
    direct = [
        f"{module.__name__}:{node.lineno} {_path(owner)}.{attr}"
        for module in plugin_modules()
        if module.__name__ != wrap.__name__
        for kind, owner, attr, node in _vllm_targets(module)
        if kind == "write"
    ]
    assert not direct, f"vLLM changed outside patches/wrap.py: {direct}"


def test_wrap_checks_the_signature_keeps_the_kind_and_applies_once() -> None:
    class Target:
        def method(self, a, b=1):
            return ("method", a, b)

        @classmethod
        def klass(cls, a):
            return ("klass", cls.__name__, a)

        @staticmethod
        def static(a):
            return ("static", a)

    with pytest.raises(RuntimeError, match=r"Target\.method\(self, a, b=2\).*\(self, a, b=1\)"):
        wrap.wrap(Target, "method", "(self, a, b=2)", lambda original, *args: original(*args))
    for _ in range(2):  # the second round changes nothing
        wrap.wrap(Target, "method", "(self, a, b=1)", lambda original, *a: ("wrapped", original(*a)))
        wrap.wrap(Target, "klass", "(cls, a)", lambda original, *a: ("wrapped", original(*a)))
        wrap.wrap(Target, "static", "(a)", lambda original, *a: ("wrapped", original(*a)))
    assert Target().method(3) == ("wrapped", ("method", 3, 1))
    assert Target.klass(4) == ("wrapped", ("klass", "Target", 4))
    assert Target.static(5) == ("wrapped", ("static", 5))
    for name in ("method", "klass", "static"):
        wrap.APPLIED.pop(wrap.symbol(Target, name))
