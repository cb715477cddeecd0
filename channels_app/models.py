from __future__ import annotations

from django.db import models


class MessageStatus(models.TextChoices):
    RECEIVED = "received", "received"
    PROCESSING = "processing", "processing"
    REPLIED = "replied", "replied"
    FAILED = "failed", "failed"
    IGNORED = "ignored", "ignored"


class InboundMessage(models.Model):
    """One message a platform delivered: the delivery log and the outbox.

    The unique (bot, platform_message_id) constraint is the dedup: a platform's
    re-delivery fails to insert and is acknowledged without a second answer.
    """

    # No index of its own: the unique (bot, platform_message_id) index serves lookups by
    # bot, and one index fewer is less work for every callback's INSERT.
    bot = models.ForeignKey("bots.Bot", on_delete=models.CASCADE, related_name="messages", db_index=False)
    platform_message_id = models.CharField(max_length=200)
    chat_id = models.CharField(max_length=200, blank=True)
    chat_type = models.CharField(max_length=20, blank=True)
    sender_id = models.CharField(max_length=200, blank=True)
    text = models.TextField(blank=True)
    mentioned = models.BooleanField(default=False)
    raw = models.JSONField(default=dict, blank=True)

    status = models.CharField(max_length=20, choices=MessageStatus.choices, default=MessageStatus.RECEIVED)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    reply_text = models.TextField(blank=True)
    parts_sent = models.PositiveIntegerField(default=0, help_text="reply parts already delivered")
    # Saved before each send, cleared with the final status: a task that finds it set
    # knows a worker died during that part's send, with no word on whether it arrived.
    part_in_flight = models.PositiveIntegerField(
        null=True, blank=True, help_text="reply part (0-based) whose send began and has not returned"
    )
    possible_duplicates = models.PositiveIntegerField(
        default=0, help_text="parts sent again after a lost send, on a platform that cannot drop a repeat"
    )
    route = models.CharField(max_length=300, blank=True, help_text="which routing rule chose the backend")
    backend = models.ForeignKey(
        "routing.ModelBackend", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    acked_ms = models.FloatField(null=True, blank=True, help_text="callback answered after (ms)")
    started_at = models.DateTimeField(null=True, blank=True)
    # The claim of a processing row: its task (lease_owner, the Celery task id) holds it
    # until lease_until, renewed by its worker while the task runs (channels_app/lease.py).
    lease_owner = models.CharField(max_length=100, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    replied_at = models.DateTimeField(null=True, blank=True)
    model_ms = models.FloatField(null=True, blank=True)
    send_ms = models.FloatField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["bot", "platform_message_id"], name="inbound_unique_per_bot")]
        indexes = [models.Index(fields=["status", "received_at"], name="inbound_status_age")]
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.bot_id}:{self.platform_message_id} ({self.status})"
