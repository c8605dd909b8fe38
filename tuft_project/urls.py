"""URL map. Every Tinker API path lives under /api/v1/ (tinker-protocol.md §5)."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from monitoring_app import views as monitoring
from sampling_app import views as sampling
from sessions_app import billing_views as billing, views as sessions
from training_app import future_views, rest_views, views as training

C = "training_runs/<str:run_id>/checkpoints/<path:checkpoint_id>"

api = [
    path("healthz", monitoring.healthz_view),
    path("client/config", sessions.ClientConfigView.as_view()),
    path("client/dynamic_config", sessions.DynamicConfigView.as_view()),
    path("create_session", sessions.CreateSessionView.as_view()),
    path("session_heartbeat", sessions.HeartbeatView.as_view()),
    path("telemetry", sessions.TelemetryView.as_view()),
    path("get_server_capabilities", sessions.CapabilitiesView.as_view()),
    path("sessions", sessions.SessionListView.as_view()),
    path("sessions/<str:session_id>", sessions.SessionDetailView.as_view()),
    path("sessions/<str:session_id>/finish", sessions.FinishSessionView.as_view()),
    path("create_model", training.CreateModelView.as_view()),
    path("get_info", training.GetInfoView.as_view()),
    path("forward_backward", training.ForwardBackwardView.as_view()),
    path("optim_step", training.OptimStepView.as_view()),
    path("save_weights", training.SaveWeightsView.as_view()),
    path("save_weights_for_sampler", training.SaveWeightsForSamplerView.as_view()),
    path("load_weights", training.LoadWeightsView.as_view()),
    path("save_weights_external", training.SaveWeightsExternalView.as_view()),
    path("retrieve_future", future_views.retrieve_future),
    path("training_runs", rest_views.TrainingRunListView.as_view()),
    path("training_runs/<str:run_id>", rest_views.TrainingRunDetailView.as_view()),
    path("training_runs/<str:run_id>/checkpoints", rest_views.RunCheckpointListView.as_view()),
    path(f"{C}/publish", rest_views.CheckpointPublishView.as_view()),
    path(f"{C}/ttl", rest_views.CheckpointTTLView.as_view()),
    path(f"{C}/external_weights_urls", rest_views.ExternalWeightsUrlsView.as_view()),
    path(f"{C}/archive", rest_views.CheckpointArchiveView.as_view()),
    path("downloads/<str:token>", rest_views.DownloadView.as_view()),
    path(C, rest_views.CheckpointDetailView.as_view()),
    path("checkpoints", rest_views.UserCheckpointListView.as_view()),
    path("weights_info", rest_views.WeightsInfoView.as_view()),
    path("create_sampling_session", sampling.CreateSamplingSessionView.as_view()),
    path("samplers/<str:sampler_id>", sampling.SamplerDetailView.as_view()),
    path("asample", sampling.SampleView.as_view()),
    path("billing/usage/events", billing.BillingUsageEventsView.as_view()),
    path("billing/usage/checkpoints/current", billing.CheckpointStorageView.as_view()),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    # RQ's dashboard (queues, workers, jobs) for distributed mode; staff login required.
    path("django-rq/", include("django_rq.urls")),
    path("dashboard/", include("dashboard_app.urls")),
    path("", RedirectView.as_view(pattern_name="dashboard:overview", permanent=False)),
    path("api/v1/", include(api)),
    path("oai/api/v1/", include("openai_app.urls")),
    path("metrics", monitoring.metrics_view),  # Prometheus; who may read it: monitoring_app.views  # OpenAI-compatible (docs/openai.md)
]

handler400 = "tuft_project.exceptions.json_400"
# JSON for the API and non-browser clients, an HTML page for browsers (dashboard, admin).
handler403 = "dashboard_app.error_pages.forbidden"
handler404 = "dashboard_app.error_pages.not_found"
handler500 = "dashboard_app.error_pages.server_error"
