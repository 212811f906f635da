"""The one way vllm-tova changes a vLLM symbol at run time, and the signature check behind it.

A vLLM release can keep a function's name while changing its parameters; a wrapper written
for the old ones would then pass wrong arguments or drop new ones without an error. So
every patch states the signature it was written against, and :func:`wrap` refuses (at
plugin load, naming the symbol) when vLLM's differs. Signatures are compared by parameter
names, kinds and defaults: annotations change spelling between releases without changing a
call. The plugin's subclasses check the vLLM methods they override the same way
(``overrides.py``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

#: Set on every wrapper, so a second ``apply`` in the same process changes nothing.
MARKER = "__vllm_tova_patch__"

#: Every symbol patched in this process -> the function or class that replaced it.
APPLIED: dict[str, Any] = {}


def symbol(owner: Any, name: str) -> str:
    """Dotted path of ``owner.name`` as the patch index spells it."""
    if inspect.ismodule(owner):
        return f"{owner.__name__}.{name}"
    return f"{owner.__module__}.{owner.__qualname__}.{name}"


def signature_text(func: Callable) -> str:
    """``func``'s signature without annotations, e.g. ``(self, request, n=0)``."""
    sig = inspect.signature(func)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def unwrap_descriptor(raw: Any) -> Callable:
    """The plain function under a staticmethod/classmethod (its first parameter is ``cls``)."""
    return raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw


def check_signature(owner: Any, name: str, expected: str) -> Any:
    """Return ``owner.name`` as stored (descriptor included) if its signature is ``expected``."""
    path = symbol(owner, name)
    try:
        raw = inspect.getattr_static(owner, name)
    except AttributeError:
        raise RuntimeError(f"vllm-tova needs {path}, which this vLLM does not have.") from None
    found = signature_text(unwrap_descriptor(raw))
    if found != expected:
        raise RuntimeError(
            f"vllm-tova was written against {path}{expected}, but this vLLM has {path}{found}; "
            "see patches/README.md for what the plugin relies on."
        )
    return raw


def wrap(owner: Any, name: str, expected: str, wrapper: Callable[..., Any]) -> None:
    """Replace the method ``owner.name`` by ``wrapper(original, *args, **kwargs)``, once.

    ``expected`` is the original's signature (``self`` or ``cls`` included); the descriptor
    kind (plain, staticmethod, classmethod) is kept.
    """
    raw = inspect.getattr_static(owner, name, None)
    if raw is not None and getattr(unwrap_descriptor(raw), MARKER, False):
        return
    original = unwrap_descriptor(check_signature(owner, name, expected))  # names a missing one

    @functools.wraps(original)
    def patched(*args: Any, **kwargs: Any) -> Any:
        return wrapper(original, *args, **kwargs)

    setattr(patched, MARKER, True)
    if isinstance(raw, (staticmethod, classmethod)):
        setattr(owner, name, type(raw)(patched))
    else:
        setattr(owner, name, patched)
    APPLIED[symbol(owner, name)] = patched


def replace_class(owner: Any, name: str, expected: str, subclass: type) -> None:
    """Rebind ``owner.name`` (a class) to ``subclass``, once; ``expected`` is the signature
    of the class it replaces (its constructor's fields)."""
    current = getattr(owner, name)
    if getattr(current, MARKER, False):
        return
    check_signature(owner, name, expected)
    if not issubclass(subclass, current):
        raise TypeError(f"{subclass.__qualname__} must subclass {symbol(owner, name)}")
    setattr(subclass, MARKER, True)
    setattr(owner, name, subclass)
    APPLIED[symbol(owner, name)] = subclass
