from __future__ import annotations

import re

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models

from bots.fields import EncryptedTextField
from bots.platforms import Platform


class BackendKind(models.TextChoices):
    OPENAI = "openai", "OpenAI-compatible (OpenAI, DeepSeek, Qwen, Moonshot, Ollama, vLLM…)"
    ECHO = "echo", "Echo (built-in, for dry runs)"


class ModelBackend(models.Model):
    """A model endpoint the dialog engine can call."""

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=20, choices=BackendKind.choices, default=BackendKind.OPENAI)
    base_url = models.URLField(
        "base URL", blank=True, help_text="e.g. https://api.deepseek.com/v1 or http://127.0.0.1:11434/v1"
    )
    model = models.CharField(max_length=200, blank=True)
    api_key = EncryptedTextField("API key")
    timeout = models.FloatField("timeout (s)", default=30.0, validators=[MinValueValidator(0.1)])
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.kind == BackendKind.OPENAI and not (self.base_url and self.model):
            raise ValidationError("An OpenAI-compatible backend needs a base URL and a model name.")


class MatchKind(models.TextChoices):
    KEYWORD = "keyword", "message contains keyword"
    REGEX = "regex", "message matches regular expression"
    PLATFORM = "platform", "message came from platform"
    CHAT_TYPE = "chat_type", "chat type is (p2p / group)"
    ALWAYS = "always", "always"


class ChatType(models.TextChoices):
    P2P = "p2p", "one-to-one"
    GROUP = "group", "group"


class RoutingRule(models.Model):
    """Send matching messages to a backend. Bot rules are tried before global ones,
    each set in ascending priority; the bot's default backend is the last resort."""

    bot = models.ForeignKey(
        "bots.Bot",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="rules",
        help_text="Empty: a global rule for every bot.",
    )
    priority = models.IntegerField(default=100, help_text="Lower runs first.")
    match = models.CharField(max_length=20, choices=MatchKind.choices)
    pattern = models.CharField(max_length=500, blank=True)
    backend = models.ForeignKey(ModelBackend, on_delete=models.PROTECT, related_name="rules")
    fallback_backend = models.ForeignKey(
        ModelBackend,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="fallback_rules",
        help_text="Tried when the backend fails after its retries.",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["bot__name", "priority", "id"]

    def __str__(self) -> str:
        scope = self.bot.name if self.bot_id else "global"
        return f"{scope} #{self.priority}: {self.match} {self.pattern}".strip()

    def clean(self) -> None:
        if self.match == MatchKind.ALWAYS:
            return
        if not self.pattern:
            raise ValidationError({"pattern": f"A {self.match} rule needs a pattern."})
        if self.match == MatchKind.REGEX:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValidationError({"pattern": f"not a valid regular expression: {exc}."}) from None
        if self.match == MatchKind.PLATFORM and self.pattern not in Platform.values:
            raise ValidationError({"pattern": f"unknown platform; use one of {', '.join(Platform.values)}."})
        if self.match == MatchKind.CHAT_TYPE and self.pattern not in ChatType.values:
            raise ValidationError({"pattern": f"use one of {', '.join(ChatType.values)}."})
