"""Which `Storage` the settings name: the local folder, or S3-compatible object storage.

Above both stores, so `storage` (the file format and the local store) and `objectstore`
(which builds on it) do not import each other.
"""

from __future__ import annotations

from core.settings import Settings, StorageBackend
from media.storage import LocalStore, Storage


def open_store(settings: Settings) -> Storage:
    """The store the settings name (one per user; S3 clients are thread-safe)."""
    local = LocalStore(settings.data_dir / "recordings")
    if settings.storage_backend is StorageBackend.S3:
        from media.objectstore import ObjectStore  # boto3 loads only when S3 is configured

        return ObjectStore.from_settings(settings, local)
    return local
