from django.apps import AppConfig


class StudiosConfig(AppConfig):
    name = "studios"
