from django.urls import path

from dashboard_app import views

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("login/", views.login, name="login"),
    path("logout/", views.logout, name="logout"),
    path("runs/<str:run_id>/", views.run_detail, name="run"),
    path("tenants/", views.tenants, name="tenants"),
    path("usage.csv", views.usage_csv, name="usage_csv"),
]
