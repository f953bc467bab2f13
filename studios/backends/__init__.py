from django.conf import settings

from .base import BackendError, ComputeBackend, Mount, SessionSpec, SessionState
from .local import LocalBackend

__all__ = ["BackendError", "ComputeBackend", "Mount", "SessionSpec", "SessionState", "backend_for"]


def backend_for(compute_environment):
    if compute_environment.kind == "local":
        return LocalBackend(
            sessions_dir=settings.DATA_DIR / "sessions",
            isolation=settings.STUDIOS_LOCAL_ISOLATION,
            hidden=[settings.DATA_DIR],
            layer_quota_mb=settings.STUDIOS_WRITABLE_LAYER_MB,
        )
    raise BackendError(f"Compute environments of kind {compute_environment.kind} are not supported yet.")
