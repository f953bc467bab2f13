from typing import Protocol

from django.conf import settings

from ..credentials import UnreadableCredentials
from ..supervisor.protocol import Mount
from .aws_batch import AwsBatchBackend
from .base import BackendError, ComputeBackend, SessionSpec, SessionState
from .local import LocalBackend
from .slurm import SlurmBackend

__all__ = [
    "BackendError",
    "ComputeBackend",
    "LocalBackend",
    "Mount",
    "SessionSpec",
    "SessionState",
    "backend_for",
    "local_backend",
]


class ComputeEnvironment(Protocol):
    """What a backend is built from: the ``ComputeEnvironment`` row, without importing the models."""

    kind: str
    region: str
    job_queue: str
    partition: str
    account: str
    qos: str
    work_dir: str
    max_cpus: int
    max_memory_mb: int

    def template_images(self) -> dict[str, str]: ...

    def aws_credentials(self) -> dict[str, str]: ...


def local_backend(images: dict[str, str] | None = None) -> LocalBackend:
    """This machine's: every local compute environment shares it (its sessions folder and its unpacked images);
    ``images``: the environment's {template: image reference}, the platform's defaults when not given."""
    return LocalBackend(
        sessions_dir=settings.DATA_DIR / "sessions",
        isolation=settings.STUDIOS_LOCAL_ISOLATION,
        hidden=[settings.DATA_DIR],
        rootfs=settings.STUDIOS_TEMPLATE_ROOTFS,
        images=settings.STUDIOS_TEMPLATE_IMAGES if images is None else images,
        image_cache=settings.STUDIOS_IMAGE_CACHE_DIR,
    )


def _credentials(compute_environment: ComputeEnvironment) -> dict[str, str]:
    try:
        return compute_environment.aws_credentials()
    except UnreadableCredentials as error:
        raise BackendError(str(error)) from None


def backend_for(compute_environment: ComputeEnvironment) -> ComputeBackend:
    if compute_environment.kind == "local":
        return local_backend(compute_environment.template_images())
    if compute_environment.kind == "aws-batch":
        return AwsBatchBackend(
            region=compute_environment.region,
            job_queue=compute_environment.job_queue,
            credentials=_credentials(compute_environment),
            images=compute_environment.template_images(),
        )
    if compute_environment.kind == "slurm":
        return SlurmBackend(
            partition=compute_environment.partition,
            account=compute_environment.account,
            qos=compute_environment.qos,
            work_dir=compute_environment.work_dir,
            credentials=_credentials(compute_environment),
            images=compute_environment.template_images(),
            image_cache=str(settings.STUDIOS_IMAGE_CACHE_DIR),
            max_cpus=compute_environment.max_cpus,
            max_memory_mb=compute_environment.max_memory_mb,
        )
    raise BackendError(f"Compute environments of kind {compute_environment.kind} are not supported yet.")
