from django.db import migrations

from audit.roles import AUDITORS_GROUP, ensure_auditors_group


def create_group(apps, schema_editor):
    ensure_auditors_group(apps.get_model("auth", "Group"), apps.get_model("auth", "Permission"),
                          apps.get_model("contenttypes", "ContentType"))


def remove_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name=AUDITORS_GROUP).delete()


class Migration(migrations.Migration):

    dependencies = [
        ("audit", "0002_more_event_kinds"),
        ("auditlog", "0017_add_actor_email"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_group, remove_group)]
