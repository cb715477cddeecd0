from __future__ import annotations

import json
import logging

from auditlog.models import LogEntry
from django.contrib import admin, messages
from django.db import transaction
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.text import Truncator

from bots.platforms import Platform
from channels_app import outbox
from channels_app.models import InboundMessage, MessageStatus
from channels_app.tasks import handle_message

logger = logging.getLogger("switchboard.console")


def _enqueue(message_id: int) -> None:
    try:
        handle_message.delay(message_id)
    except Exception as exc:  # broker down: the row is "received", so the sweeper queues it later
        logger.error("message %s put back in the outbox but not queued (%s); the sweeper will retry", message_id, exc)


def _audit(row: InboundMessage, action: str, before: dict[str, object]) -> None:
    """Record a console action on the delivery log in the audit log (actor and address
    come from the request's audit context)."""
    changes = {name: [str(old), str(getattr(row, name))] for name, old in before.items()}
    LogEntry.objects.log_create(
        row,
        force_log=True,
        action=LogEntry.Action.UPDATE,
        changes=changes,
        additional_data={"console_action": action},
    )


class PlatformFilter(admin.SimpleListFilter):
    title = "platform"
    parameter_name = "platform"

    def lookups(self, request, model_admin):
        return Platform.choices

    def queryset(self, request, queryset):
        return queryset.filter(bot__platform=self.value()) if self.value() else queryset


@admin.register(InboundMessage)
class InboundMessageAdmin(admin.ModelAdmin):
    """The delivery log: read-only, written by callbacks and the dialog task. Two actions
    put a message back into the outbox."""

    list_display = [
        "received_at",
        "bot",
        "platform",
        "short_text",
        "status",
        "attempts",
        "timings",
        "backend",
        "route",
        "short_error",
    ]
    list_filter = ["status", PlatformFilter, "bot", "received_at", "chat_type"]
    search_fields = ["platform_message_id", "chat_id", "sender_id", "text"]
    date_hierarchy = "received_at"
    list_select_related = ["bot", "backend"]
    actions = ["replay_messages", "resend_replies"]
    fieldsets = [
        (
            "Message",
            {
                "fields": [
                    "bot",
                    "platform",
                    "platform_message_id",
                    "chat_type",
                    "chat_id",
                    "sender_id",
                    "mentioned",
                    "text",
                ]
            },
        ),
        (
            "Outcome",
            {
                "fields": [
                    "status",
                    "attempts",
                    "error",
                    "route",
                    "backend",
                    "reply_text",
                    "parts_sent",
                    "part_in_flight",
                    "possible_duplicates",
                ]
            },
        ),
        (
            "Timings",
            {
                "fields": [
                    "received_at",
                    "acked_ms",
                    "started_at",
                    "lease_until",
                    "model_ms",
                    "send_ms",
                    "replied_at",
                    "end_to_end",
                ]
            },
        ),
        ("As received", {"fields": ["raw_pretty"], "classes": ["collapse"]}),
    ]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_requeue_permission(self, request: HttpRequest) -> bool:
        # Putting messages back into the outbox is an operator's job, not a viewer's.
        return request.user.has_perm("channels_app.change_inboundmessage")

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields] + ["platform", "end_to_end", "raw_pretty"]

    @admin.display(description="platform", ordering="bot__platform")
    def platform(self, obj: InboundMessage) -> str:
        return obj.bot.get_platform_display()

    @admin.display(description="text")
    def short_text(self, obj: InboundMessage) -> str:
        return Truncator(obj.text).chars(60)

    @admin.display(description="error")
    def short_error(self, obj: InboundMessage) -> str:
        return Truncator(obj.error).chars(80)

    @admin.display(description="timings (ms)")
    def timings(self, obj: InboundMessage) -> str:
        parts = [
            (label, value)
            for label, value in (("ack", obj.acked_ms), ("model", obj.model_ms), ("send", obj.send_ms))
            if value is not None
        ]
        return " · ".join(f"{label} {value:.0f}" for label, value in parts) or "—"

    @admin.display(description="end to end (ms)")
    def end_to_end(self, obj: InboundMessage) -> str:
        if not obj.replied_at:
            return "—"
        return f"{(obj.replied_at - obj.received_at).total_seconds() * 1000:.0f}"

    @admin.display(description="raw event")
    def raw_pretty(self, obj: InboundMessage) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.raw, indent=2, ensure_ascii=False))

    def _requeue(
        self, request: HttpRequest, queryset, action: str, allowed: list[str], reset: dict, want_reply: bool
    ) -> None:
        done, skipped = 0, []
        for row in queryset.select_related("bot"):
            if row.status not in allowed:
                skipped.append(f"#{row.pk} ({row.status})")
                continue
            if want_reply and not row.reply_text:
                skipped.append(f"#{row.pk} (no reply yet)")
                continue
            before = {name: getattr(row, name) for name in ["status", *reset]}
            if not outbox.requeue(row, reset):  # a worker that picked the row up meanwhile wins
                skipped.append(f"#{row.pk} (changed meanwhile)")
                continue
            _audit(row, action, before)
            transaction.on_commit(lambda pk=row.pk: _enqueue(pk))
            done += 1
        verb = {"replay": "Replaying", "resend": "Re-sending the reply of"}[action]
        if done:
            messages.success(request, f"{verb} {done} message{'s' if done != 1 else ''}: queued for the worker.")
        if skipped:
            rule = (
                "only failed messages can be replayed"
                if action == "replay"
                else "only failed or replied messages that have a reply can be re-sent"
            )
            messages.warning(request, f"Skipped {', '.join(skipped)}: {rule}.")

    @admin.action(description="Replay selected failed messages (ask the model again and send)", permissions=["requeue"])
    def replay_messages(self, request: HttpRequest, queryset) -> None:
        self._requeue(
            request,
            queryset,
            "replay",
            [MessageStatus.FAILED],
            {"error": "", "reply_text": "", "parts_sent": 0},
            want_reply=False,
        )

    @admin.action(description="Re-send the reply of selected messages (same text, sent again)", permissions=["requeue"])
    def resend_replies(self, request: HttpRequest, queryset) -> None:
        self._requeue(
            request,
            queryset,
            "resend",
            [MessageStatus.FAILED, MessageStatus.REPLIED],
            {"error": "", "parts_sent": 0},
            want_reply=True,
        )
