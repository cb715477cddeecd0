"""The Auditors group: read the audit log (configuration changes and sign-in events)
and export it; see nothing else in the console.

Created by migration audit 0003 and re-asserted by `manage.py create_auditor_group`
(which also puts the permissions back if someone edited the group)."""

from __future__ import annotations

AUDITORS_GROUP = "Auditors"
# (app label, model, codename, name Django gives the permission)
AUDITOR_PERMISSIONS = [
    ("auditlog", "logentry", "view_logentry", "Can view log entry"),
    ("audit", "authevent", "view_authevent", "Can view sign-in event"),
]


def ensure_auditors_group(group_model, permission_model, content_type_model):
    """Create the group (or reset it) with exactly the auditor permissions. Takes the
    models as arguments so a migration can pass its historical ones."""
    permissions = []
    for app_label, model, codename, name in AUDITOR_PERMISSIONS:
        content_type, _ = content_type_model.objects.get_or_create(app_label=app_label, model=model)
        permission, _ = permission_model.objects.get_or_create(
            content_type=content_type, codename=codename, defaults={"name": name}
        )
        permissions.append(permission)
    group, _ = group_model.objects.get_or_create(name=AUDITORS_GROUP)
    group.permissions.set(permissions)
    return group


def auditors_group():
    from django.contrib.auth.models import Group, Permission
    from django.contrib.contenttypes.models import ContentType

    return ensure_auditors_group(Group, Permission, ContentType)
