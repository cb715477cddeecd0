from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from audit.roles import AUDITOR_PERMISSIONS, AUDITORS_GROUP, auditors_group


class Command(BaseCommand):
    help = (
        f"Create the {AUDITORS_GROUP} group (read and export the audit log, nothing else), or put its "
        "permissions back; optionally add users to it."
    )

    def add_arguments(self, parser):
        parser.add_argument("usernames", nargs="*", help="staff users to make auditors")

    def handle(self, *args, usernames, **options):
        users = []
        for username in usernames:
            user = get_user_model().objects.filter(username=username).first()
            if user is None:
                raise CommandError(f"There is no user named {username!r}.")
            if not user.is_staff:
                raise CommandError(f"{username} is not a staff user: set is_staff so they can open the console.")
            if user.is_superuser:
                raise CommandError(f"{username} is a superuser and sees everything; an auditor must not be one.")
            users.append(user)
        group = auditors_group()
        names = ", ".join(codename for _, _, codename, _ in AUDITOR_PERMISSIONS)
        self.stdout.write(f"Group {group.name}: exactly {names}.")
        for user in users:
            user.groups.add(group)
            self.stdout.write(f"{user.get_username()} is an auditor.")
