from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from . import views

WORKSPACE = "workspaces/<slug:org>/<slug:workspace>/"

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api_schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api_schema"), name="api_docs"),
    path("workspaces/", views.WorkspaceList.as_view(), name="api_workspaces"),
    path(WORKSPACE, views.WorkspaceDetail.as_view(), name="api_workspace"),
    path(WORKSPACE + "studios/", views.StudioList.as_view(), name="api_studios"),
    path(WORKSPACE + "templates/", views.TemplateList.as_view(), name="api_templates"),
    path(WORKSPACE + "compute-environments/", views.ComputeEnvironmentList.as_view(), name="api_compute_environments"),
    path(WORKSPACE + "datasets/", views.DatasetList.as_view(), name="api_datasets"),
    path("studios/<int:studio_id>/", views.StudioDetail.as_view(), name="api_studio"),
    path("studios/<int:studio_id>/start/", views.StudioStart.as_view(), name="api_studio_start"),
    path("studios/<int:studio_id>/stop/", views.StudioStop.as_view(), name="api_studio_stop"),
    path("studios/<int:studio_id>/extend/", views.StudioExtend.as_view(), name="api_studio_extend"),
    path("studios/<int:studio_id>/force-stop/", views.StudioForceStop.as_view(), name="api_studio_force_stop"),
    path("studios/<int:studio_id>/checkpoints/", views.CheckpointList.as_view(), name="api_checkpoints"),
    path("checkpoints/<int:checkpoint_id>/", views.CheckpointDetail.as_view(), name="api_checkpoint"),
    path("checkpoints/<int:checkpoint_id>/start-as-new/", views.StartAsNew.as_view(), name="api_start_as_new"),
    path("checkpoints/<int:checkpoint_id>/add-as-new/", views.AddAsNew.as_view(), name="api_add_as_new"),
]
