"""Where data is: a local path, or the URI of a filesystem that pyarrow knows (`s3://bucket/key`,
`gs://bucket/key`, `hdfs://…`, `file:///…`), as one `Location`.

pyarrow.fs rather than fsspec: Parquet is read and written through it natively (no Python in
the data path), its S3 client is the AWS SDK's, and pyarrow is already
here. S3 settings are the standard ones: `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (an
S3-compatible server), `AWS_REGION` or `AWS_DEFAULT_REGION`, credentials from the SDK's chain
(`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE` and the shared files, instance
roles). Nothing here logs or stores them.
"""

import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cnn.errors import InputError
from cnn.io.writes import writing

S3_CONNECT_SECONDS = 5.0
S3_REQUEST_SECONDS = 20.0
S3_ATTEMPTS = 3
"""Tries of each S3 request: an endpoint that does not answer fails in about 15 s, named."""
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
REGION_VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION")


class StorageError(InputError):
    """A location that cannot be used: a scheme no filesystem here knows, a file that is not
    there or cannot be read; the message names it."""


class StorageUnavailableError(ConnectionError):
    """An object store that does not answer (a connection error: a task's retry may bridge
    it); the message names the location and the endpoint."""


@dataclass(frozen=True)
class Location:
    """A file or folder on some filesystem: `path` in the filesystem's own terms, `uri` as
    users and messages name it (a local absolute path, or `scheme://…`)."""

    filesystem: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def __truediv__(self, name: str) -> "Location":
        return Location(
            self.filesystem,
            posixpath.join(self.path, name),
            self.uri.rstrip("/") + "/" + name,
        )

    def info(self) -> pafs.FileInfo:
        """What is at the location (`type` NotFound when nothing); a store that cannot be
        reached raises StorageUnavailableError naming it."""
        try:
            return self.filesystem.get_file_info(self.path)
        except OSError as error:
            raise self._unreachable(error) from error

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def read_bytes(self) -> bytes:
        """The whole file."""
        try:
            with self.filesystem.open_input_stream(self.path) as stream:
                return stream.read()
        except FileNotFoundError as error:
            raise StorageError(f"{self.uri} does not exist") from error
        except OSError as error:
            raise self._unreachable(error) from error

    def read_text(self) -> str:
        """The whole file as UTF-8 text."""
        return self.read_bytes().decode("utf-8")

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file at once, atomically: a local file is written beside the target,
        flushed to disk and renamed over it; an object is one upload, visible only once
        complete. Either way a reader sees the old content or the new, never a part."""
        if not self.is_local:
            try:
                with self.filesystem.open_output_stream(self.path) as stream:
                    stream.write(data)
            except OSError as error:
                raise self._unreachable(error) from error
            return
        target = Path(self.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with writing(target), open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            temporary.replace(target)
            folder = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(folder)  # the rename itself on disk
            finally:
                os.close(folder)
        finally:
            temporary.unlink(missing_ok=True)

    def children(self) -> list["Location"]:
        """What the folder holds directly (nothing when it does not exist)."""
        selector = pafs.FileSelector(self.path, allow_not_found=True)
        try:
            found = self.filesystem.get_file_info(selector)
        except OSError as error:
            raise self._unreachable(error) from error
        return [self / posixpath.basename(info.path) for info in found]

    def make_folder(self) -> None:
        """Make the folder (and those above it) where there are folders: object stores have
        prefixes, which need no making."""
        if self.is_local:
            Path(self.path).mkdir(parents=True, exist_ok=True)

    def delete(self) -> None:
        """Delete the folder and all it holds, or the file (nothing there: nothing to do)."""
        kind = self.info().type
        try:
            if kind == pafs.FileType.Directory:
                self.filesystem.delete_dir(self.path)
            elif kind == pafs.FileType.File:
                self.filesystem.delete_file(self.path)
        except FileNotFoundError:
            return
        except OSError as error:
            raise self._unreachable(error) from error

    def parquet(self) -> pq.ParquetFile:
        """The Parquet file at the location, its footer read. Without `pre_buffer`, which
        pyarrow turns on by default: an open file keeps the last row group it pre-buffered, so
        a training that holds its shards open grew by a row group a shard (and reads from S3
        were no faster)."""
        return pq.ParquetFile(self.filesystem.open_input_file(self.path), pre_buffer=False)

    def _unreachable(self, error: OSError) -> StorageError | StorageUnavailableError:
        """The error to raise for `error`: it names the location and, for S3, the endpoint."""
        reason = " ".join(str(error).split())
        if self.is_local:
            return StorageError(f"cannot use {self.uri}: {reason}")
        endpoint = ""
        if isinstance(self.filesystem, pafs.S3FileSystem):
            endpoint = f" (endpoint {_s3_endpoint() or 'AWS'})"
        return StorageUnavailableError(f"cannot reach {self.uri}{endpoint}: {reason}")


def location(where: "str | Path | Location") -> Location:
    """The location a local path or a URI names (a Location: itself); StorageError for a
    scheme that no filesystem here knows."""
    if isinstance(where, Location):
        return where
    text = str(where)
    if "://" not in text:
        path = Path(text).expanduser().absolute()
        return Location(pafs.LocalFileSystem(), path.as_posix(), str(path))
    scheme = urlsplit(text).scheme.lower()
    if scheme == "s3":
        bucket_and_key = text.split("://", 1)[1].strip("/")
        return Location(_s3(), bucket_and_key, f"s3://{bucket_and_key}")
    try:
        filesystem, path = pafs.FileSystem.from_uri(text)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as error:
        raise StorageError(
            f"{text}: no filesystem for {scheme}:// here ({' '.join(str(error).split())})"
        ) from error
    if isinstance(filesystem, pafs.LocalFileSystem):
        return Location(filesystem, path, path)
    return Location(filesystem, path, text.rstrip("/"))


def _s3_endpoint() -> str | None:
    return next((os.environ[name] for name in ENDPOINT_VARIABLES if os.environ.get(name)), None)


def _s3() -> pafs.S3FileSystem:
    """An S3 client with deadlines: a few tries, seconds apart, instead of the SDK's minutes."""
    region = next((os.environ[name] for name in REGION_VARIABLES if os.environ.get(name)), None)
    return pafs.S3FileSystem(
        endpoint_override=_s3_endpoint(),
        region=region,  # else the SDK's own: the profile's, or us-east-1
        connect_timeout=S3_CONNECT_SECONDS,
        request_timeout=S3_REQUEST_SECONDS,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS),
        allow_bucket_creation=True,
    )
