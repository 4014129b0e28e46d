"""The Files API (Developer API flavour) for the local test server's file-based batches.

``GeminiTestServer`` (gemini_test_server) keeps a ``FileStore`` and sends it the
file routes; ``BatchStore`` (gemini_test_batches) reads the JSONL a batch names
and writes the JSONL of its responses here. Nothing here knows HTTP. Served:

    POST   /upload/{version}/files                  a resumable upload (below)
    GET    /{version}/files/{id}                    the file resource
    DELETE /{version}/files/{id}                    ``{}``; the file is gone
    GET    /{version}/files/{id}:download?alt=media its bytes (``/download/{version}/...`` too)

An upload, as google-genai's ``files.upload`` makes it: a POST with
``X-Goog-Upload-Protocol: resumable`` and ``X-Goog-Upload-Command: start``, the
file's size in ``X-Goog-Upload-Header-Content-Length`` and its metadata in the
JSON body ``{"file": {...}}`` (the SDK writes it in snake_case:
``display_name``, ``mime_type``, ``size_bytes``; camelCase is read too). The
reply is an empty 200 with ``X-Goog-Upload-URL: {base}/upload/{version}/files?
upload_id=<n>&upload_protocol=resumable`` and ``X-Goog-Upload-Status: active``.
The bytes then come to that URL in POSTs with ``X-Goog-Upload-Command: upload``
(more to come: an empty 200, status ``active``) or ``upload, finalize`` (the
last), each with ``X-Goog-Upload-Offset`` = the bytes received so far. These
POSTs carry no API key (the SDK sends only the upload headers): the upload id is
their credential. The finalize reply has status ``final`` and the body
``{"file": <resource>}``. Every reply of the upload URL, errors included, has an
``X-Goog-Upload-Status`` header: without one the SDK retries, with sleeps.

A file resource::

    {"name": "files/<id>", "displayName", "mimeType", "sizeBytes": "<n>",
     "createTime", "updateTime", "expirationTime" (48 h on),
     "sha256Hash": <base64 of the hex digest>, "uri": "{base}/{version}/files/<id>",
     "state": "ACTIVE", "source": "UPLOADED" | "GENERATED",
     generated files only: "downloadUri": "{base}/download/{version}/files/<id>:download?alt=media"}

Ids are lowercase letters and digits (``upload0001``, ``responses0001``), as the
SDK's ``t_file_name`` expects of a file URI. Only generated files can be
downloaded (an uploaded one gets a 400, as from the real service).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

EXPIRY_S = 48 * 3600
ErrorBody = Callable[[int, str], dict]
Reply = tuple[int, "dict | Raw"]


@dataclass
class Raw:
    """A reply that is not a plain JSON object: its bytes, their type and extra headers."""

    data: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class ServedFile:
    """One file held by the server: uploaded by a client or generated (a batch's responses)."""

    id: str
    display_name: str
    mime_type: str
    data: bytes
    source: str  # UPLOADED | GENERATED
    create_time: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return f"files/{self.id}"

    def resource(self, base_url: str, version: str) -> dict:
        digest = hashlib.sha256(self.data).hexdigest().encode("ascii")
        resource = {
            "name": self.name,
            "displayName": self.display_name,
            "mimeType": self.mime_type,
            "sizeBytes": str(len(self.data)),
            "createTime": rfc3339(self.create_time),
            "updateTime": rfc3339(self.create_time),
            "expirationTime": rfc3339(self.create_time + EXPIRY_S),
            "sha256Hash": base64.b64encode(digest).decode("ascii"),
            "uri": f"{base_url}/{version}/files/{self.id}",
            "state": "ACTIVE",
            "source": self.source,
        }
        if self.source == "GENERATED":
            resource["downloadUri"] = f"{base_url}/download/{version}/files/{self.id}:download?alt=media"
        return resource


@dataclass
class _Upload:
    """A resumable upload under way: the start request's metadata and the bytes received."""

    meta: dict
    size: int | None
    data: bytearray = field(default_factory=bytearray)


class FileStore:
    """The server's files, uploads under way and file counters, under a lock of their own."""

    def __init__(self, error: ErrorBody):
        self.error = error
        self._lock = threading.Lock()  # taken inside the batch lock, never the other way round
        self._files: dict[str, ServedFile] = {}
        self._uploads: dict[str, _Upload] = {}
        self._next_upload = 0
        self.uploads = 0  # uploads started (files.upload calls that got past the API key)
        self.downloads = 0  # download requests, found or not

    def all(self) -> list[ServedFile]:
        with self._lock:
            return list(self._files.values())

    def read(self, name: str) -> bytes | None:
        """The bytes of ``files/<id>``, or None."""
        with self._lock:
            found = self._files.get(name.removeprefix("files/"))
            return None if found is None else found.data

    def add_generated(self, file_id: str, display_name: str, data: bytes) -> str:
        """Keep a generated JSONL file (a batch's responses); its name, ``files/<id>``."""
        with self._lock:
            served = ServedFile(file_id, display_name, "application/jsonl", data, "GENERATED")
            self._files[file_id] = served
            return served.name

    def not_found(self, name: str) -> dict:
        return self.error(404, f"Requested entity was not found: {name}")

    # -- the routes: each returns (HTTP status, JSON body or Raw) ---------------------------------
    def serve(
        self, route: str, version: str, file_id: str | None, headers, body: dict, base_url: str
    ) -> Reply:
        """A file route other than the upload URL (``upload``, ``file``, ``delete_file``, ``download``)."""
        if route == "upload":
            return self.start_upload(body, headers, base_url, version)
        assert file_id is not None
        if route == "file":
            return self.get(file_id, base_url, version)
        if route == "delete_file":
            return self.delete(file_id)
        return self.download(file_id)

    def start_upload(self, body: dict, headers, base_url: str, version: str) -> Reply:
        protocol = (headers.get("X-Goog-Upload-Protocol"), headers.get("X-Goog-Upload-Command"))
        if protocol != ("resumable", "start"):
            return 400, self.error(400, f"only resumable uploads are served, not {protocol}")
        meta = body.get("file") or {}
        size = headers.get("X-Goog-Upload-Header-Content-Length") or _field(meta, "size_bytes")
        if size is not None and not str(size).isdigit():
            return 400, self.error(400, f"invalid upload size {size!r}")
        with self._lock:
            self.uploads += 1
            self._next_upload += 1
            upload_id = f"upload{self._next_upload:04d}"
            self._uploads[upload_id] = _Upload(meta, None if size is None else int(size))
        url = f"{base_url}/upload/{version}/files?upload_id={upload_id}&upload_protocol=resumable"
        return 200, Raw(b"", headers={"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"})

    def upload_chunk(self, upload_id: str, headers, data: bytes, base_url: str, version: str) -> Reply:
        """One POST of bytes to an upload URL: ``upload`` (more to come) or ``upload, finalize``."""
        command = {part.strip() for part in (headers.get("X-Goog-Upload-Command") or "").split(",")}
        offset = headers.get("X-Goog-Upload-Offset") or "0"
        with self._lock:
            upload = self._uploads.get(upload_id)
            if upload is None:
                return _final(404, self.error(404, f"no upload {upload_id!r} under way"))
            if "upload" not in command or offset != str(len(upload.data)):
                problem = f"command {headers.get('X-Goog-Upload-Command')!r} at offset {offset}"
                return _final(400, self.error(400, f"{problem}: {len(upload.data)} bytes received"))
            upload.data += data
            if "finalize" not in command:
                return 200, Raw(b"", headers={"X-Goog-Upload-Status": "active"})
            del self._uploads[upload_id]
            if upload.size is not None and upload.size != len(upload.data):
                return _final(400, self.error(400, f"{len(upload.data)} bytes, not {upload.size}"))
            served = self._keep_upload(upload_id, upload)
            if isinstance(served, dict):
                return _final(409, served)
        return _final(200, {"file": served.resource(base_url, version)})

    def get(self, file_id: str, base_url: str, version: str) -> Reply:
        with self._lock:
            served = self._files.get(file_id)
        if served is None:
            return 404, self.not_found(f"files/{file_id}")
        return 200, served.resource(base_url, version)

    def delete(self, file_id: str) -> Reply:
        with self._lock:
            if self._files.pop(file_id, None) is None:
                return 404, self.not_found(f"files/{file_id}")
        return 200, {}

    def download(self, file_id: str) -> Reply:
        with self._lock:
            self.downloads += 1
            served = self._files.get(file_id)
        if served is None:
            return 404, self.not_found(f"files/{file_id}")
        if served.source != "GENERATED":
            return 400, self.error(400, f"Only generated files can be downloaded: files/{file_id}")
        return 200, Raw(served.data, "application/octet-stream")

    def _keep_upload(self, upload_id: str, upload: _Upload) -> ServedFile | dict:
        """The uploaded file, kept under the name asked for (if free) or the upload's id."""
        file_id = (_field(upload.meta, "name") or upload_id).removeprefix("files/")
        if file_id in self._files:
            return self.error(409, f"files/{file_id} already exists")
        mime = _field(upload.meta, "mime_type") or "application/octet-stream"
        served = ServedFile(
            file_id, _field(upload.meta, "display_name") or "", mime, bytes(upload.data), "UPLOADED"
        )
        self._files[file_id] = served
        return served


def _field(meta: dict, snake: str):
    """A field of the upload's metadata, in snake_case (as the SDK writes it) or camelCase."""
    head, *rest = snake.split("_")
    return meta.get(snake, meta.get(head + "".join(word.title() for word in rest)))


def _final(code: int, payload: dict) -> Reply:
    """A reply of the upload URL that ends the upload: the SDK retries any without a status."""
    return code, Raw(json.dumps(payload).encode("utf-8"), headers={"X-Goog-Upload-Status": "final"})


def rfc3339(seconds: float) -> str:
    """A POSIX time as RFC 3339 UTC with a Z, as Google's APIs write timestamps."""
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="microseconds")
    return stamp.replace("+00:00", "Z")
