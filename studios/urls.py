from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("w/<slug:org>/<slug:workspace>/", views.studio_list, name="studio_list"),
    path("w/<slug:org>/<slug:workspace>/studios/add/", views.studio_add, name="studio_add"),
    path("w/<slug:org>/<slug:workspace>/activity/", views.workspace_activity, name="workspace_activity"),
    path("w/<slug:org>/<slug:workspace>/compute/", views.environment_list, name="environment_list"),
    path("w/<slug:org>/<slug:workspace>/compute/add/", views.environment_edit, name="environment_add"),
    path(
        "w/<slug:org>/<slug:workspace>/compute/add/slurm/",
        views.environment_edit,
        {"kind": "slurm"},
        name="environment_add_slurm",
    ),
    path(
        "w/<slug:org>/<slug:workspace>/compute/<int:environment_id>/", views.environment_edit, name="environment_edit"
    ),
    path("studios/<int:studio_id>/", views.studio_detail, name="studio_detail"),
    path("studios/<int:studio_id>/ticket/", views.studio_ticket, name="studio_ticket"),
    path("studios/<int:studio_id>/start/", views.studio_start, name="studio_start"),
    path("studios/<int:studio_id>/stop/", views.studio_stop, name="studio_stop"),
    path("studios/<int:studio_id>/extend/", views.studio_extend, name="studio_extend"),
    path("studios/<int:studio_id>/keep/", views.studio_keep, name="studio_keep"),
    path("studios/<int:studio_id>/force-stop/", views.studio_force_stop, name="studio_force_stop"),
    path("studios/<int:studio_id>/delete/", views.studio_delete, name="studio_delete"),
    path("account/tokens/", views.access_tokens, name="access_tokens"),
    path("account/tokens/<int:token_id>/revoke/", views.access_token_revoke, name="access_token_revoke"),
    path("api/sessions/<str:what>", views.session_report, name="session_report"),
    path("api/session-tickets", views.redeem_start_ticket, name="redeem_start_ticket"),
    path("internal/pages-relay/", views.pages_relay, name="pages_relay"),
    path("metrics", views.metrics, name="metrics"),
]
