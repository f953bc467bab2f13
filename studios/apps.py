from django.apps import AppConfig


class StudiosConfig(AppConfig):
    name = "studios"

    def ready(self):
        from . import revocation  # noqa: F401  (connects its receivers)
