from django.apps import AppConfig


class ChannelsAppConfig(AppConfig):
    name = "channels_app"
    verbose_name = "Messages"

    def ready(self) -> None:
        from channels_app.registry import load_adapters

        load_adapters()
