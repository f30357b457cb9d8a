"""Which recording store the settings give, and what they refuse."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from core.settings import Settings, StorageBackend
from media.backends import open_store
from media.objectstore import ObjectStore
from media.storage import LocalStore


def test_recordings_stay_in_the_local_folder_by_default(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.storage_backend is StorageBackend.LOCAL
    store = open_store(settings)
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path / "recordings"


def test_s3_needs_a_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLGATE_STORAGE_BACKEND", "s3")
    with pytest.raises(pydantic.ValidationError, match="CALLGATE_S3_BUCKET"):
        Settings()
    monkeypatch.setenv("CALLGATE_STORAGE_BACKEND", "azure")
    monkeypatch.setenv("CALLGATE_S3_BUCKET", "recordings")
    with pytest.raises(pydantic.ValidationError, match="storage_backend"):
        Settings()


def test_s3_settings_give_an_object_store_spooling_locally(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in {
        "STORAGE_BACKEND": "s3",
        "S3_BUCKET": "recordings",
        "S3_ENDPOINT_URL": "http://127.0.0.1:9",
        "S3_REGION": "eu-central-1",
        "S3_ACCESS_KEY_ID": "id",
        "S3_SECRET_ACCESS_KEY": "never-shown",
        "S3_PREFIX": "calls/",
        "DATA_DIR": str(tmp_path),
    }.items():
        monkeypatch.setenv(f"CALLGATE_{name}", value)
    settings = Settings()
    assert "never-shown" not in repr(settings)
    store = open_store(settings)  # builds a client; nothing is sent until it is used
    assert isinstance(store, ObjectStore)
    assert (store.bucket, store.prefix) == ("recordings", "calls/")
    assert store.key("b/r.ogg.cgr") == "calls/b/r.ogg.cgr"
    assert store.path("b/r.ogg.cgr") == (tmp_path / "recordings" / "b/r.ogg.cgr").resolve()
