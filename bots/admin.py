from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.options import IS_POPUP_VAR
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import capfirst

from audit.events import record_auth_event
from audit.models import AuthEventKind

# account_admin is imported for the pages it registers: users, groups, OTP devices.
from bots import account_admin, console_tools  # noqa: F401
from bots.fields import EncryptedTextField
from bots.models import AdminAccessRule, ApiKey, ApiKeyScope, Bot
from bots.platforms import Platform
from bots.secret_forms import SecretFieldsAdminMixin
from bots.stepup import StepUpAdminMixin, fresh_seconds_left, is_fresh, redirect_to_step_up
from routing.models import ChatType

EXPIRY_WARNING = timedelta(days=14)
ROTATION_GRACE = timedelta(hours=24)


class TestMessageForm(forms.Form):
    text = forms.CharField(max_length=4000, widget=forms.Textarea(attrs={"rows": 3, "cols": 70}))
    chat_type = forms.ChoiceField(choices=ChatType.choices, initial=ChatType.P2P)
    chat_id = forms.CharField(
        label="Chat id",
        max_length=200,
        required=False,
        help_text="Blank: a test conversation of its own. A real chat id (with its sender id) uses that "
        "conversation's context, read-only.",
    )
    sender_id = forms.CharField(label="Sender id", max_length=200, required=False)


@admin.register(Bot)
class BotAdmin(StepUpAdminMixin, SecretFieldsAdminMixin, admin.ModelAdmin):
    list_display = ["name", "platform", "enabled", "default_backend", "callback_url"]
    list_filter = ["platform", "enabled"]
    search_fields = ["name", "app_id"]
    readonly_fields = ["bot_uuid", "callback_url", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["name", "platform", "enabled", "bot_uuid", "callback_url"]}),
        (
            "Platform credentials",
            {"fields": ["app_id", "app_secret", "token", "encoding_aes_key", "api_base_url", "extra"]},
        ),
        ("Security", {"fields": ["allowed_ips", "rate_limit_qps"]}),
        (
            "Dialog",
            {
                "fields": [
                    "default_backend",
                    "system_prompt",
                    "context_ttl",
                    "max_context_turns",
                    "require_mention_in_groups",
                ]
            },
        ),
        ("History", {"fields": ["created_at", "updated_at"]}),
    ]
    step_up_delete = True
    step_up_secret_changes = True
    step_up_actions = ("delete_selected",)

    # An unsaved bot's uuid is a default drawn for the page; the POST builds a new
    # instance that draws another, so showing it would give a callback URL that never works.
    @admin.display(description="UUID")
    def bot_uuid(self, obj: Bot) -> str:
        return str(obj.uuid) if obj.pk else "assigned when saved"

    @admin.display(description="callback URL")
    def callback_url(self, obj: Bot) -> str:
        if not obj.pk:
            return "assigned when saved"
        return format_html("<code>{}</code>", obj.callback_path)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        context["step_up_seconds_left"] = fresh_seconds_left(request)
        if obj is not None and obj.pk:
            context["missing_credentials"] = self._missing_credentials_text(obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    # -- a bot its platform cannot use yet -----------------------------------------------
    # Saved, not refused: every platform's setup (adapters' READMEs) creates the bot first,
    # to give the platform its callback URL, and fills in credentials the platform hands
    # out later. But it is not reported "added successfully": the admin lands on its page,
    # told what is missing.

    def response_add(self, request, obj, post_url_continue=None):
        return self._incomplete_bot_response(request, obj, "added") or super().response_add(
            request, obj, post_url_continue
        )

    def response_change(self, request, obj):
        return self._incomplete_bot_response(request, obj, "changed") or super().response_change(request, obj)

    @staticmethod
    def _missing_credentials_text(bot: Bot) -> str:
        missing = [capfirst(Bot._meta.get_field(name).verbose_name) for name in bot.missing_credentials()]
        if not missing:
            return ""
        return (
            f"{Platform(bot.platform).label} needs {', '.join(missing)}: until they are set, its callbacks "
            "are refused and no reply can be sent."
        )

    def _incomplete_bot_response(self, request: HttpRequest, bot: Bot, done: str) -> HttpResponse | None:
        missing = self._missing_credentials_text(bot)
        if not missing or IS_POPUP_VAR in request.POST:
            return None
        self.message_user(request, f"The bot “{bot}” was {done}, but it cannot work yet. {missing}", messages.WARNING)
        return redirect(reverse("admin:bots_bot_change", args=[bot.pk]))

    # -- tools on the bot's page ---------------------------------------------------------

    def get_urls(self):
        tools = [
            path("<path:object_id>/reveal/", self.admin_site.admin_view(self.reveal_view), name="bots_bot_reveal"),
            path(
                "<path:object_id>/test-message/",
                self.admin_site.admin_view(self.test_message_view),
                name="bots_bot_test_message",
            ),
            path(
                "<path:object_id>/check-callback/",
                self.admin_site.admin_view(self.check_callback_view),
                name="bots_bot_check_callback",
            ),
        ]
        return tools + super().get_urls()

    def _bot_for_tool(self, request: HttpRequest, object_id: str) -> Bot:
        bot = self.get_object(request, unquote(object_id))
        if bot is None:
            raise Http404("There is no such bot.")
        # The tools spend model tokens or show secrets: for those who may change the bot.
        if not self.has_change_permission(request, bot):
            raise PermissionDenied
        return bot

    def _render_tool(self, request: HttpRequest, bot: Bot, template: str, title: str, **extra) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": bot,
            "title": title,
            "subtitle": bot.name,
            **extra,
        }
        return TemplateResponse(request, f"admin/bots/bot/{template}", context)

    def reveal_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        bot = self._bot_for_tool(request, object_id)
        if not is_fresh(request):
            return redirect_to_step_up(request, f"reveal a secret of bot {bot.name}", back=request.path)
        secret_fields = {f.name: str(f.verbose_name) for f in Bot._meta.fields if isinstance(f, EncryptedTextField)}
        revealed = None
        if request.method == "POST":
            name = request.POST.get("field", "")
            if name not in secret_fields:
                messages.error(request, "Choose one of the secrets listed.")
            else:
                value = str(getattr(bot, name))
                if value:
                    record_auth_event(
                        AuthEventKind.SECRET_REVEALED,
                        request,
                        user=request.user,
                        detail=f"bot {bot.name} (id {bot.pk}): {name}",
                    )
                revealed = {"name": name, "label": secret_fields[name], "value": value}
        choices = [
            {"name": name, "label": label, "stored": bool(str(getattr(bot, name)))}
            for name, label in secret_fields.items()
        ]
        return self._render_tool(request, bot, "reveal.html", "Reveal a secret", secrets=choices, revealed=revealed)

    def test_message_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        bot = self._bot_for_tool(request, object_id)
        form = TestMessageForm(request.POST or None)
        result = None
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            result = console_tools.dry_run(
                bot,
                data["text"],
                data["chat_type"],
                chat_id=data["chat_id"] or console_tools.TEST_CHAT_ID,
                sender_id=data["sender_id"] or console_tools.TEST_SENDER_ID,
            )
        return self._render_tool(request, bot, "test_message.html", "Send a test message", form=form, result=result)

    def check_callback_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        bot = self._bot_for_tool(request, object_id)
        result = console_tools.check_callback(bot, request) if request.method == "POST" else None
        return self._render_tool(
            request,
            bot,
            "check_callback.html",
            "Check callback setup",
            result=result,
            callback_url=request.build_absolute_uri(bot.callback_path),
        )


class ExpiryFilter(admin.SimpleListFilter):
    title = "expiry"
    parameter_name = "expiry"

    def lookups(self, request, model_admin):
        return [("soon", "expires within 14 days"), ("active", "usable"), ("ended", "expired or revoked")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "soon":
            return queryset.filter(revoked=False, expires_at__gt=now, expires_at__lte=now + EXPIRY_WARNING)
        if self.value() == "active":
            return queryset.filter(revoked=False, expires_at__gt=now)
        if self.value() == "ended":
            return queryset.exclude(revoked=False, expires_at__gt=now)
        return queryset


class ApiKeyAdminForm(forms.ModelForm):
    # Checkboxes rather than the JSON text box: the list of scopes is fixed. Not required
    # here: ApiKey.clean() refuses an empty list, and says why, for every way in.
    scopes = forms.MultipleChoiceField(
        choices=ApiKeyScope.choices,
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="What the key may call: at least one. Give a client only the scopes it needs.",
    )


@admin.register(ApiKey)
class ApiKeyAdmin(StepUpAdminMixin, admin.ModelAdmin):
    form = ApiKeyAdminForm
    list_display = ["name", "prefix", "scopes", "status", "expires_at", "last_used_at", "last_used_ip"]
    list_filter = [ExpiryFilter, "revoked"]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "replaced_by", "last_used_at", "last_used_ip", "created_at"]
    exclude = ["key_hash"]
    actions = ["rotate_keys", "revoke_keys"]
    # Changing a key's scopes, networks or expiry gives access like issuing a key does.
    # Revoking needs no fresh code: stopping a leaked key must be quick.
    step_up_add = True
    step_up_change = True
    step_up_actions = ("rotate_keys",)

    @admin.display(description="status")
    def status(self, obj: ApiKey) -> str:
        now = timezone.now()
        if obj.revoked:
            return "revoked"
        if obj.expires_at <= now:
            return "expired"
        if not obj.scopes:
            return "no scopes: refused on every call"
        if obj.replaced_by_id:
            return f"rotated: works until {timezone.localtime(obj.expires_at):%Y-%m-%d %H:%M}"
        if obj.expires_at <= now + EXPIRY_WARNING:
            days = (obj.expires_at - now).days
            return f"expires in {days} day{'s' if days != 1 else ''}" if days else "expires today"
        return "active"

    def _show_key_once(self, request: HttpRequest, obj: ApiKey, key: str, what: str) -> None:
        # The only time the key exists in clear: the database keeps its hash. Messages
        # live in the session (settings.MESSAGE_STORAGE) and are deleted once shown.
        messages.warning(
            request,
            format_html(
                '{} <strong>{}</strong>: <code class="sb-new-key" data-prefix="{}">{}</code> — copy it now, '
                "it will not be shown again.",
                what,
                obj.name,
                obj.prefix,
                key,
            ),
        )

    def save_model(self, request, obj: ApiKey, form, change: bool) -> None:
        key = None if change else obj.assign_new_key()
        super().save_model(request, obj, form, change)
        if key:
            self._show_key_once(request, obj, key, "New API key for")

    @admin.action(
        description="Rotate selected API keys (the old key keeps working for 24 hours)", permissions=["change"]
    )
    def rotate_keys(self, request: HttpRequest, queryset) -> None:
        skipped = []
        for old in queryset.order_by("name"):
            if old.revoked or not old.is_active() or old.replaced_by_id:
                skipped.append(old.name)
                continue
            new, key = old.rotate(grace=ROTATION_GRACE)
            self._show_key_once(request, new, key, "Rotated API key")
        if skipped:
            messages.info(
                request,
                f"Not rotated (revoked, expired or rotated already): {', '.join(skipped)}. Create a new key instead.",
            )

    @admin.action(description="Revoke selected API keys (they stop working at once)", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset) -> None:
        revoked = 0
        for key in queryset.filter(revoked=False):
            key.revoke()
            revoked += 1
        messages.success(request, f"Revoked {revoked} API key{'s' if revoked != 1 else ''}.")

    def changelist_view(self, request, extra_context=None):
        now = timezone.now()
        expiring = ApiKey.objects.filter(
            revoked=False, replaced_by__isnull=True, expires_at__gt=now, expires_at__lte=now + EXPIRY_WARNING
        ).count()
        return super().changelist_view(request, {**(extra_context or {}), "expiring_keys": expiring})


@admin.register(AdminAccessRule)
class AdminAccessRuleAdmin(StepUpAdminMixin, admin.ModelAdmin):
    list_display = ["cidr", "description", "enabled"]
    list_filter = ["enabled"]
    step_up_add = True
    step_up_change = True
    step_up_delete = True
    step_up_actions = ("delete_selected",)
