from django.urls import path

from . import views

urlpatterns = [
    path("checkpoints/<int:checkpoint_id>/rename/", views.checkpoint_rename, name="checkpoint_rename"),
    path("checkpoints/<int:checkpoint_id>/start-as-new/", views.start_as_new, name="start_as_new"),
]
