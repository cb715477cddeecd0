from django.contrib.admin.apps import AdminConfig


class SwitchboardAdminConfig(AdminConfig):
    """Makes the 2FA-enforcing site the default, so every app's admin.register lands on it."""

    default_site = "config.admin_site.SwitchboardAdminSite"
