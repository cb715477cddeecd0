"""Config as code: `import_config` and `export_config` against the real database, through
the real commands (and once through `manage.py` in a child process)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from io import StringIO
from pathlib import Path

import pytest
from auditlog.models import LogEntry
from django.apps import apps
from django.core.management import CommandError, call_command
from django.db import connection

from bots.config_io import SECTIONS, secret_keys
from bots.models import AdminAccessRule, Bot
from routing.models import ModelBackend, RoutingRule

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "switchboard.example.json"
SALES_UUID = "0b6a3c1e-3f43-4c7e-9a55-6f1c2d7e8a90"
SECRETS = {
    "backends": {"deepseek": {"api_key": "sk-deepseek-7f3a9c1e"}},
    "bots": {
        "sales-bot": {
            "app_secret": "wecom-corp-secret-5b21",
            "token": "wecom-callback-token-88d0",
            "encoding_aes_key": "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
        },
        "support-bot": {"token": "123456:telegram-bot-token-c4e9"},
    },
}
ALL_SECRET_VALUES = [v for section in SECRETS.values() for entry in section.values() for v in entry.values()]


def full_config() -> dict:
    """Two backends, two bots on different platforms, bot and global rules, an access
    rule; every secret set. A fresh copy each time, so a test may edit it."""
    config = {
        "backends": [
            {
                "name": "deepseek",
                "kind": "openai",
                "base_url": "https://api.deepseek.com/v1",
                "model": "deepseek-chat",
                "timeout": 20,
                "max_tokens": 1024,
                "enabled": True,
            },
            {"name": "echo", "kind": "echo"},
        ],
        "bots": [
            {
                "name": "sales-bot",
                "platform": "wecom",
                "uuid": SALES_UUID,
                "app_id": "ww0001",
                "extra": {"agent_id": 1000002},
                "default_backend": "deepseek",
                "rate_limit_qps": 5,
                "allowed_ips": ["10.0.0.0/8", "203.0.113.7"],
                "system_prompt": "You sell.",
                "context_ttl": 600,
                "max_context_turns": 6,
                "require_mention_in_groups": False,
            },
            {
                "name": "support-bot",
                "platform": "telegram",
                "extra": {"bot_username": "support_bot"},
                "default_backend": "echo",
            },
        ],
        "rules": [
            {"bot": "sales-bot", "priority": 10, "match": "keyword", "pattern": "refund", "backend": "echo"},
            {
                "bot": "sales-bot",
                "priority": 20,
                "match": "regex",
                "pattern": r"^/debug\b",
                "backend": "echo",
                "enabled": False,
            },
            {"bot": None, "priority": 100, "match": "always", "backend": "deepseek", "fallback_backend": "echo"},
        ],
        "admin_access_rules": [{"cidr": "192.0.2.0/24", "description": "office VPN"}],
    }
    for section, by_name in SECRETS.items():
        for entry in config[section]:
            entry.update(by_name.get(entry["name"], {}))
    return copy.deepcopy(config)


def write(tmp_path: Path, document: object, name: str = "switchboard.json") -> str:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document, indent=2))
    return str(path)


def run(command: str, *args: str, **options) -> tuple[str, str]:
    stdout, stderr = StringIO(), StringIO()
    call_command(command, *args, stdout=stdout, stderr=stderr, **options)
    return stdout.getvalue(), stderr.getvalue()


def statuses(output: str) -> dict[str, str]:
    """`backend "echo": unchanged` lines, as {'backend "echo"': 'unchanged'}."""
    return dict(re.findall(r"^(\w[\w ]*? \S.*?): (created|updated|unchanged|deleted)\b", output, re.MULTILINE))


def database_state() -> dict[str, object]:
    """Row counts of every model, plus every value of the models an import writes."""
    state: dict[str, object] = {m._meta.label: m._default_manager.count() for m in apps.get_models()}
    for model in (ModelBackend, Bot, RoutingRule, AdminAccessRule):
        state[f"{model._meta.label} rows"] = sorted(map(repr, model.objects.values_list()))
    return state


@pytest.fixture
def imported(db, tmp_path) -> str:
    """The full config, imported once; returns the file's path."""
    path = write(tmp_path, full_config(), "initial.json")
    run("import_config", path)
    return path


def test_full_import_creates_everything_with_encrypted_secrets(db, tmp_path):
    out, _ = run("import_config", write(tmp_path, full_config()))

    assert set(statuses(out).values()) == {"created"} and len(statuses(out)) == 8
    sales = Bot.objects.get(name="sales-bot")
    assert str(sales.uuid) == SALES_UUID
    assert f"callback URL /callback/wecom/{SALES_UUID}/" in out
    assert sales.extra == {"agent_id": 1000002} and sales.allowed_ips == ["10.0.0.0/8", "203.0.113.7"]
    assert (sales.default_backend.name, sales.rate_limit_qps, sales.context_ttl) == ("deepseek", 5.0, 600)
    assert sales.require_mention_in_groups is False
    support = Bot.objects.get(name="support-bot")
    assert support.rate_limit_qps == 10.0 and support.allowed_ips == []  # model defaults
    assert f"callback URL /callback/telegram/{support.uuid}/" in out

    for name, secrets in SECRETS["bots"].items():
        bot = Bot.objects.get(name=name)
        for column, plain in secrets.items():
            assert getattr(bot, column) == plain
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT {column} FROM bots_bot WHERE id = %s", [bot.pk])  # noqa: S608
                stored = cursor.fetchone()[0]
            assert stored.startswith("sb1$") and plain not in stored
    assert ModelBackend.objects.get(name="deepseek").api_key == SECRETS["backends"]["deepseek"]["api_key"]

    rules = {(r.bot.name if r.bot else None, r.priority): r for r in RoutingRule.objects.all()}
    assert set(rules) == {("sales-bot", 10), ("sales-bot", 20), (None, 100)}
    assert rules[("sales-bot", 20)].enabled is False
    assert rules[(None, 100)].fallback_backend.name == "echo"
    assert AdminAccessRule.objects.get().description == "office VPN"


def test_reimport_changes_nothing_and_logs_nothing(imported):
    before = database_state()
    log_entries = LogEntry.objects.count()
    updated_at = Bot.objects.get(name="sales-bot").updated_at

    out, _ = run("import_config", imported)

    assert set(statuses(out).values()) == {"unchanged"} and len(statuses(out)) == 8
    assert database_state() == before
    assert LogEntry.objects.count() == log_entries
    assert Bot.objects.get(name="sales-bot").updated_at == updated_at


def test_a_changed_field_is_updated_and_audited_with_secrets_masked(imported, tmp_path):
    config = full_config()
    config["bots"][0]["system_prompt"] = "You sell, politely."
    config["bots"][0]["app_secret"] = "wecom-corp-secret-ROTATED"
    last_entry = LogEntry.objects.latest("pk").pk

    out, _ = run("import_config", write(tmp_path, config))

    assert statuses(out)['bot "sales-bot"'] == "updated"
    assert 'bot "sales-bot": updated (app_secret, system_prompt)' in out
    assert statuses(out)['backend "deepseek"'] == "unchanged"
    sales = Bot.objects.get(name="sales-bot")
    assert sales.app_secret == "wecom-corp-secret-ROTATED" and sales.system_prompt == "You sell, politely."
    (entry,) = LogEntry.objects.filter(pk__gt=last_entry)
    assert entry.object_pk == str(sales.pk) and entry.action == LogEntry.Action.UPDATE
    assert entry.changes_dict["system_prompt"] == ["You sell.", "You sell, politely."]
    assert entry.changes_dict["app_secret"] == ["********", "********"]
    everything_logged = json.dumps([(e.changes, e.additional_data) for e in LogEntry.objects.all()])
    for plain in [*ALL_SECRET_VALUES, "wecom-corp-secret-ROTATED"]:
        assert plain not in everything_logged


def test_an_absent_secret_keeps_the_stored_value_and_an_empty_one_clears_it(imported, tmp_path):
    config = full_config()
    del config["bots"][0]["app_secret"]
    config["bots"][0]["token"] = ""

    out, _ = run("import_config", write(tmp_path, config))

    assert 'bot "sales-bot": updated (token)' in out
    sales = Bot.objects.get(name="sales-bot")
    assert sales.app_secret == SECRETS["bots"]["sales-bot"]["app_secret"]
    assert sales.token == ""


def test_an_absent_plain_field_returns_to_its_default(imported, tmp_path):
    config = full_config()
    del config["bots"][0]["system_prompt"], config["bots"][0]["rate_limit_qps"]

    out, _ = run("import_config", write(tmp_path, config))

    assert 'bot "sales-bot": updated (rate_limit_qps, system_prompt)' in out
    sales = Bot.objects.get(name="sales-bot")
    assert (sales.system_prompt, sales.rate_limit_qps) == ("", 10.0)


def _set(path: str, value):
    """An edit of the config: set the value at a dotted path such as bots.1.platform."""

    def edit(config: dict) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        target = config
        for part in parents:
            target = target[part]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value

    return edit


BAD_INPUTS = {
    "unknown platform": (
        _set("bots.1.platform", "telegramm"),
        "bots[1] \"support-bot\": platform: 'telegramm' is not one of feishu, wecom,",
    ),
    "missing required field": (_set("backends.0.kind", KeyError), 'backends[0] "deepseek": kind: is required'),
    "bad CIDR": (
        _set("bots.0.allowed_ips", ["10.0.0.0/8", "10.0.0.300/8"]),
        "bots[0] \"sales-bot\": allowed_ips: '10.0.0.300/8' is not an IP address or CIDR",
    ),
    "unknown backend in a bot": (
        _set("bots.1.default_backend", "gpt5"),
        'bots[1] "support-bot": default_backend: no backend named "gpt5" in this file or in the database',
    ),
    "unknown backend in a rule": (
        _set("rules.2.fallback_backend", "gpt5"),
        'rules[2] (global #100 always): fallback_backend: no backend named "gpt5"',
    ),
    "unknown bot in a rule": (
        _set("rules.0.bot", "nobody"),
        'rules[0] (nobody #10 keyword "refund"): bot: no bot named "nobody"',
    ),
    "wrong type": (_set("backends.0.timeout", "20"), 'backends[0] "deepseek": timeout: must be a number, not string'),
    "integer that is a float": (_set("rules.1.priority", 2.5), "rules[1]: priority: must be an integer, not number"),
    "boolean that is a string": (
        _set("bots.0.enabled", "yes"),
        'bots[0] "sales-bot": enabled: must be a boolean, not string',
    ),
    "unknown top-level key": (_set("bot", []), 'top level: unknown key "bot"; did you mean "bots"?'),
    "unknown entry key": (
        _set("bots.0.app_secrett", "x"),
        'bots[0] "sales-bot": unknown key "app_secrett"; did you mean "app_secret"?',
    ),
    "section not an array": (_set("rules", {}), "rules: must be an array, not object"),
    "entry not an object": (_set("backends.1", "echo"), "backends[1]: must be an object, not string"),
    "bad regular expression (model check)": (
        _set("rules.1.pattern", "(unclosed"),
        'rules[1] (sales-bot #20 regex "(unclosed"): pattern: not a valid regular',
    ),
    "platform setting missing (model check)": (
        _set("bots.0.extra", {}),
        'bots[0] "sales-bot": extra: agent_id is required for wecom',
    ),
    "openai backend without a model (model check)": (
        _set("backends.0.model", ""),
        'backends[0] "deepseek": An OpenAI-compatible backend needs a base URL',
    ),
    "rate limit below minimum (model check)": (
        _set("bots.1.rate_limit_qps", 0),
        'bots[1] "support-bot": rate_limit_qps: Ensure this value is greater than',
    ),
    "duplicate name": (_set("backends.1.name", "deepseek"), 'backends[1] "deepseek": same name as backends[0]'),
    "duplicate rule key": (
        _set("rules.1", full_config()["rules"][0]),
        'rules[1] (sales-bot #10 keyword "refund"): same bot, priority, match and pattern as rules[0]',
    ),
    "malformed uuid": (_set("bots.0.uuid", "not-a-uuid"), "bots[0] \"sales-bot\": uuid: 'not-a-uuid' is not a UUID"),
}


@pytest.mark.parametrize("edit, expected", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_refused_naming_the_entry_and_writes_nothing(imported, tmp_path, edit, expected):
    config = full_config()
    config["bots"][0]["system_prompt"] = "a valid change that must not be written either"
    config["backends"].append({"name": "new-backend", "kind": "echo"})
    edit(config)
    before = database_state()

    with pytest.raises(CommandError) as raised:
        run("import_config", write(tmp_path, config))

    assert expected in str(raised.value)
    assert "nothing was written" in str(raised.value)
    assert database_state() == before


def test_a_failure_while_writing_undoes_everything_already_written(db, tmp_path):
    """The database refuses the last row (as it would for a concurrent import of the same
    access rule): the backends, bots and rules written before it, and their audit
    entries, must go too."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION sb_test_refuse_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'simulated concurrent insert' USING ERRCODE = 'unique_violation'; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER sb_test_refuse_insert BEFORE INSERT ON bots_adminaccessrule "
            "FOR EACH ROW EXECUTE FUNCTION sb_test_refuse_insert()"
        )
    before = database_state()

    with pytest.raises(CommandError, match="the database refused a write .*nothing was written"):
        run("import_config", write(tmp_path, full_config()))

    assert database_state() == before
    assert Bot.objects.count() == 0 and LogEntry.objects.count() == 0


def test_a_secret_of_the_wrong_type_is_refused_without_echoing_it(imported, tmp_path):
    config = full_config()
    config["backends"][0]["api_key"] = 7_305_118_224_901
    before = database_state()

    with pytest.raises(CommandError) as raised:
        run("import_config", write(tmp_path, config))

    assert 'backends[0] "deepseek": api_key: must be a string, not number' in str(raised.value)
    assert "7305118224901" not in str(raised.value)
    assert database_state() == before


@pytest.mark.parametrize(
    "key",
    [
        "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2",  # 42 characters
        "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C=",  # 44: the pad the platforms leave off
        "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B-C",  # 43, but "-" is not in the base64 alphabet
    ],
)
def test_an_encoding_aes_key_the_platform_could_not_have_issued_is_refused(imported, tmp_path, key):
    config = full_config()
    config["bots"][0]["encoding_aes_key"] = key
    before = database_state()

    with pytest.raises(CommandError) as raised:
        run("import_config", write(tmp_path, config))

    assert 'bots[0] "sales-bot": encoding_aes_key: EncodingAESKey ' in str(raised.value)
    assert key not in str(raised.value)
    assert database_state() == before


def test_a_feishu_encrypt_key_is_any_string(db, tmp_path):
    config = {"bots": [{"name": "lark", "platform": "feishu", "encoding_aes_key": "my own encrypt key"}]}
    run("import_config", write(tmp_path, config))
    assert Bot.objects.get(name="lark").encoding_aes_key == "my own encrypt key"


def test_another_bots_uuid_is_refused(imported, tmp_path):
    config = full_config()
    config["bots"][1]["uuid"] = SALES_UUID
    before = database_state()

    with pytest.raises(CommandError, match=f'bots\\[1\\] "support-bot": uuid: {SALES_UUID} is already the uuid of bot'):
        run("import_config", write(tmp_path, config))
    assert database_state() == before


def test_every_problem_is_reported_at_once_in_file_order(db, tmp_path):
    config = full_config()
    config["admin_access_rules"][0]["cidr"] = "300.0.0.0/8"
    config["rules"][0]["match"] = "contains"
    config["bots"][1]["platform"] = "icq"
    config["backends"][1]["kind"] = "gpt"

    with pytest.raises(CommandError) as raised:
        run("import_config", write(tmp_path, config))

    message = str(raised.value)
    expected = [
        "backends[1] \"echo\": kind: 'gpt' is not one of openai, echo",
        "bots[1] \"support-bot\": platform: 'icq' is not one of",
        "rules[0] (sales-bot #10 contains \"refund\"): match: 'contains' is not one of",
        "admin_access_rules[0] \"300.0.0.0/8\": cidr: '300.0.0.0/8' is not an IP address or CIDR",
    ]
    positions = [message.find(text) for text in expected]
    assert -1 not in positions and positions == sorted(positions), message
    assert "4 problem(s)" in message
    assert Bot.objects.count() == ModelBackend.objects.count() == 0


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{\n  "bots": [\n    {"name": "a",}\n  ]\n}', "invalid JSON at line 3, column 18: Expecting property name"),
        ('{"backends": [], "backends": []}', 'key "backends" appears twice in one object'),
        ('{"backends": [{"name": "x", "kind": "echo", "timeout": NaN}]}', "invalid JSON: NaN is not a JSON number"),
        ("[]", "the document must be a JSON object, not array"),
    ],
    ids=["syntax error", "repeated key", "NaN", "not an object"],
)
def test_a_malformed_document_is_refused_with_its_position(imported, tmp_path, text, expected):
    before = database_state()
    path = write(tmp_path, text)

    with pytest.raises(CommandError) as raised:
        run("import_config", path)

    assert expected in str(raised.value)
    assert database_state() == before


def test_export_leaves_secrets_out_and_reimports_as_a_no_op(imported, tmp_path):
    exported = tmp_path / "exported.json"
    run("export_config", "--output", str(exported))
    text = exported.read_text()
    document = json.loads(text)

    for section, (model, _) in SECTIONS.items():
        for entry in document[section]:
            assert not set(entry) & set(secret_keys(model)), (section, entry)
    for plain in ALL_SECRET_VALUES:
        assert plain not in text
    assert [b["name"] for b in document["bots"]] == ["sales-bot", "support-bot"]
    assert document["bots"][0]["uuid"] == SALES_UUID
    assert document["rules"][0] == {
        "bot": None,
        "priority": 100,
        "match": "always",
        "pattern": "",
        "backend": "deepseek",
        "fallback_backend": "echo",
        "enabled": True,
    }

    log_entries = LogEntry.objects.count()
    before = database_state()
    out, _ = run("import_config", str(exported))

    assert set(statuses(out).values()) == {"unchanged"} and len(statuses(out)) == 8
    assert LogEntry.objects.count() == log_entries
    assert database_state() == before  # secrets included: absent keys kept them
    stdout, _ = run("export_config")
    assert stdout == text


def test_export_then_import_rebuilds_the_same_config_elsewhere(imported, tmp_path):
    """A new server: the callback URLs (bot uuids) survive the move."""
    first, _ = run("export_config")
    RoutingRule.objects.all().delete()
    Bot.objects.all().delete()
    ModelBackend.objects.all().delete()
    AdminAccessRule.objects.all().delete()

    out, _ = run("import_config", write(tmp_path, first))

    assert set(statuses(out).values()) == {"created"}
    assert str(Bot.objects.get(name="sales-bot").uuid) == SALES_UUID
    assert run("export_config")[0] == first


def test_uuid_is_kept_or_assigned(imported, tmp_path):
    support_uuid = Bot.objects.get(name="support-bot").uuid
    config = full_config()
    config["bots"].append({"name": "new-bot", "platform": "slack"})
    del config["bots"][0]["uuid"]

    out, stderr = run("import_config", write(tmp_path, config))

    assert statuses(out)['bot "sales-bot"'] == "unchanged"
    assert str(Bot.objects.get(name="sales-bot").uuid) == SALES_UUID
    assert Bot.objects.get(name="support-bot").uuid == support_uuid
    new_uuid = Bot.objects.get(name="new-bot").uuid
    assert new_uuid not in {support_uuid, uuid.UUID(SALES_UUID)}
    assert f"uuid {new_uuid}, callback URL /callback/slack/{new_uuid}/" in out
    assert "uuid" not in stderr

    moved = str(uuid.uuid4())
    config["bots"][0]["uuid"] = moved
    out, stderr = run("import_config", write(tmp_path, config))
    assert 'bot "sales-bot": updated (uuid)' in out
    assert 'bot "sales-bot": the file changes its uuid, so its callback URL moves' in stderr
    assert str(Bot.objects.get(name="sales-bot").uuid) == moved


def test_actor_and_source_are_recorded_on_every_log_entry(db, tmp_path, django_user_model):
    user = django_user_model.objects.create_user(username="ops-carol")
    path = write(tmp_path, full_config())
    last_entry = LogEntry.objects.latest("pk").pk  # the user's own creation

    run("import_config", path, "--actor", "ops-carol")

    entries = list(LogEntry.objects.filter(pk__gt=last_entry))
    assert len(entries) == 8
    assert {e.actor_id for e in entries} == {user.pk}
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert all(e.additional_data == {"source": "import_config", "file": path, "sha256": digest} for e in entries)


def test_without_actor_the_log_entries_name_nobody(imported):
    assert LogEntry.objects.filter(content_type__app_label__in=["bots", "routing"]).count() == 8
    assert not LogEntry.objects.filter(content_type__app_label__in=["bots", "routing"], actor__isnull=False).exists()


def test_an_unknown_actor_is_refused_before_anything_is_written(db, tmp_path):
    with pytest.raises(CommandError, match="--actor: there is no user named 'nobody'"):
        run("import_config", write(tmp_path, full_config()), "--actor", "nobody")
    assert Bot.objects.count() == 0 and LogEntry.objects.count() == 0


@pytest.fixture
def extra_rules(imported) -> dict[str, RoutingRule]:
    """Rules made in the console after the import: one of a bot in the file, one global,
    one of a bot the file does not mention."""
    echo = ModelBackend.objects.get(name="echo")
    manual_bot = Bot.objects.create(name="manual-bot", platform="slack")
    return {
        "bot": RoutingRule.objects.create(
            bot=Bot.objects.get(name="sales-bot"), priority=50, match="keyword", pattern="extra", backend=echo
        ),
        "global": RoutingRule.objects.create(priority=5, match="chat_type", pattern="group", backend=echo),
        "other bot": RoutingRule.objects.create(bot=manual_bot, priority=1, match="always", backend=echo),
    }


def test_rules_missing_from_the_file_stay_without_prune(imported, extra_rules):
    out, _ = run("import_config", imported)

    assert "deleted" not in statuses(out).values()
    assert RoutingRule.objects.count() == 6


def test_prune_deletes_global_rules_and_rules_of_named_bots_missing_from_the_file(imported, extra_rules):
    out, _ = run("import_config", imported, "--prune")

    assert statuses(out)['rule sales-bot #50 keyword "extra"'] == "deleted"
    assert statuses(out)['rule global #5 chat_type "group"'] == "deleted"
    assert not RoutingRule.objects.filter(pk__in=[extra_rules["bot"].pk, extra_rules["global"].pk]).exists()
    assert RoutingRule.objects.filter(pk=extra_rules["other bot"].pk).exists()
    assert RoutingRule.objects.count() == 4
    deleted = LogEntry.objects.filter(action=LogEntry.Action.DELETE)
    assert {e.object_pk for e in deleted} == {str(extra_rules["bot"].pk), str(extra_rules["global"].pk)}


def test_prune_leaves_rules_alone_when_the_file_has_no_rules_section(imported, extra_rules, tmp_path):
    config = full_config()
    del config["rules"]

    run("import_config", write(tmp_path, config), "--prune")

    assert RoutingRule.objects.count() == 6


def test_dry_run_shows_the_changes_and_writes_nothing(imported, extra_rules, tmp_path):
    config = full_config()
    config["bots"][1]["system_prompt"] = "changed"
    config["bots"].append({"name": "new-bot", "platform": "slack"})
    before = database_state()

    out, _ = run("import_config", write(tmp_path, config), "--dry-run", "--prune")

    assert out.startswith("Dry run: nothing is written.")
    assert statuses(out)['bot "support-bot"'] == "updated"
    assert statuses(out)['bot "new-bot"'] == "created"
    assert statuses(out)['rule global #5 chat_type "group"'] == "deleted"
    assert "uuid and callback URL: assigned by the import" in out
    assert "Would be: 1 created, 1 updated, 7 unchanged, 2 deleted." in out
    assert database_state() == before


def test_stdin_and_base_url(db):
    document = json.dumps(full_config())

    out, _ = run("import_config", "-", "--base-url", "https://bots.example.com/", stdin=StringIO(document))

    assert f"callback URL https://bots.example.com/callback/wecom/{SALES_UUID}/" in out
    assert Bot.objects.count() == 2
    entry = LogEntry.objects.get_for_object(Bot.objects.get(name="sales-bot")).get()
    assert entry.additional_data["file"] == "<stdin>"


def test_the_example_file_imports_and_matches_the_docs(db):
    out, _ = run("import_config", str(EXAMPLE))

    assert set(statuses(out).values()) == {"created"}
    assert Bot.objects.count() == 2 and RoutingRule.objects.count() == 3
    doc = (ROOT / "docs" / "config-as-code.md").read_text()
    worked_example = re.search(r"```json\n(.*?)```", doc, re.DOTALL).group(1)
    assert json.loads(worked_example) == json.loads(EXAMPLE.read_text())


def test_the_schema_covers_every_field_an_operator_sets(db):
    """A field added to a model must be added to the file format too, or export would
    silently drop it and import would reset it."""
    bookkeeping = {"id", "created_at", "updated_at"}
    for section, (model, keys) in SECTIONS.items():
        fields = {f.name for f in model._meta.concrete_fields} - bookkeeping
        assert fields == set(keys), section


@pytest.mark.django_db(transaction=True)
def test_the_cli_exits_non_zero_on_bad_input_and_imports_good_input(tmp_path):
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
    }
    bad = full_config()
    bad["bots"][0]["allowed_ips"] = ["10.0.0.300/8"]

    def manage(*args: str, stdin: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            input=stdin,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    refused = manage("import_config", "-", stdin=json.dumps(bad))
    assert refused.returncode == 1
    assert "bots[0] \"sales-bot\": allowed_ips: '10.0.0.300/8' is not an IP address or CIDR" in refused.stderr
    assert Bot.objects.count() == 0

    accepted = manage("import_config", "-", stdin=json.dumps(full_config()))
    assert accepted.returncode == 0, accepted.stderr
    assert 'bot "sales-bot": created' in accepted.stdout
    assert Bot.objects.get(name="sales-bot").app_secret == SECRETS["bots"]["sales-bot"]["app_secret"]
