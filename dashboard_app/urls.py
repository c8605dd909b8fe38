from django.urls import path

from dashboard_app import views

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("login/", views.login, name="login"),
    path("logout/", views.logout, name="logout"),
    path("runs/<str:run_id>/", views.run_detail, name="run"),
    path("runs/<str:run_id>/metrics.json", views.run_metrics_json, name="run_metrics_json"),
    path("runs/<str:run_id>/metrics.csv", views.run_metrics_csv, name="run_metrics_csv"),
    path("compare/", views.compare, name="compare"),
    path("playground/", views.playground_page, name="playground"),
    path("playground/sample", views.playground_sample, name="playground_sample"),
    path("playground/results/<str:request_id>", views.playground_result, name="playground_result"),
    path("tenants/", views.tenants, name="tenants"),
    path("tenants/<int:tenant_id>/", views.tenant_detail, name="tenant"),
    path("status/", views.status_page, name="status"),
    path("storage/", views.storage_page, name="storage"),
    path("usage.csv", views.usage_csv, name="usage_csv"),
]
