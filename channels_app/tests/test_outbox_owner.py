"""The outbox has one owner: channels_app/outbox.py writes every status of a message row,
and routing, the dialog library, imports nothing from channels_app (the arrows between
the apps run channels_app → routing, never back)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(settings.BASE_DIR)
OWNER = ROOT / "channels_app" / "outbox.py"
# Model methods and queryset calls that write the fields named in their keywords.
WRITING_CALLS = {"update", "create", "get_or_create", "update_or_create", "bulk_create", "bulk_update"}


def project_modules(folder: Path) -> list[Path]:
    """The app code under folder: no tests, no migrations, no virtualenv."""
    return [
        path
        for path in sorted(folder.rglob("*.py"))
        if not {"tests", "migrations", ".venv"} & set(path.relative_to(ROOT).parts)
    ]


def imported_modules(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _assigned(target: ast.expr) -> list[ast.expr]:
    return (
        [element for item in target.elts for element in _assigned(item)] if isinstance(target, ast.Tuple) else [target]
    )


def _writes_status(node: ast.AST) -> bool:
    if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return any(isinstance(t, ast.Attribute) and t.attr == "status" for target in targets for t in _assigned(target))
    if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in WRITING_CALLS and any(keyword.arg == "status" for keyword in node.keywords):
            return True
        if name in ("quote", "quote_name"):  # a hand-built statement naming the column
            return any(isinstance(arg, ast.Constant) and arg.value == "status" for arg in node.args)
        fields = next((k.value for k in node.keywords if k.arg == "update_fields"), None)
        return fields is not None and any(isinstance(c, ast.Constant) and c.value == "status" for c in ast.walk(fields))
    return False


def status_writers(source: str, name: str) -> list[str]:
    """Where the module assigns a `status` attribute, passes `status=` to a writing
    call, saves "status" among update_fields, or quotes the column into SQL."""
    return [f"{name}:{node.lineno}" for node in ast.walk(ast.parse(source, name)) if _writes_status(node)]


def module_status_writers(path: Path) -> list[str]:
    return status_writers(path.read_text(), str(path.relative_to(ROOT)))


def test_routing_imports_nothing_from_channels_app():
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in project_modules(ROOT / "routing")
        for name in imported_modules(ast.parse(path.read_text(), str(path)))
        if name == "channels_app" or name.startswith("channels_app.")
    ]
    assert offenders == [], "routing is the dialog library; it must not import channels_app"


def test_only_the_outbox_writes_a_message_rows_status():
    assert module_status_writers(OWNER), "the scan finds nothing in the owner itself: it is broken"
    others = [where for path in project_modules(ROOT) if path != OWNER for where in module_status_writers(path)]
    assert others == [], "a message row's status changes only in channels_app/outbox.py"


@pytest.mark.parametrize(
    "line",
    [
        "row.status = MessageStatus.FAILED",
        "row.status, row.error = 'received', ''",
        "InboundMessage.objects.filter(pk=1).update(status='received')",
        "row.save(update_fields=['status', 'error'])",
        "sql = f'UPDATE t SET {quote(\"status\")} = %s'",
    ],
)
def test_the_scan_sees_each_way_of_writing_a_status(line):
    assert status_writers(line, "probe.py") == ["probe.py:1"]


def test_the_tasks_keep_the_names_an_earlier_release_queued_them_under():
    from channels_app.tasks import handle_message, sweep_outbox
    from config.celery import app

    # Messages already in the queue at an upgrade name the task as it was registered then.
    assert handle_message.name == "routing.tasks.handle_message"
    assert sweep_outbox.name == "routing.tasks.sweep_outbox"
    app.loader.import_default_modules()  # what a worker imports at start
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert scheduled <= set(app.tasks), "beat would queue a task no worker knows"
