"""Every platform adapter ships the same parts: its code, fixtures, tests and an admin
README, and it is registered. Adding a platform without them fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from channels_app import adapters
from channels_app.base import Adapter
from channels_app.registry import registered

ADAPTER_DIRS = sorted(
    p for p in Path(adapters.__file__).parent.iterdir() if p.is_dir() and (p / "__init__.py").exists()
)


def test_there_are_adapters():
    assert {p.name for p in ADAPTER_DIRS} >= {"wecom", "feishu"}


@pytest.mark.parametrize("folder", ADAPTER_DIRS, ids=lambda p: p.name)
def test_adapter_folder_has_every_part(folder: Path):
    assert (folder / "adapter.py").is_file()
    readme = folder / "README.md"
    assert readme.is_file() and len(readme.read_text()) > 500, "README.md should walk an admin through set-up"
    assert any((folder / "fixtures").iterdir()), "fixtures/ holds sample payloads from the platform's docs"
    tests = list((folder / "tests").glob("test_*.py"))
    assert tests and (folder / "tests" / "__init__.py").exists()


@pytest.mark.parametrize("folder", ADAPTER_DIRS, ids=lambda p: p.name)
def test_adapter_is_registered_under_its_folder_name(folder: Path):
    adapter = registered().get(folder.name)
    assert adapter is not None and issubclass(adapter, Adapter)
    assert adapter.__module__ == f"channels_app.adapters.{folder.name}.adapter"
    assert adapter.max_reply_length > 0 and adapter.length_unit in ("chars", "bytes")


def test_every_registered_platform_is_a_bot_platform():
    from bots.platforms import Platform

    assert set(registered()) <= set(Platform.values)
