"""Which adapter serves which platform. Each folder under channels_app/adapters/ holds
an `adapter` module whose class is decorated with @register; they are all imported once
at start-up, so adding a platform is adding a folder."""

from __future__ import annotations

import importlib
import pkgutil

from channels_app.base import Adapter

_ADAPTERS: dict[str, type[Adapter]] = {}


class DuplicateAdapter(Exception):
    pass


def register(cls: type[Adapter]) -> type[Adapter]:
    existing = _ADAPTERS.get(cls.platform)
    if existing is not None and existing is not cls:
        raise DuplicateAdapter(f"{cls.platform} is served by {existing.__module__} already")
    _ADAPTERS[cls.platform] = cls
    return cls


def adapter_for(platform: str) -> type[Adapter] | None:
    return _ADAPTERS.get(platform)


def registered() -> dict[str, type[Adapter]]:
    return dict(_ADAPTERS)


def load_adapters() -> None:
    from channels_app import adapters

    for module in pkgutil.iter_modules(adapters.__path__):
        if module.ispkg:
            importlib.import_module(f"{adapters.__name__}.{module.name}.adapter")
