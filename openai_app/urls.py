"""URL map of the OpenAI-compatible API, mounted at /oai/api/v1/."""

from django.urls import path

from openai_app import views

urlpatterns = [
    path("models", views.models),
    path("models/<path:model_id>", views.model_detail),
    path("completions", views.completions),
    path("chat/completions", views.chat_completions),
]
