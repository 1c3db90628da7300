"""Where run artifacts are kept: a directory under `KEEL_HOME` by default, or an
S3-compatible bucket (boto3 is imported only when one is configured)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol

from keel.errors import InvalidRequestError, NotFoundError

if TYPE_CHECKING:
    from keel.tracking.config import ArtifactStoreConfig

__all__ = [
    "ArtifactStore",
    "LocalArtifactStore",
    "S3ArtifactStore",
    "build_artifact_store",
    "checked_name",
]

MAX_NAME = 500


def checked_name(name: str, param: str = "name") -> str:
    """An artifact name is a relative POSIX path inside its run: no `..`, no absolute path, no
    empty or control characters, so no name can reach another run's files."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        raise InvalidRequestError(
            f"{param}: artifact names are 1 to {MAX_NAME} characters", param=param
        )
    if any(ord(char) < 32 for char in name) or "\\" in name:
        raise InvalidRequestError(
            f"{param}: control characters and backslashes are not allowed", param=param
        )
    path = PurePosixPath(name)
    if path.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        raise InvalidRequestError(
            f"{param}: {name!r} must be a relative path without '.' or '..' parts", param=param
        )
    return name


class ArtifactStore(Protocol):
    def put(self, run_id: str, name: str, data: bytes) -> str:
        """Store the bytes; return where they are (a file path or an s3:// URI)."""

    def get(self, run_id: str, name: str) -> bytes: ...


class LocalArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser()

    def _path(self, run_id: str, name: str) -> Path:
        return self.root / run_id / checked_name(name)

    def put(self, run_id: str, name: str, data: bytes) -> str:
        target = self._path(run_id, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Written aside then renamed: a reader never sees half a file.
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return str(target)

    def get(self, run_id: str, name: str) -> bytes:
        try:
            return self._path(run_id, name).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"run {run_id} has no artifact {name!r} in the store") from None


class S3ArtifactStore:
    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
    ) -> None:
        if client is None:
            import boto3

            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)
        self._client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def _key(self, run_id: str, name: str) -> str:
        parts = [self.prefix, run_id, checked_name(name)]
        return "/".join(part for part in parts if part)

    def put(self, run_id: str, name: str, data: bytes) -> str:
        key = self._key(run_id, name)
        self._client.put_object(Bucket=self.bucket, Key=key, Body=data)
        return f"s3://{self.bucket}/{key}"

    def get(self, run_id: str, name: str) -> bytes:
        key = self._key(run_id, name)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404"):
                raise NotFoundError(f"run {run_id} has no artifact {name!r} in the store") from None
            raise
        body: bytes = response["Body"].read()
        return body


def build_artifact_store(config: ArtifactStoreConfig, home: Path) -> ArtifactStore:
    if config.kind == "s3":
        assert config.bucket is not None  # the config validator requires it
        return S3ArtifactStore(
            config.bucket,
            prefix=config.prefix,
            endpoint_url=config.endpoint_url,
            region=config.region,
        )
    return LocalArtifactStore(config.path or home / "artifacts")
