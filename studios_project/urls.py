from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("admin/", admin.site.urls),
    # Browsers ask for /favicon.ico where a page names no icon (the admin's, the API's, a JSON answer).
    path("favicon.ico", RedirectView.as_view(url=static("studios/favicon.svg"), permanent=True)),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/v1/", include("studios.api.urls")),
    path("", include("studios.urls")),
    path("", include("checkpoints.urls")),
]

handler500 = "studios.views.server_error"
