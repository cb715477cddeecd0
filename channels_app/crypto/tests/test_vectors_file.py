"""The published vectors live in the repository, each with its source, so a fresh clone
runs the vector tests with nothing beside it."""

from __future__ import annotations

import json

from django.conf import settings

from channels_app.crypto.tests.vectors import VECTORS_PATH


def test_the_vectors_are_inside_the_repository():
    assert VECTORS_PATH.is_relative_to(settings.BASE_DIR)
    assert VECTORS_PATH.is_file()


def test_every_vector_names_its_source_here_and_in_the_readme():
    entries = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    readme = (VECTORS_PATH.parent / "README.md").read_text(encoding="utf-8")
    assert entries
    for entry in entries:
        assert {"id", "platform", "kind", "inputs", "expected", "source"} <= set(entry), entry["id"]
        assert entry["source"].strip(), entry["id"]
        assert f"| {entry['id']} | {entry['platform']} | {entry['kind']} |" in readme
