"""The public API of elink_sdk is exactly ``__all__``, and every part of it is
documented: a docstring of its own, and a mention in docs/sdk.md (after
Trio's test_exports)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import elink_sdk

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "sdk.md"


def public_modules() -> list[ModuleType]:
    """elink_sdk and its public submodules (blocking, bots, cli... once they exist)."""
    modules = [elink_sdk]
    for info in pkgutil.iter_modules(elink_sdk.__path__):
        if not info.name.startswith("_"):
            modules.append(importlib.import_module(f"elink_sdk.{info.name}"))
    return modules


def exported() -> list[tuple[str, object]]:
    return [(name, getattr(elink_sdk, name)) for name in elink_sdk.__all__]


def test_all_names_exist_and_are_public() -> None:
    for module in public_modules():
        names = getattr(module, "__all__", None)
        assert names is not None, f"{module.__name__} has no __all__"
        assert len(names) == len(set(names)), module.__name__
        for name in names:
            assert hasattr(module, name), f"{module.__name__}.{name}"
            assert not name.startswith("_"), f"{module.__name__}.{name}"


def test_everything_public_is_exported() -> None:
    public = {
        name
        for name, value in vars(elink_sdk).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert public == set(elink_sdk.__all__)


def test_the_core_api_is_there() -> None:
    for name in (
        "connect",
        "Client",
        "SentMessage",
        "MessageReceived",
        "ElinkError",
        "ServerKeyMismatch",
        "ServerTrust",
    ):
        assert name in elink_sdk.__all__


def test_every_exported_class_and_function_has_its_own_docstring() -> None:
    for name, value in exported():
        if inspect.isclass(value):
            assert (vars(value).get("__doc__") or "").strip(), name
        elif callable(value):
            assert (value.__doc__ or "").strip(), name


def undocumented_members() -> list[str]:
    """Public methods and properties of the SDK's own classes without a docstring."""
    missing = []
    for name, value in exported():
        if not inspect.isclass(value) or not value.__module__.startswith("elink_sdk"):
            continue
        for attr, member in vars(value).items():
            if attr.startswith("_"):
                continue
            function = member.fget if isinstance(member, property) else member
            function = getattr(function, "__func__", function)
            if inspect.isfunction(function) and not (function.__doc__ or "").strip():
                missing.append(f"{name}.{attr}")
    return missing


def test_every_public_method_has_a_docstring() -> None:
    assert undocumented_members() == []


def test_every_exported_name_is_in_the_guide() -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    missing = [name for name, _ in exported() if not re.search(rf"\b{re.escape(name)}\b", guide)]
    assert missing == [], f"not mentioned in docs/sdk.md: {missing}"
