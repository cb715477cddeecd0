"""`GET /api/v1/audit/export`: the audit log as a chained CSV or JSON Lines download,
for a key with the `audit:read` scope."""

from __future__ import annotations

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request

from audit.export import ExportFilterError, ExportFilters, ExportFormat, ExportKind, export_response
from bots.api_auth import ApiError, ApiView
from bots.models import ApiKeyScope


class ExportQuery(serializers.Serializer):
    format = serializers.ChoiceField(choices=ExportFormat.choices, default=ExportFormat.CSV)
    kind = serializers.ChoiceField(
        choices=ExportKind.choices,
        default=ExportKind.CHANGES,
        help_text="changes: configuration changes with their diffs; auth: sign-ins, refusals, exports",
    )
    since = serializers.CharField(required=False, help_text="inclusive; a date (2026-01-01) or an ISO date-time")
    until = serializers.CharField(required=False, help_text="exclusive; a date means through the end of that day")
    model = serializers.CharField(required=False, help_text="kind=changes only: app_label.model, e.g. bots.bot")
    actor = serializers.CharField(required=False, help_text="the username that made the change or event")


class AuditExportView(ApiView):
    required_scope = ApiKeyScope.AUDIT_READ

    @extend_schema(
        operation_id="audit_export",
        summary="Export the audit log",
        description=(
            "Streams the audit log as CSV or JSON Lines. Every row carries `prev_hash` and `hash` "
            "(SHA-256 chained from a header line to an end line with the row count), so "
            "`manage.py verify_audit_export FILE` can prove the file was not edited, reordered or cut. "
            "Needs a key with the `audit:read` scope. The export is itself recorded in the audit log."
        ),
        parameters=[ExportQuery],
        responses={
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="CSV export"),
            (200, "application/jsonl"): OpenApiResponse(OpenApiTypes.STR, description="JSON Lines export"),
            400: OpenApiResponse(ApiError, description="invalid_request: a filter is not valid"),
            401: OpenApiResponse(ApiError, description="the key is missing, unknown, revoked or expired"),
            403: OpenApiResponse(ApiError, description="ip_not_allowed or missing_scope"),
        },
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        query = ExportQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        values = query.validated_data
        fmt = values.pop("format")
        try:
            filters = ExportFilters.parse(**values)
        except ExportFilterError as exc:
            raise serializers.ValidationError({exc.field: [exc.message]}) from None
        return export_response(fmt, filters, request=request._request, username=request.user.get_username())
