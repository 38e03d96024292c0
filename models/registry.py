"""The model registry: one directory per version, verified before anything is loaded.

Layout (``<state_dir>/models`` unless told otherwise)::

    <root>/<version>/model.npz       the model (plain arrays, see models/scorer.py)
    <root>/<version>/metadata.json   metrics, windows, features, sha256 of model.npz, ...
    <root>/roles.json                which version this registry last promoted / shadowed

A version is ``YYYYMMDD-HHMMSS-<first 8 hex of the sha256>`` (UTC creation time), so
versions sort by age and name their content. A version directory is written under a
temporary name and renamed into place: a reader never sees half a model.

Verification (:func:`load_verified`) happens on every load, in the worker too:

1. ``metadata.json`` parses and names this version;
2. the sha256 of the model file's bytes equals the one in the metadata and, when the
   model comes from an announcement on ``fraud.models``, the announced one (the
   announcement is the trust anchor: editing the file *and* its metadata is caught
   there);
3. the model was trained on the feature set the running code computes
   (``FEATURE_SET_HASH`` and the feature names);
4. only then are the verified bytes (not a second read of the file) parsed.

Any failure raises :class:`ModelIntegrityError` with what differs; the caller keeps
the model it has. ``promote`` and ``shadow`` announce a version on ``fraud.models``
(compacted, keyed ``fraud:CHAMPION`` / ``fraud:SHADOW``); each worker loads it with
:func:`load_announced`. The artifact URI is a ``file://`` path: workers on other
machines need the registry on shared storage at the same path.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.errors import ModelError, ModelIntegrityError, ModelNotFoundError
from models.scorer import Model, ModelScorer, Thresholds, artifact_bytes, load_artifact
from streams.settings import Settings

MODEL_NAME = "fraud"
ARTIFACT_FILE = "model.npz"
METADATA_FILE = "metadata.json"
ROLES_FILE = "roles.json"
METADATA_FORMAT = 1
ANNOUNCE_TIMEOUT_S = 30.0

Role = Literal["CHAMPION", "SHADOW"]
ROLES: tuple[Role, ...] = ("CHAMPION", "SHADOW")


def default_registry_dir(settings: Settings | None = None) -> Path:
    """``settings.model_registry_dir`` when the settings have it, else ``<state_dir>/models``."""
    if settings is None:
        from streams.settings import load_settings

        settings = load_settings()
    configured = getattr(settings, "model_registry_dir", None)
    return Path(configured) if configured else Path(settings.state_dir) / "models"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _current_feature_set() -> tuple[str, tuple[str, ...]]:
    from models.features import FEATURE_NAMES, FEATURE_SET_HASH

    return FEATURE_SET_HASH, FEATURE_NAMES


@dataclass(frozen=True)
class ModelInfo:
    """A registered version: its directory and parsed metadata."""

    version: str
    directory: Path
    metadata: dict[str, Any]

    @property
    def artifact_path(self) -> Path:
        return self.directory / str(self.metadata.get("artifact", ARTIFACT_FILE))

    @property
    def artifact_uri(self) -> str:
        return self.artifact_path.resolve().as_uri()

    @property
    def sha256(self) -> str:
        return str(self.metadata["sha256"])

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds.from_json(self.metadata["thresholds"])


# --------------------------------------------------------------------------------------
# Verification and loading
# --------------------------------------------------------------------------------------

_REQUIRED_METADATA = ("format", "version", "artifact", "sha256", "feature_names", "thresholds")


def read_metadata(directory: Path) -> dict[str, Any]:
    path = directory / METADATA_FILE
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelIntegrityError(f"{path} is missing: not a model version directory") from exc
    except (OSError, ValueError) as exc:
        raise ModelIntegrityError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(metadata, dict):
        raise ModelIntegrityError(f"{path} is not a JSON object")
    missing = [key for key in _REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ModelIntegrityError(f"{path} lacks {', '.join(missing)}")
    if metadata["format"] != METADATA_FORMAT:
        raise ModelIntegrityError(
            f"{path} has metadata format {metadata['format']!r}; this code reads {METADATA_FORMAT}"
        )
    return metadata


def load_verified(
    directory: Path | str,
    *,
    version: str | None = None,
    expected_sha256: str | None = None,
    feature_set_hash: str | None = None,
    feature_names: Sequence[str] | None = None,
) -> ModelScorer:
    """Verify a version directory (see the module docstring) and build its scorer.

    ``feature_set_hash``/``feature_names`` default to what models/features.py computes.
    """
    directory = Path(directory)
    metadata = read_metadata(directory)
    name = metadata["version"]
    if version is not None and name != version:
        raise ModelIntegrityError(
            f"{directory / METADATA_FILE} describes version {name!r}, not {version!r}: "
            "the directory holds another model"
        )
    artifact = directory / str(metadata["artifact"])
    if artifact.parent != directory or artifact.name != ARTIFACT_FILE:
        raise ModelIntegrityError(f"{directory / METADATA_FILE}: artifact must be {ARTIFACT_FILE}")
    try:
        data = artifact.read_bytes()
    except OSError as exc:
        raise ModelIntegrityError(f"cannot read the model file {artifact}: {exc}") from exc
    actual = sha256_hex(data)
    if actual != metadata["sha256"]:
        raise ModelIntegrityError(
            f"model {name}: {artifact} has sha256 {actual} but its metadata records "
            f"{metadata['sha256']}: the file was changed after training; refusing to load it"
        )
    if expected_sha256 is not None and actual != expected_sha256:
        raise ModelIntegrityError(
            f"model {name}: {artifact} has sha256 {actual} but {expected_sha256} was "
            "announced: refusing to load a model other than the one announced"
        )
    if feature_set_hash is None or feature_names is None:
        current_hash, current_names = _current_feature_set()
        feature_set_hash = feature_set_hash or current_hash
        feature_names = feature_names if feature_names is not None else current_names
    if metadata.get("feature_set_hash") != feature_set_hash:
        raise ModelIntegrityError(
            f"model {name} was trained on feature set {metadata.get('feature_set_hash')}, "
            f"but this worker computes {feature_set_hash}: retrain it on the current features"
        )
    model, names, reference = load_artifact(data)
    if tuple(names) != tuple(feature_names) or list(metadata["feature_names"]) != list(names):
        raise ModelIntegrityError(
            f"model {name}: its feature list differs from the one this worker computes"
        )
    try:
        thresholds = Thresholds.from_json(metadata["thresholds"])
    except (ModelError, ValueError) as exc:
        raise ModelIntegrityError(f"model {name}: bad thresholds in its metadata: {exc}") from exc
    return ModelScorer(name, model, names, reference, thresholds)


def path_from_uri(uri: str) -> Path:
    """The local path of a ``file://`` URI (or of a plain path)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ModelIntegrityError(f"artifact {uri} is on host {parsed.netloc!r}, not here")
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "":
        return Path(uri)
    raise ModelIntegrityError(f"artifact URI {uri!r}: only file:// URIs are supported")


def load_announced(
    announcement: Mapping[str, Any],
    *,
    feature_set_hash: str | None = None,
    feature_names: Sequence[str] | None = None,
) -> ModelScorer:
    """The scorer a ``fraud.models`` record announces, verified against its sha256.

    Raises :class:`ModelIntegrityError` (keep serving the current model) when the file
    is missing, differs from the announced digest, or was built for other features.
    """
    try:
        uri = str(announcement["artifact_uri"])
        version = str(announcement["version"])
        digest = str(announcement["sha256"])
    except KeyError as exc:
        raise ModelIntegrityError(f"model announcement lacks {exc}") from exc
    artifact = path_from_uri(uri)
    if artifact.name != ARTIFACT_FILE:
        raise ModelIntegrityError(f"announced artifact {uri} is not a {ARTIFACT_FILE}")
    return load_verified(
        artifact.parent,
        version=version,
        expected_sha256=digest,
        feature_set_hash=feature_set_hash,
        feature_names=feature_names,
    )


# --------------------------------------------------------------------------------------
# The registry directory
# --------------------------------------------------------------------------------------


def _version_name(created_at_ms: int, sha256: str) -> str:
    moment = dt.datetime.fromtimestamp(created_at_ms / 1000, tz=dt.UTC)
    return f"{moment:%Y%m%d-%H%M%S}-{sha256[:8]}"


def _write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True, allow_nan=False)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Registry:
    """Versions under one root directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # -- writing ------------------------------------------------------------------------
    def write(
        self,
        *,
        model: Model,
        feature_names: Sequence[str],
        feature_set_hash: str,
        reference: Any,
        thresholds: Thresholds,
        metadata: Mapping[str, Any],
        created_at_ms: int | None = None,
    ) -> ModelInfo:
        """Register a new version; ``metadata`` adds to what is recorded (metrics, windows)."""
        import sklearn

        data = artifact_bytes(model, feature_names, np.asarray(reference, dtype=np.float64))
        digest = sha256_hex(data)
        created = int(time.time() * 1000) if created_at_ms is None else created_at_ms
        version = _version_name(created, digest)
        record: dict[str, Any] = {
            **dict(metadata),
            "format": METADATA_FORMAT,
            "model_name": MODEL_NAME,
            "version": version,
            "model_kind": model.kind,
            "created_at_ms": created,
            "created_at": dt.datetime.fromtimestamp(created / 1000, tz=dt.UTC).isoformat(),
            "artifact": ARTIFACT_FILE,
            "sha256": digest,
            "artifact_bytes": len(data),
            "feature_names": list(feature_names),
            "feature_set_hash": feature_set_hash,
            "reference_values": [float(v) for v in np.asarray(reference).tolist()],
            "thresholds": thresholds.to_json(),
            "sklearn_version": sklearn.__version__,
            "numpy_version": np.__version__,
            "python_version": platform.python_version(),
        }
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / version
        if final.exists():
            raise ModelError(f"model version {version} already exists in {self.root}")
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=self.root))
        try:
            (staging / ARTIFACT_FILE).write_bytes(data)
            _write_json_atomic(staging / METADATA_FILE, record)
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return ModelInfo(version, final, record)

    # -- reading ------------------------------------------------------------------------
    def versions(self) -> list[str]:
        """Version directories, oldest first (names sort by creation time)."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / METADATA_FILE).exists()
        )

    def newest(self) -> str | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def directory(self, version: str) -> Path:
        if not version or "/" in version or "\\" in version or version.startswith("."):
            raise ModelNotFoundError(f"{version!r} is not a model version name")
        path = self.root / version
        if not (path / METADATA_FILE).exists():
            known = ", ".join(self.versions()[-5:]) or "none"
            raise ModelNotFoundError(
                f"no model version {version!r} in {self.root} (newest: {known})"
            )
        return path

    def info(self, version: str) -> ModelInfo:
        """Parsed metadata of a version (not verified: use :meth:`load` for that)."""
        directory = self.directory(version)
        return ModelInfo(version, directory, read_metadata(directory))

    def list(self) -> list[ModelInfo | tuple[str, ModelError]]:
        """Every version, oldest first; unreadable ones as ``(version, error)``."""
        out: list[ModelInfo | tuple[str, ModelError]] = []
        for version in self.versions():
            try:
                out.append(self.info(version))
            except ModelError as exc:
                out.append((version, exc))
        return out

    def verify(self, version: str, **checks: Any) -> ModelInfo:
        """Raise :class:`ModelIntegrityError` unless the version loads cleanly."""
        load_verified(self.directory(version), version=version, **checks)
        return self.info(version)

    def load(self, version: str, **checks: Any) -> ModelScorer:
        """The verified scorer of a version."""
        return load_verified(self.directory(version), version=version, **checks)

    # -- roles --------------------------------------------------------------------------
    def roles(self) -> dict[str, dict[str, Any]]:
        path = self.root / ROLES_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path} is not readable JSON: {exc}") from exc
        return {role: data[role] for role in ROLES if isinstance(data.get(role), dict)}

    def set_role(self, role: Role, record: Mapping[str, Any]) -> None:
        roles = self.roles()
        roles[role] = dict(record)
        self.root.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(self.root / ROLES_FILE, roles)


# --------------------------------------------------------------------------------------
# Announcements on fraud.models
# --------------------------------------------------------------------------------------


def announcement_record(info: ModelInfo, role: Role, now_ms: int | None = None) -> dict[str, Any]:
    return {
        "model_name": MODEL_NAME,
        "version": info.version,
        "role": role,
        "sha256": info.sha256,
        "artifact_uri": info.artifact_uri,
        "announced_at_ms": int(time.time() * 1000) if now_ms is None else now_ms,
    }


def announcement_key(role: Role) -> str:
    return f"{MODEL_NAME}:{role}"


def announce(
    settings: Settings,
    info: ModelInfo,
    role: Role,
    *,
    producer: Any = None,
    timeout_s: float = ANNOUNCE_TIMEOUT_S,
) -> dict[str, Any]:
    """Publish ``info`` as the ``role`` model on fraud.models and wait for the broker's ack."""
    from schemas.codec import encode_key, load_codec
    from streams import topics

    record = announcement_record(info, role)
    codec = load_codec(settings.schema_registry_url, topic_prefix=settings.topic_prefix)
    value = codec.encode(topics.FRAUD_MODELS, record)
    topic = settings.topic(topics.FRAUD_MODELS)
    if producer is None:
        from confluent_kafka import Producer

        producer = Producer(
            {
                "bootstrap.servers": settings.brokers,
                "enable.idempotence": True,
                "acks": "all",
                "message.timeout.ms": int(timeout_s * 1000),
            }
        )
    errors: list[str] = []
    delivered: list[bool] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            delivered.append(True)

    producer.produce(topic, value, encode_key(announcement_key(role)), on_delivery=on_delivery)
    remaining = producer.flush(timeout_s)
    if errors or remaining or not delivered:
        reason = "; ".join(errors) or f"no acknowledgement within {timeout_s:g} s"
        raise ModelError(
            f"could not announce model {info.version} as {role} on {topic} at "
            f"{settings.brokers}: {reason}"
        )
    return record
