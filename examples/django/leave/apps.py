from django.apps import AppConfig


class LeaveConfig(AppConfig):
    name = "leave"

    def ready(self) -> None:
        from . import signals  # noqa: F401  (connects the receivers)
