from django.apps import AppConfig


class RoutingConfig(AppConfig):
    name = "routing"
    verbose_name = "Models and routing"

    def ready(self) -> None:
        from routing import configcache  # noqa: F401 (connects the configuration-change signals)
