from django.apps import AppConfig


class OpenaiAppConfig(AppConfig):
    name = "openai_app"
    verbose_name = "OpenAI-compatible API"
