from django.conf import settings

from ..credentials import UnreadableCredentials
from .aws_batch import AwsBatchBackend
from .base import BackendError, ComputeBackend, Mount, SessionSpec, SessionState
from .local import LocalBackend

__all__ = ["BackendError", "ComputeBackend", "Mount", "SessionSpec", "SessionState", "backend_for", "local_backend"]


def local_backend():
    """This machine's: every local compute environment shares it (and its sessions folder)."""
    return LocalBackend(
        sessions_dir=settings.DATA_DIR / "sessions",
        isolation=settings.STUDIOS_LOCAL_ISOLATION,
        hidden=[settings.DATA_DIR],
        rootfs=settings.STUDIOS_TEMPLATE_ROOTFS,
    )


def backend_for(compute_environment):
    if compute_environment.kind == "local":
        return local_backend()
    if compute_environment.kind == "aws-batch":
        try:
            credentials = compute_environment.aws_credentials()
        except UnreadableCredentials as error:
            raise BackendError(str(error)) from None
        return AwsBatchBackend(
            region=compute_environment.region,
            job_queue=compute_environment.job_queue,
            credentials=credentials,
            images=settings.STUDIOS_TEMPLATE_IMAGES,
        )
    raise BackendError(f"Compute environments of kind {compute_environment.kind} are not supported yet.")
