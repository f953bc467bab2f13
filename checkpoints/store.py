"""Where checkpoint content lives: a local folder or ``s3://bucket/prefix``, behind one small interface.

Everything sits under ``<work dir>/.studios/checkpoints/``. No Django here: the session agent,
which writes checkpoints from inside the session, uses this module too.
"""

import contextlib
import ctypes
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CHECKPOINTS_DIR = ".studios/checkpoints"
_libc = ctypes.CDLL(None, use_errno=True)
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
SYNC_FILE_RANGE_WRITE = 2


class MissingContent(Exception):
    """A piece of a checkpoint is not in the store."""


class ContentStore(ABC):
    @abstractmethod
    def has(self, key: str) -> bool: ...

    @abstractmethod
    def put(self, key: str, content: bytes) -> None:
        """Write atomically: a reader sees all of it or nothing. Durable once ``persist`` returns."""

    @abstractmethod
    def persist(self) -> None:
        """Make everything put so far durable (a checkpoint's content before its manifest, then the manifest)."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The content, or MissingContent."""

    @abstractmethod
    def listing(self, prefix: str) -> Iterator[tuple[str, datetime]]:
        """(key, last modified as an aware datetime) for every key under ``prefix``."""

    @abstractmethod
    def delete(self, key: str) -> None: ...


class LocalStore(ContentStore):
    def __init__(self, work_dir: str | Path) -> None:
        self.root = Path(work_dir) / CHECKPOINTS_DIR

    def has(self, key: str) -> bool:
        return (self.root / key).exists()

    def put(self, key: str, content: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(content)
                file.flush()
                # Start writing it to disk now, without waiting: ``persist`` then has little left to wait for.
                _libc.sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def persist(self) -> None:
        """One syncfs of the store's filesystem: far cheaper than an fsync per object of a checkpoint."""
        self.root.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _libc.syncfs(descriptor) != 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        finally:
            os.close(descriptor)

    def get(self, key: str) -> bytes:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            raise MissingContent(key) from None

    def listing(self, prefix: str) -> Iterator[tuple[str, datetime]]:
        base = self.root / prefix
        if not base.exists():
            return
        for path in base.rglob("*"):
            if path.is_file() and not path.name.startswith(".incoming-"):
                modified = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
                yield str(path.relative_to(self.root)), modified

    def delete(self, key: str) -> None:
        """Remove the key; and a studio's manifest folder once its last manifest is gone (a deleted studio leaves
        nothing). The objects' shared fan-out folders stay: a checkpoint being written may be about to use one."""
        path = self.root / key
        path.unlink(missing_ok=True)
        if path.parent.parent == self.root / "manifests":
            with contextlib.suppress(OSError):  # not empty: the studio's other manifests are live
                path.parent.rmdir()


class S3Store(ContentStore):
    """S3 through boto3. Credentials and endpoint come from the usual AWS environment variables."""

    def __init__(self, uri: str, client: Any = None) -> None:
        import boto3

        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/{CHECKPOINTS_DIR}/".lstrip("/")
        self.client = client or boto3.client("s3")

    def has(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
            return True
        except ClientError as error:
            if error.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def put(self, key: str, content: bytes) -> None:
        # One PUT is atomic on S3: the object appears whole once the call has succeeded.
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=content)

    def persist(self) -> None:
        """Nothing to do: an S3 put is durable once it returns."""

    def get(self, key: str) -> bytes:
        try:
            content: bytes = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise MissingContent(key) from None
        return content

    def listing(self, prefix: str) -> Iterator[tuple[str, datetime]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"].removeprefix(self.prefix), item["LastModified"]

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)


def store_for(work_dir: str) -> ContentStore:
    if work_dir.startswith("s3://"):
        return S3Store(work_dir)
    return LocalStore(work_dir)
