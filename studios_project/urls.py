from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/v1/", include("studios.api.urls")),
    path("", include("studios.urls")),
    path("", include("checkpoints.urls")),
]

handler500 = "studios.views.server_error"
