"""Where model folders come from: local paths and object storage.

A repository is a *source*: it lists its model folders, describes each
folder's files cheaply (a fingerprint of names, sizes and modification
stamps, no content read) and hands the loader a local folder holding the
model's files. For a local repository that folder is the model folder
itself. For object storage (``s3://``, ``gs://``, ``as://``, through fsspec's
s3fs / gcsfs / adlfs, installed with the ``s3`` / ``gcs`` / ``azure`` extras)
it is a copy in a local cache that survives restarts: a file whose remote
size and ETag (or modification stamp) have not changed since the last copy
is reused instead of downloaded again.

Credentials come from the usual environment variables (the cloud SDKs read
them), or from a ``TRITON_CLOUD_CREDENTIAL_PATH`` JSON file in Triton's
format, where the longest key matching the start of the repository path
wins.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import posixpath
import shutil
import threading
from typing import Any

from naiad.core.errors import InvalidArgument, NaiadError
from naiad.core.extras import install_hint

log = logging.getLogger("naiad.repository")

# (relative path, size, stamp) for every file of a folder, sorted
FileSigs = tuple[tuple[str, int, str], ...]

# Files whose content is compared parsed (the configuration), not by stamp:
# rewriting config.pbtxt without changing its meaning reloads nothing.
_CONFIG_NAMES = ("config.pbtxt",)
_CONFIG_DIR = "configs"


@dataclasses.dataclass(frozen=True)
class ModelFingerprint:
    """What a model folder holds, by file metadata.

    ``shared``: files outside the version folders (labels, helper files),
    except the configuration; ``config``: the configuration files;
    ``versions``: each numeric version folder's files.
    """

    shared: FileSigs
    config: FileSigs
    versions: tuple[tuple[int, FileSigs], ...]

    def version(self, v: int) -> FileSigs | None:
        for num, sigs in self.versions:
            if num == v:
                return sigs
        return None


def fingerprint_from_sigs(sigs: list[tuple[str, int, str]]) -> ModelFingerprint:
    """Split a model folder's file signatures (paths relative to it) into a fingerprint."""
    shared: list = []
    config: list = []
    versions: dict[int, list] = {}
    for rel, size, stamp in sorted(sigs):
        head, _, rest = rel.partition("/")
        if rest and head.isdigit():
            versions.setdefault(int(head), []).append((rest, size, stamp))
        elif rest == "" and head.isdigit() and size < 0:
            versions.setdefault(int(head), [])  # an empty version folder
        elif (not rest and head in _CONFIG_NAMES) or head == _CONFIG_DIR:
            config.append((rel, size, stamp))
        else:
            shared.append((rel, size, stamp))
    return ModelFingerprint(tuple(shared), tuple(config),
                            tuple((v, tuple(f)) for v, f in sorted(versions.items())))


class RepositorySource:
    """One ``--model-repository``."""

    url: str
    remote: bool = False

    def check(self) -> None:
        """Raise NaiadError if the repository cannot be used at all."""

    def list_models(self) -> list[str]:
        raise NotImplementedError

    def fingerprint(self, name: str) -> ModelFingerprint:
        raise NotImplementedError

    def materialize(self, name: str) -> str:
        """A local folder holding the model's files (copied first if remote)."""
        raise NotImplementedError

    def location(self, name: str) -> str:
        """The model folder as users know it (for messages and the model's repository)."""
        raise NotImplementedError


class LocalRepository(RepositorySource):
    def __init__(self, path: str):
        self.url = path
        self.path = path

    def check(self) -> None:
        if not os.path.isdir(self.path):
            raise InvalidArgument(f"failed to stat file {self.path}: model repository not found")

    def list_models(self) -> list[str]:
        try:
            names = sorted(os.listdir(self.path))
        except OSError as exc:
            log.error("unable to read model repository '%s': %s", self.path, exc)
            return []
        return [n for n in names
                if not n.startswith(".") and os.path.isdir(os.path.join(self.path, n))]

    def fingerprint(self, name: str) -> ModelFingerprint:
        return local_fingerprint(os.path.join(self.path, name))

    def materialize(self, name: str) -> str:
        return os.path.join(self.path, name)

    def location(self, name: str) -> str:
        return os.path.join(self.path, name)


def local_fingerprint(model_dir: str) -> ModelFingerprint:
    sigs: list[tuple[str, int, str]] = []
    for root, dirs, files in os.walk(model_dir, followlinks=True):
        rel_root = os.path.relpath(root, model_dir)
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        if rel_root == ".":
            for d in dirs:
                if d.isdigit():
                    sigs.append((d, -1, ""))  # version folders count even when empty
        for f in files:
            if f.endswith((".pyc", ".pyo")):
                continue
            path = os.path.join(root, f)
            try:
                st = os.stat(path)
            except OSError:
                continue
            rel = f if rel_root == "." else f"{rel_root.replace(os.sep, '/')}/{f}"
            sigs.append((rel, st.st_size, str(st.st_mtime_ns)))
    return fingerprint_from_sigs(sigs)


# ---------------------------------------------------------------------------
# object storage
# ---------------------------------------------------------------------------

_EXTRAS = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "as": ("adlfs", "azure")}


def _credentials(scheme: str, url: str) -> Any:
    """The TRITON_CLOUD_CREDENTIAL_PATH entry for ``url``: longest matching key wins."""
    path = os.environ.get("TRITON_CLOUD_CREDENTIAL_PATH")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise InvalidArgument(
            f"unable to read the cloud credential file '{path}' "
            f"(TRITON_CLOUD_CREDENTIAL_PATH): {exc}") from None
    section = data.get(scheme) if isinstance(data, dict) else None
    if not isinstance(section, dict):
        return None
    best = None
    for key, value in section.items():
        if url.startswith(key) and (best is None or len(key) > len(best[0])):
            best = (key, value)
    return best[1] if best else None


def parse_s3_url(url: str) -> tuple[str | None, str]:
    """``s3://[http(s)://host:port/]bucket/path`` -> (endpoint URL or None, "bucket/path")."""
    rest = url[len("s3://"):]
    scheme = "http"
    for prefix in ("https://", "http://"):
        if rest.startswith(prefix):
            scheme = prefix[:-3]
            rest = rest[len(prefix):]
            host, _, path = rest.partition("/")
            return f"{scheme}://{host}", path.strip("/")
    first, _, path = rest.partition("/")
    host, colon, port = first.rpartition(":")
    if colon and host and port.isdigit():
        return f"{scheme}://{first}", path.strip("/")
    return None, rest.strip("/")


def _open_filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, root path inside it) for an object-storage URL."""
    scheme = url.split("://", 1)[0]
    if scheme not in _EXTRAS:
        raise InvalidArgument(
            f"unsupported model repository '{url}': expected a local path or an "
            "s3://, gs:// or as:// URL")
    module, extra = _EXTRAS[scheme]
    try:
        import fsspec

        __import__(module)
    except ImportError:
        raise InvalidArgument(
            f"model repository '{url}' needs the '{module}' package: "
            f"{install_hint(extra)}") from None
    creds = _credentials(scheme, url)
    # listings are never cached: polling must see new files
    common: dict[str, Any] = {"use_listings_cache": False, "skip_instance_cache": True}
    if scheme == "s3":
        endpoint, root = parse_s3_url(url)
        client: dict[str, Any] = {}
        opts: dict[str, Any] = dict(common)
        if endpoint:
            client["endpoint_url"] = endpoint
        if isinstance(creds, dict):
            if creds.get("key_id"):
                opts["key"] = creds["key_id"]
            if creds.get("secret_key"):
                opts["secret"] = creds["secret_key"]
            if creds.get("session_token"):
                opts["token"] = creds["session_token"]
            if creds.get("profile"):
                opts["profile"] = creds["profile"]
            if creds.get("region"):
                client["region_name"] = creds["region"]
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region and "region_name" not in client:
            client["region_name"] = region
        if client:
            opts["client_kwargs"] = client
        return fsspec.filesystem("s3", **opts), root
    if scheme == "gs":
        opts = dict(common)
        if isinstance(creds, str) and creds:
            opts["token"] = creds
        elif isinstance(creds, dict) and creds:
            opts["token"] = creds
        return fsspec.filesystem("gcs", **opts), url[len("gs://"):].strip("/")
    # as://account/container/path
    rest = url[len("as://"):].strip("/")
    account, _, root = rest.partition("/")
    opts = dict(common)
    opts["account_name"] = account
    key = os.environ.get("AZURE_STORAGE_KEY")
    if isinstance(creds, dict):
        account = creds.get("account_str") or account
        opts["account_name"] = account
        key = creds.get("account_key") or key
    if key:
        opts["account_key"] = key
    return fsspec.filesystem("abfs", **opts), root


def default_cache_root(scheme: str) -> str:
    """Where remote models are copied: Triton's *_MOUNT_DIRECTORY, NAIAD_REPOSITORY_CACHE,
    or ~/.cache/naiad/repositories."""
    triton_var = {"s3": "TRITON_AWS_MOUNT_DIRECTORY", "gs": "TRITON_GCS_MOUNT_DIRECTORY",
                  "as": "TRITON_AZURE_MOUNT_DIRECTORY"}.get(scheme)
    for var in (triton_var, "NAIAD_REPOSITORY_CACHE"):
        if var and os.environ.get(var):
            return os.environ[var]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "naiad", "repositories")


def _safe_relpath(rel: str) -> str | None:
    """A remote key relative to a model folder, or None if it would leave it."""
    rel = rel.strip("/")
    if not rel or "\x00" in rel:
        return None
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return rel


class RemoteRepository(RepositorySource):
    """A repository in object storage, copied model by model into a local cache."""

    remote = True

    def __init__(self, url: str, cache_root: str | None = None):
        self.url = url.rstrip("/")
        self.scheme = url.split("://", 1)[0]
        self._fs: Any = None
        self._root = ""
        self.cache_root = cache_root or default_cache_root(self.scheme)
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        self.cache_dir = os.path.join(self.cache_root, digest)
        self._lock = threading.Lock()
        # statistics, for logs and tests: files downloaded and reused from the cache
        self.downloaded = 0
        self.reused = 0

    @property
    def fs(self) -> Any:
        if self._fs is None:
            self._fs, self._root = _open_filesystem(self.url)
        return self._fs

    def check(self) -> None:
        fs = self.fs
        try:
            ok = fs.isdir(self._root) if self._root else True
        except Exception as exc:  # noqa: BLE001 - any client error is the user's to see
            raise InvalidArgument(
                f"unable to access model repository '{self.url}': {exc}") from None
        if not ok:
            raise InvalidArgument(
                f"failed to stat file {self.url}: model repository not found")

    def _model_root(self, name: str) -> str:
        return f"{self._root}/{name}" if self._root else name

    def list_models(self) -> list[str]:
        fs = self.fs
        try:
            entries = fs.ls(self._root or "", detail=True)
        except FileNotFoundError:
            return []
        except Exception as exc:  # noqa: BLE001
            log.error("unable to list model repository '%s': %s", self.url, exc)
            return []
        names = []
        for info in entries:
            if info.get("type") != "directory":
                continue
            name = posixpath.basename(info["name"].rstrip("/"))
            if name and not name.startswith("."):
                names.append(name)
        return sorted(set(names))

    def _remote_files(self, name: str) -> dict[str, dict]:
        """relative path -> info for every object under the model folder."""
        root = self._model_root(name)
        try:
            found = self.fs.find(root, detail=True, withdirs=False)
        except FileNotFoundError:
            return {}
        out: dict[str, dict] = {}
        for path, info in found.items():
            full = path.rstrip("/")
            if not full.startswith(root + "/"):
                continue
            rel = _safe_relpath(full[len(root) + 1:])
            if rel is None:
                log.warning("ignoring object '%s' of model '%s': its key leaves the model "
                            "folder", path, name)
                continue
            if info.get("type") == "directory" or full.endswith("/"):
                continue
            out[rel] = info
        return out

    @staticmethod
    def _stamp(info: dict) -> str:
        for key in ("ETag", "etag", "md5Hash", "content_settings", "LastModified",
                    "last_modified", "updated", "mtime"):
            value = info.get(key)
            if value:
                return str(value)
        return ""

    def fingerprint(self, name: str) -> ModelFingerprint:
        sigs = []
        for rel, info in self._remote_files(name).items():
            sigs.append((rel, int(info.get("size") or 0), self._stamp(info)))
            head, _, rest = rel.partition("/")
            if rest and head.isdigit():
                sigs.append((head, -1, ""))
        return fingerprint_from_sigs(list(set(sigs)))

    def location(self, name: str) -> str:
        return f"{self.url}/{name}"

    def materialize(self, name: str) -> str:
        """Bring the local copy of one model up to date; return its folder."""
        with self._lock:
            return self._sync(name)

    def _sync(self, name: str) -> str:
        local = os.path.join(self.cache_dir, name)
        manifest_path = os.path.join(self.cache_dir, f".{name}.manifest.json")
        try:
            with open(manifest_path, encoding="utf-8") as f:
                manifest: dict[str, list] = json.load(f)
        except (OSError, ValueError):
            manifest = {}
        try:
            remote = self._remote_files(name)
        except NaiadError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise InvalidArgument(
                f"unable to list model '{name}' in repository '{self.url}': {exc}") from None
        if not remote:
            raise InvalidArgument(
                f"model '{name}' has no files in repository '{self.url}'")
        os.makedirs(local, exist_ok=True)
        root = self._model_root(name)
        downloaded = reused = 0
        new_manifest: dict[str, list] = {}
        for rel, info in sorted(remote.items()):
            sig = [int(info.get("size") or 0), self._stamp(info)]
            target = os.path.join(local, *rel.split("/"))
            if (manifest.get(rel) == sig and sig[1] and os.path.isfile(target)
                    and os.path.getsize(target) == sig[0]):
                self.reused += 1
                reused += 1
                new_manifest[rel] = sig
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.naiad-part-{os.getpid()}"  # replicas may share a cache
            try:
                self.fs.get_file(f"{root}/{rel}", tmp)
                os.replace(tmp, target)
            except Exception as exc:  # noqa: BLE001
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise InvalidArgument(
                    f"unable to download '{self.url}/{name}/{rel}': {exc}") from None
            self.downloaded += 1
            downloaded += 1
            new_manifest[rel] = sig
        # files deleted remotely go from the copy too
        for dirpath, _dirs, files in os.walk(local, topdown=False):
            for f in files:
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, local).replace(os.sep, "/")
                if rel not in new_manifest and not rel.endswith((".pyc", ".pyo")) \
                        and "__pycache__" not in rel and ".naiad-part-" not in f:
                    os.unlink(path)
            if dirpath != local and not os.listdir(dirpath):
                os.rmdir(dirpath)
        # version folders exist locally even when their objects were folder markers only
        log.info("model '%s' from %s: %d file(s) downloaded, %d reused from the cache %s",
                 name, self.url, downloaded, reused, local)
        tmp_manifest = f"{manifest_path}.tmp-{os.getpid()}"
        with open(tmp_manifest, "w", encoding="utf-8") as f:
            json.dump(new_manifest, f)
        os.replace(tmp_manifest, manifest_path)
        return local


def open_repository(url: str) -> RepositorySource:
    """The source for one ``--model-repository`` value."""
    if "://" in url:
        return RemoteRepository(url)
    return LocalRepository(url)


# ---------------------------------------------------------------------------
# files sent with a load request
# ---------------------------------------------------------------------------


def write_override_files(name: str, files: dict[str, bytes]) -> str:
    """Write a load request's ``file:`` parameters into a fresh model folder.

    Every path must stay inside the folder once normalised, as Triton
    requires; nothing is written unless all of them do.
    """
    import tempfile

    folder = tempfile.mkdtemp(prefix=f"naiad-model-{_safe_name(name)}-")
    try:
        targets: list[tuple[str, bytes, str]] = []
        for rel, data in files.items():
            key = f"file:{rel}"
            norm = os.path.normpath(os.path.join(folder, rel))
            if (not rel or "\x00" in rel or os.path.isabs(rel)
                    or os.path.commonpath([folder, norm]) != folder or norm == folder):
                raise InvalidArgument(
                    f"Invalid file parameter '{key}' with normalized path '{norm}' must stay "
                    "within model directory.")
            targets.append((norm, data, key))
        for path, data, key in targets:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
            except OSError as exc:  # too long, a file where a folder must be, ...
                shown = key if len(key) <= 100 else key[:100] + "..."
                raise InvalidArgument(
                    f"Invalid file parameter '{shown}': {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40]
