"""Config as code: backends, bots, routing rules and console access rules as one JSON
document (see docs/config-as-code.md).

`plan_import` checks a whole document against the database and returns what would
change, or raises `ConfigError` listing every problem; `import_document` does that and
writes the plan in one transaction, under the audit trail. `export_document` writes the
same schema back, secrets left out, in a fixed order, so exporting and importing again
changes nothing.
"""

from __future__ import annotations

import difflib
import json
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from auditlog.context import set_extra_data
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import models, transaction

from bots.fields import EncryptedTextField
from bots.models import AdminAccessRule, Bot
from bots.platforms import Platform
from bots.validators import validate_cidr
from routing.models import BackendKind, MatchKind, ModelBackend, RoutingRule


class ConfigError(Exception):
    """The document cannot be imported. `problems` holds every reason, each naming its entry."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Key:
    """One key an entry may carry. `refers_to` marks a key whose value is the name of a
    backend or bot (in the same file or already in the database)."""

    type: str
    required: bool = False
    nullable: bool = False
    choices: type[models.TextChoices] | None = None
    refers_to: str | None = None


_TYPE_CHECKS = {
    "string": lambda v: isinstance(v, str),
    # bool is an int in Python; `"priority": true` is still a mistake.
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array of CIDR strings": lambda v: isinstance(v, list) and all(isinstance(item, str) for item in v),
    "UUID string": lambda v: isinstance(v, str),
}

BACKEND_KEYS: dict[str, Key] = {
    "name": Key("string", required=True),
    "kind": Key("string", required=True, choices=BackendKind),
    "base_url": Key("string"),
    "model": Key("string"),
    "api_key": Key("string"),
    "timeout": Key("number"),
    "max_tokens": Key("integer", nullable=True),
    "enabled": Key("boolean"),
}
BOT_KEYS: dict[str, Key] = {
    "name": Key("string", required=True),
    "platform": Key("string", required=True, choices=Platform),
    "uuid": Key("UUID string"),
    "enabled": Key("boolean"),
    "app_id": Key("string"),
    "app_secret": Key("string"),
    "token": Key("string"),
    "encoding_aes_key": Key("string"),
    "api_base_url": Key("string"),
    "extra": Key("object"),
    "default_backend": Key("string", nullable=True, refers_to="backend"),
    "rate_limit_qps": Key("number"),
    "allowed_ips": Key("array of CIDR strings"),
    "system_prompt": Key("string"),
    "context_ttl": Key("integer"),
    "max_context_turns": Key("integer"),
    "require_mention_in_groups": Key("boolean"),
}
RULE_KEYS: dict[str, Key] = {
    "bot": Key("string", nullable=True, refers_to="bot"),
    "priority": Key("integer", required=True),
    "match": Key("string", required=True, choices=MatchKind),
    "pattern": Key("string"),
    "backend": Key("string", required=True, refers_to="backend"),
    "fallback_backend": Key("string", nullable=True, refers_to="backend"),
    "enabled": Key("boolean"),
}
ADMIN_ACCESS_RULE_KEYS: dict[str, Key] = {
    "cidr": Key("string", required=True),
    "description": Key("string"),
    "enabled": Key("boolean"),
}
SECTIONS: dict[str, tuple[type[models.Model], dict[str, Key]]] = {
    "backends": (ModelBackend, BACKEND_KEYS),
    "bots": (Bot, BOT_KEYS),
    "rules": (RoutingRule, RULE_KEYS),
    "admin_access_rules": (AdminAccessRule, ADMIN_ACCESS_RULE_KEYS),
}


def secret_keys(model: type[models.Model]) -> list[str]:
    """The encrypted fields of a model: never exported, kept when absent from an entry."""
    return [f.name for f in model._meta.fields if isinstance(f, EncryptedTextField)]


class Action(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    DELETED = "deleted"


class Ref(NamedTuple):
    kind: str
    name: str | None


@dataclass
class Change:
    """What the import does (or would do) to one row."""

    kind: str
    label: str
    action: str
    obj: models.Model
    changed: list[str] = field(default_factory=list)
    # Foreign keys by name, resolved only when writing: the target may be a row this
    # same import creates.
    refs: dict[str, Ref] = field(default_factory=dict)
    # The keys the entry set, e.g. whether a new bot's uuid came from the file.
    given: set[str] = field(default_factory=set)


@dataclass
class ImportPlan:
    changes: list[Change]
    backends: dict[str, ModelBackend]
    bots: dict[str, Bot]

    def count(self, action: str) -> int:
        return sum(1 for change in self.changes if change.action == action)

    def apply(self) -> None:
        """Write the plan. Call inside a transaction: a failure half-way must undo it all."""
        targets = {"backend": self.backends, "bot": self.bots}
        for change in self.changes:
            if change.action == Action.DELETED:
                change.obj.delete()
            elif change.action in (Action.CREATED, Action.UPDATED):
                for fk_name, ref in change.refs.items():
                    setattr(change.obj, fk_name, targets[ref.kind][ref.name] if ref.name is not None else None)
                change.obj.save()


# --- reading -------------------------------------------------------------------------


class _NotJson(ValueError):
    pass


def _refuse_constant(name: str) -> None:
    raise _NotJson(f"{name} is not a JSON number")


def load_document(text: str, source: str) -> Any:
    """Parse JSON, refusing what Python's json module lets through silently: a key given
    twice in one object (the last would win without a word) and NaN/Infinity."""
    repeated: list[str] = []

    def pairs_to_dict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                repeated.append(key)
            result[key] = value
        return result

    try:
        document = json.loads(text, object_pairs_hook=pairs_to_dict, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError([f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"]) from None
    except _NotJson as exc:
        raise ConfigError([f"{source}: invalid JSON: {exc}"]) from None
    if repeated:
        raise ConfigError(
            [f'{source}: key "{key}" appears twice in one object; only one can count' for key in repeated]
        )
    return document


# --- planning ------------------------------------------------------------------------


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _unknown_key_message(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f'; did you mean "{close[0]}"?' if close else f" (allowed: {', '.join(allowed)})"
    return f'unknown key "{key}"{hint}'


def rule_label(bot: str | None, priority: object, match: object, pattern: object) -> str:
    scope = bot if bot is not None else "global"
    text = f"{scope} #{priority} {match}"
    return f'{text} "{pattern}"' if pattern else text


Entries = list[tuple[int, dict[str, Any]]]


def _article(type_name: str) -> str:
    return f"an {type_name}" if type_name[0] in "aeiou" else f"a {type_name}"


class _Planner:
    def __init__(self, document: Any, prune: bool) -> None:
        self.document = document
        self.prune = prune
        # (position in the file, message): reported in file order, whichever check found it.
        self.problems: list[tuple[tuple[int, int], str]] = []
        self.changes: list[Change] = []
        self.backends = {b.name: b for b in ModelBackend.objects.all()}
        self.bots = {b.name: b for b in Bot.objects.select_related("default_backend")}
        self.known: dict[str, set[str]] = {"backend": set(self.backends), "bot": set(self.bots)}

    def plan(self) -> ImportPlan:
        sections = self._sections()
        if sections is None:
            raise ConfigError([message for _, message in self.problems])
        # Names first, so an entry may refer to one defined anywhere in the file.
        for kind, section in (("backend", "backends"), ("bot", "bots")):
            self.known[kind] |= {e["name"] for _, e in sections.get(section, []) if isinstance(e.get("name"), str)}
        self._check_unique(sections, "backends", lambda e: e.get("name"), "name")
        self._check_unique(sections, "bots", lambda e: e.get("name"), "name")
        self._check_unique(sections, "bots", _uuid_of, "uuid")
        self._check_unique(sections, "rules", _rule_key, "bot, priority, match and pattern")
        self._check_unique(sections, "admin_access_rules", lambda e: e.get("cidr"), "cidr")

        for index, entry in sections.get("backends", []):
            self._plan_backend(index, entry)
        for index, entry in sections.get("bots", []):
            self._plan_bot(index, entry)
        # An absent section says nothing about its rows; `"rules": []` says "no rules"
        # (which --prune acts on).
        if "rules" in sections:
            bot_names = {e["name"] for _, e in sections.get("bots", []) if isinstance(e.get("name"), str)}
            self._plan_rules(sections["rules"], bot_names)
        if "admin_access_rules" in sections:
            self._plan_admin_access_rules(sections["admin_access_rules"])
        if self.problems:
            raise ConfigError([message for _, message in sorted(self.problems, key=lambda p: p[0])])
        return ImportPlan(self.changes, self.backends, self.bots)

    def _sections(self) -> dict[str, Entries] | None:
        if not isinstance(self.document, dict):
            self._problem(None, f"the document must be a JSON object, not {_json_type(self.document)}")
            return None
        sections: dict[str, Entries] = {}
        for name, entries in self.document.items():
            if name not in SECTIONS:
                self._problem(None, f"top level: {_unknown_key_message(name, list(SECTIONS))}")
            elif not isinstance(entries, list):
                self._problem(_Where(name, -1, name), f"must be an array, not {_json_type(entries)}")
            else:
                sections[name] = []
                for index, entry in enumerate(entries):
                    if isinstance(entry, dict):
                        sections[name].append((index, entry))
                    else:
                        where = _Where(name, index, f"{name}[{index}]")
                        self._problem(where, f"must be an object, not {_json_type(entry)}")
        return sections

    def _check_unique(
        self, sections: dict[str, Entries], section: str, key_of: Callable[[dict[str, Any]], Any], what: str
    ) -> None:
        first_seen: dict[object, int] = {}
        for index, entry in sections.get(section, []):
            key = key_of(entry)
            try:
                hash(key)
            except TypeError:
                # A list or object where a name belongs: the type check reports it.
                continue
            if key is None:
                continue
            if key in first_seen:
                self._problem(_where(section, index, entry), f"same {what} as {section}[{first_seen[key]}]")
            else:
                first_seen[key] = index

    def _problem(self, where: _Where | None, message: str) -> None:
        if where is None:
            self.problems.append(((-1, -1), message))
        else:
            self.problems.append(((list(SECTIONS).index(where.section), where.index), f"{where.text}: {message}"))

    def _check_entry(
        self, where: _Where, entry: dict[str, Any], keys: dict[str, Key]
    ) -> tuple[dict[str, Any], set[str]]:
        """Check keys, types, choices and references. Return the values that passed and
        the names of the keys that did not (the model checks skip those, so one mistake
        is reported once)."""
        values: dict[str, Any] = {}
        bad: set[str] = set()
        for key in entry:
            if key not in keys:
                self._problem(where, _unknown_key_message(key, list(keys)))
        for key, spec in keys.items():
            if key not in entry:
                if spec.required:
                    self._problem(where, f"{key}: is required")
                    bad.add(key)
                continue
            problems = self._check_value(spec, entry[key])
            for problem in problems:
                self._problem(where, f"{key}: {problem}")
            if problems:
                bad.add(key)
            else:
                values[key] = entry[key]
        return values, bad

    def _check_value(self, spec: Key, value: object) -> list[str]:
        if value is None:
            return [] if spec.nullable else [f"must be {_article(spec.type)}, not null"]
        if not _TYPE_CHECKS[spec.type](value):
            # Never the value itself: it may be a secret.
            return [f"must be {_article(spec.type)}, not {_json_type(value)}"]
        if spec.choices is not None and value not in spec.choices.values:
            return [f"{value!r} is not one of {', '.join(spec.choices.values)}"]
        if spec.refers_to is not None and value not in self.known[spec.refers_to]:
            return [f'no {spec.refers_to} named "{value}" in this file or in the database']
        if spec.type == "UUID string":
            try:
                uuid.UUID(value)
            except ValueError:
                return [f"{value!r} is not a UUID"]
        problems = []
        if spec.type == "array of CIDR strings":
            for item in value:
                try:
                    validate_cidr(item)
                except ValidationError as exc:
                    problems.extend(exc.messages)
        return problems

    def _model_check(self, where: _Where, obj: models.Model, bad: set[str], exclude: list[str]) -> None:
        """Run the model's own validation, as the console form does. Foreign keys are
        checked by name above (their targets may not exist yet), so they are excluded."""
        try:
            if bad:
                # clean() reads every field; with one already refused it would report
                # confusing follow-on errors, so only the field checks run.
                obj.clean_fields(exclude=[*bad, *exclude])
            else:
                obj.full_clean(exclude=exclude)
        except ValidationError as exc:
            for name, messages in exc.message_dict.items():
                prefix = "" if name == NON_FIELD_ERRORS else f"{name}: "
                for message in messages:
                    self._problem(where, f"{prefix}{message}")

    def _assign(self, obj: models.Model, keys: dict[str, Key], values: dict[str, Any], bad: set[str]) -> None:
        """Set every plain field from the entry. An absent key means the model default,
        except secrets (absent keeps what is stored: exports leave them out) and a bot's
        uuid (absent keeps it: callback URLs must not move)."""
        secrets = set(secret_keys(type(obj)))
        for key, spec in keys.items():
            if spec.refers_to is not None or key in bad:
                continue
            if key in values:
                setattr(obj, key, values[key])
            elif key not in secrets and key != "uuid":
                setattr(obj, key, obj._meta.get_field(key).get_default())

    def _record(
        self,
        kind: str,
        label: str,
        obj: models.Model,
        before: dict[str, Any] | None,
        keys: dict[str, Key],
        values: dict[str, Any],
    ) -> None:
        refs = {key: Ref(spec.refers_to, values.get(key)) for key, spec in keys.items() if spec.refers_to}
        if before is None:
            self.changes.append(Change(kind, label, Action.CREATED, obj, refs=refs, given=set(values)))
            return
        after = _snapshot(obj)
        changed = [name for name in after if after[name] != before[name]]
        changed += [name for name, ref in refs.items() if _ref_name(obj, name) != ref.name]
        action = Action.UPDATED if changed else Action.UNCHANGED
        self.changes.append(Change(kind, label, action, obj, changed, refs, set(values)))

    def _plan_backend(self, index: int, entry: dict[str, Any]) -> None:
        where = _where("backends", index, entry)
        values, bad = self._check_entry(where, entry, BACKEND_KEYS)
        if "name" in bad:
            return
        existing = self.backends.get(values["name"])
        obj = existing or ModelBackend()
        before = _snapshot(obj) if existing else None
        self._assign(obj, BACKEND_KEYS, values, bad)
        self._model_check(where, obj, bad, [])
        self.backends[obj.name] = obj
        self._record("backend", f'"{obj.name}"', obj, before, BACKEND_KEYS, values)

    def _plan_bot(self, index: int, entry: dict[str, Any]) -> None:
        where = _where("bots", index, entry)
        values, bad = self._check_entry(where, entry, BOT_KEYS)
        if "name" in bad:
            return
        existing = self.bots.get(values["name"])
        obj = existing or Bot()
        before = _snapshot(obj) if existing else None
        if "uuid" in values:
            values["uuid"] = uuid.UUID(values["uuid"])
            owner = next((b for b in self.bots.values() if b.uuid == values["uuid"] and b is not obj), None)
            if owner is not None and owner.pk is not None:
                self._problem(where, f'uuid: {values["uuid"]} is already the uuid of bot "{owner.name}"')
                bad.add("uuid")
        self._assign(obj, BOT_KEYS, values, bad)
        self._model_check(where, obj, bad, ["default_backend"])
        self.bots[obj.name] = obj
        self._record("bot", f'"{obj.name}"', obj, before, BOT_KEYS, values)

    def _plan_rules(self, entries: Entries, bot_names: set[str]) -> None:
        existing_by_key: dict[tuple, list[RoutingRule]] = defaultdict(list)
        for rule in RoutingRule.objects.select_related("bot", "backend", "fallback_backend").order_by("pk"):
            existing_by_key[(_ref_name(rule, "bot"), rule.priority, rule.match, rule.pattern)].append(rule)
        claimed: set[int] = set()
        in_scope = set(bot_names)
        for index, entry in entries:
            where = _where("rules", index, entry)
            values, bad = self._check_entry(where, entry, RULE_KEYS)
            if isinstance(values.get("bot"), str):
                in_scope.add(values["bot"])
            if bad & {"bot", "priority", "match", "pattern"}:
                continue
            values.setdefault("pattern", "")
            key = (values.get("bot"), values["priority"], values["match"], values["pattern"])
            candidates = [rule for rule in existing_by_key.get(key, []) if rule.pk not in claimed]
            obj = candidates[0] if candidates else RoutingRule()
            before = _snapshot(obj) if candidates else None
            if candidates:
                claimed.add(obj.pk)
            self._assign(obj, RULE_KEYS, values, bad)
            self._model_check(where, obj, bad, ["bot", "backend", "fallback_backend"])
            self._record("rule", rule_label(*key), obj, before, RULE_KEYS, values)
        if not self.prune:
            return
        # The file speaks for the global rules and for the bots it names; the rules of a
        # bot it does not mention are left to whoever manages that bot.
        for rules in existing_by_key.values():
            for rule in rules:
                bot_name = _ref_name(rule, "bot")
                if rule.pk not in claimed and (bot_name is None or bot_name in in_scope):
                    label = rule_label(bot_name, rule.priority, rule.match, rule.pattern)
                    self.changes.append(Change("rule", label, Action.DELETED, rule))

    def _plan_admin_access_rules(self, entries: Entries) -> None:
        existing_by_cidr: dict[str, list[AdminAccessRule]] = defaultdict(list)
        for rule in AdminAccessRule.objects.order_by("pk"):
            existing_by_cidr[rule.cidr].append(rule)
        for index, entry in entries:
            where = _where("admin_access_rules", index, entry)
            values, bad = self._check_entry(where, entry, ADMIN_ACCESS_RULE_KEYS)
            if "cidr" in bad:
                continue
            candidates = existing_by_cidr.get(values["cidr"], [])
            obj = candidates[0] if candidates else AdminAccessRule()
            before = _snapshot(obj) if candidates else None
            self._assign(obj, ADMIN_ACCESS_RULE_KEYS, values, bad)
            self._model_check(where, obj, bad, [])
            self._record("admin access rule", f'"{values["cidr"]}"', obj, before, ADMIN_ACCESS_RULE_KEYS, values)


class _Where(NamedTuple):
    section: str
    index: int
    text: str


def _where(section: str, index: int, entry: dict[str, Any]) -> _Where:
    """How an entry is named in messages: its position and its name (for a rule, its key)."""
    text = f"{section}[{index}]"
    if section == "rules":
        priority, match = entry.get("priority"), entry.get("match")
        if isinstance(priority, int) and isinstance(match, str):
            text += f" ({rule_label(entry.get('bot'), priority, match, entry.get('pattern'))})"
    else:
        name = entry.get("cidr" if section == "admin_access_rules" else "name")
        if isinstance(name, str):
            text += f' "{name}"'
    return _Where(section, index, text)


def _uuid_of(entry: dict[str, Any]) -> uuid.UUID | None:
    try:
        return uuid.UUID(entry["uuid"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _rule_key(entry: dict[str, Any]) -> tuple | None:
    key = (entry.get("bot"), entry.get("priority"), entry.get("match"), entry.get("pattern", ""))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _snapshot(obj: models.Model) -> dict[str, Any]:
    """The values an import may change, in the form the model holds them after cleaning."""
    return {
        f.attname: getattr(obj, f.attname)
        for f in obj._meta.concrete_fields
        if not f.primary_key
        and not f.is_relation
        and not getattr(f, "auto_now", False)
        and not getattr(f, "auto_now_add", False)
    }


def _ref_name(obj: models.Model, fk_name: str) -> str | None:
    if getattr(obj, f"{fk_name}_id") is None:
        return None
    return getattr(obj, fk_name).name


def plan_import(document: Any, *, prune: bool = False) -> ImportPlan:
    """Check a parsed document against the database; raise ConfigError naming every problem."""
    return _Planner(document, prune).plan()


def import_document(
    document: Any,
    *,
    prune: bool = False,
    dry_run: bool = False,
    actor: Any = None,
    audit_data: dict[str, Any] | None = None,
) -> ImportPlan:
    """Plan and (unless dry_run) write, all or nothing. Every save goes through
    django-auditlog with `actor` and `audit_data` (stored as each entry's additional_data),
    the same trail a console edit leaves."""
    with transaction.atomic():
        plan = plan_import(document, prune=prune)
        if not dry_run:
            # A command has no client address; the actor and additional_data say who and what.
            with set_extra_data({"actor": actor, "remote_addr": None, "additional_data": audit_data}):
                plan.apply()
    return plan


# --- writing -------------------------------------------------------------------------


def _export_entry(obj: models.Model, keys: dict[str, Key]) -> dict[str, Any]:
    secrets = set(secret_keys(type(obj)))
    entry: dict[str, Any] = {}
    for key, spec in keys.items():
        if key in secrets:
            continue
        if spec.refers_to is not None:
            entry[key] = _ref_name(obj, key)
        elif key == "uuid":
            entry[key] = str(obj.uuid)
        elif key == "extra":
            entry[key] = dict(sorted(obj.extra.items()))
        else:
            entry[key] = getattr(obj, key)
    return entry


def export_document() -> dict[str, list[dict[str, Any]]]:
    """The whole configuration in the import schema, without secrets, in a fixed order."""
    rules = sorted(
        RoutingRule.objects.select_related("bot", "backend", "fallback_backend"),
        key=lambda r: (r.bot_id is not None, r.bot.name if r.bot_id else "", r.priority, r.match, r.pattern, r.pk),
    )
    return {
        "backends": [_export_entry(b, BACKEND_KEYS) for b in ModelBackend.objects.order_by("name")],
        "bots": [_export_entry(b, BOT_KEYS) for b in Bot.objects.select_related("default_backend").order_by("name")],
        "rules": [_export_entry(r, RULE_KEYS) for r in rules],
        "admin_access_rules": [
            _export_entry(r, ADMIN_ACCESS_RULE_KEYS) for r in AdminAccessRule.objects.order_by("cidr", "pk")
        ],
    }
