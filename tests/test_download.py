"""Dataset fetchers, offline: the Hub and Kaggle clients are replaced by fakes that build
what the real services return (a snapshot folder, a nested archive tree)."""

from __future__ import annotations

import io
import json
import sys
import types
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from wastenet.data import download
from wastenet.data.download import (
    HOUSEHOLD_CLASSES,
    TRASHNET_CLASSES,
    default_cache_dir,
    fetch_kaggle_household,
    fetch_trashnet,
    resolve_dataset,
)
from wastenet.data.images import iter_image_files, load_image
from wastenet.errors import ConfigError


def tiny_jpeg(colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 6), colour).save(buf, "JPEG")
    return buf.getvalue()


JPEG = tiny_jpeg()


def fake_hub(monkeypatch, build_snapshot=None, error: Exception | None = None) -> list[dict]:
    """Install a fake ``huggingface_hub``; returns the list of recorded calls."""
    calls: list[dict] = []

    def snapshot_download(repo_id, **kwargs):
        calls.append({"repo_id": repo_id, **kwargs})
        if error is not None:
            raise error
        return str(build_snapshot())

    monkeypatch.setitem(
        sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download)
    )
    return calls


def zip_snapshot(folder: Path, members: dict[str, bytes] | None = None) -> Path:
    """What the Hub repo holds: README + dataset-resized.zip (two JPEGs per class)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text("# trashnet\n")
    if members is None:
        members = {
            f"dataset-resized/{c}/{c}{i}.jpg": JPEG for c in TRASHNET_CLASSES for i in (1, 2)
        }
        members["dataset-resized/.DS_Store"] = b"junk"
        members["__MACOSX/dataset-resized/glass/._glass1.jpg"] = b"junk"
    with zipfile.ZipFile(folder / "dataset-resized.zip", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return folder


# ---------------------------------------------------------------------------- TrashNet


def test_trashnet_zip_becomes_class_folders_and_second_call_is_offline(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    calls = fake_hub(monkeypatch, lambda: zip_snapshot(tmp_path / "snap"))
    root = fetch_trashnet(cache)
    assert root == cache / "trashnet"
    assert calls == [
        {"repo_id": "garythung/trashnet", "repo_type": "dataset", "cache_dir": str(cache / "hf")}
    ]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == list(TRASHNET_CLASSES)
    images = [p.relative_to(root).as_posix() for p in iter_image_files(root)]
    assert images == [f"{c}/{c}{i}.jpg" for c in TRASHNET_CLASSES for i in (1, 2)]
    assert load_image(root / "glass" / "glass1.jpg").size == (4, 6)
    assert not list(root.rglob("*MACOSX*")) and not list(root.rglob(".DS_Store"))
    assert (tmp_path / "snap" / "dataset-resized.zip").is_file()  # the Hub cache is untouched

    # Prepared: no call, not even an import of the client.
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    assert fetch_trashnet(cache) == root
    assert len(calls) == 1


def test_trashnet_snapshot_with_unpacked_folders_is_copied(tmp_path, monkeypatch):
    def build():
        snap = tmp_path / "snap"
        for c in TRASHNET_CLASSES:
            (snap / "data" / c).mkdir(parents=True)
            (snap / "data" / c / f"{c}7.jpg").write_bytes(JPEG)
        return snap

    fake_hub(monkeypatch, build)
    root = fetch_trashnet(tmp_path / "cache")
    assert (root / "trash" / "trash7.jpg").read_bytes() == JPEG
    assert (tmp_path / "snap" / "data" / "trash" / "trash7.jpg").is_file()


def test_trashnet_interrupted_preparation_is_redone(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    (cache / "trashnet" / "glass").mkdir(parents=True)
    (cache / "trashnet" / "glass" / "half-written.jpg").write_bytes(b"\xff\xd8")  # no marker
    calls = fake_hub(monkeypatch, lambda: zip_snapshot(tmp_path / "snap"))
    root = fetch_trashnet(cache)
    assert len(calls) == 1
    assert not (root / "glass" / "half-written.jpg").exists()
    assert sorted(p.name for p in (root / "glass").iterdir()) == ["glass1.jpg", "glass2.jpg"]


def test_trashnet_offline_gives_one_clear_line(tmp_path, monkeypatch):
    fake_hub(monkeypatch, error=OSError("Connection refused"))
    with pytest.raises(ConfigError) as info:
        fetch_trashnet(tmp_path / "cache")
    assert str(info.value) == (
        "could not download TrashNet from the Hugging Face Hub (garythung/trashnet): "
        "Connection refused. Offline? Pass --data DIR with a local copy."
    )
    assert info.value.exit_code == 2
    assert not (tmp_path / "cache" / "trashnet").exists()


def test_trashnet_without_huggingface_hub_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(ConfigError, match=r'pip install "wastenet\[download\]"'):
        fetch_trashnet(tmp_path / "cache")


def test_trashnet_unexpected_layout(tmp_path, monkeypatch):
    def build():
        (tmp_path / "snap").mkdir()
        (tmp_path / "snap" / "README.md").write_text("nothing here")
        return tmp_path / "snap"

    fake_hub(monkeypatch, build)
    with pytest.raises(ConfigError, match="no class folders, zip or parquet"):
        fetch_trashnet(tmp_path / "cache")
    assert not (tmp_path / "cache" / "trashnet").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # staging cleaned up


def test_trashnet_zip_slip_is_refused(tmp_path, monkeypatch):
    members = {"../../evil.jpg": JPEG, "dataset-resized/glass/g.jpg": JPEG}
    fake_hub(monkeypatch, lambda: zip_snapshot(tmp_path / "snap", members))
    with pytest.raises(ConfigError, match="unsafe path '../../evil.jpg'"):
        fetch_trashnet(tmp_path / "cache")
    assert not list(tmp_path.rglob("evil.jpg"))


class FakeTable:
    """The slice of pyarrow.Table that the parquet reader uses."""

    def __init__(self, rows, names):
        meta = {"info": {"features": {"label": {"names": names, "_type": "ClassLabel"}}}}
        self.rows = rows
        self.column_names = ["image", "label"]
        self.schema = types.SimpleNamespace(
            metadata={b"huggingface": json.dumps(meta).encode()}
        )

    def select(self, columns):
        assert columns == ["image", "label"]
        return self

    def to_pylist(self):
        return self.rows


def test_trashnet_parquet_shards_with_class_label_names(tmp_path, monkeypatch):
    names = ["glass", "trash"]  # label ints index the ClassLabel names in the metadata
    rows = [
        {"image": {"bytes": JPEG, "path": "glass12.jpg"}, "label": 0},
        {"image": {"bytes": JPEG, "path": None}, "label": 1},
        {"image": {"bytes": JPEG, "path": "glass12.jpg"}, "label": 0},  # name clash
    ]
    shard = tmp_path / "snap" / "data" / "train-00000-of-00001.parquet"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"PAR1")
    fake_pq = types.SimpleNamespace(read_table=lambda path: FakeTable(rows, names))
    monkeypatch.setitem(sys.modules, "pyarrow", types.ModuleType("pyarrow"))
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", fake_pq)
    fake_hub(monkeypatch, lambda: tmp_path / "snap")
    root = fetch_trashnet(tmp_path / "cache")
    found = sorted(p.relative_to(root).as_posix() for p in iter_image_files(root))
    assert found == ["glass/glass12.jpg", "glass/glass12_2.jpg", "trash/trash1.jpg"]


def test_trashnet_parquet_without_pyarrow(tmp_path, monkeypatch):
    shard = tmp_path / "snap" / "train.parquet"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    fake_hub(monkeypatch, lambda: tmp_path / "snap")
    with pytest.raises(ConfigError, match="parquet format, which needs pyarrow"):
        fetch_trashnet(tmp_path / "cache")


# ------------------------------------------------------------------------------ Kaggle


def kaggle_tree(top: Path, classes=HOUSEHOLD_CLASSES) -> Path:
    """The Kaggle archive's nesting: images/images/<class>/{default,real_world}/*.png."""
    for c in classes:
        for kind in ("default", "real_world"):
            (top / "images" / "images" / c / kind).mkdir(parents=True)
            (top / "images" / "images" / c / kind / "Image_1.png").write_bytes(b"png")
    return top


def fake_kaggle(monkeypatch, build=None, error: Exception | None = None, new_api=True):
    calls: list[tuple] = []

    if new_api:

        def dataset_download(handle, path=None, *, force_download=False, output_dir=None):
            calls.append((handle, output_dir))
            if error is not None:
                raise error
            return str(build())

    else:

        def dataset_download(handle, path=None, *, force_download=False):  # old kagglehub
            calls.append((handle, None))
            return str(build())

    fake = types.SimpleNamespace(dataset_download=dataset_download)
    monkeypatch.setitem(sys.modules, "kagglehub", fake)
    return calls


def test_kaggle_household_finds_the_nested_class_folders_once(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    calls = fake_kaggle(monkeypatch, lambda: kaggle_tree(tmp_path / "kaggle" / "versions" / "1"))
    root = fetch_kaggle_household(cache)
    assert root == (tmp_path / "kaggle" / "versions" / "1" / "images" / "images").resolve()
    handle = "alistairking/recyclable-and-household-waste-classification"
    assert calls == [(handle, str(cache / "kaggle-household"))]
    assert len([p for p in root.iterdir() if p.is_dir()]) == 30
    assert len(iter_image_files(root)) == 60  # default/ and real_world/ below each class

    monkeypatch.setitem(sys.modules, "kagglehub", None)  # second call: no import, no network
    assert fetch_kaggle_household(cache) == root
    assert len(calls) == 1


def test_kaggle_household_with_an_older_kagglehub(tmp_path, monkeypatch):
    calls = fake_kaggle(monkeypatch, lambda: kaggle_tree(tmp_path / "k"), new_api=False)
    assert fetch_kaggle_household(tmp_path / "cache").name == "images"
    assert calls == [("alistairking/recyclable-and-household-waste-classification", None)]


def test_kaggle_household_download_without_the_classes(tmp_path, monkeypatch):
    fake_kaggle(monkeypatch, lambda: kaggle_tree(tmp_path / "k", HOUSEHOLD_CLASSES[:29]))
    with pytest.raises(ConfigError, match="no folder with the 30 household class folders"):
        fetch_kaggle_household(tmp_path / "cache")


def test_kaggle_offline_mentions_credentials(tmp_path, monkeypatch):
    fake_kaggle(monkeypatch, error=RuntimeError("401 Unauthorized"))
    with pytest.raises(ConfigError) as info:
        fetch_kaggle_household(tmp_path / "cache")
    message = str(info.value)
    assert message.startswith("could not download the household set from Kaggle")
    assert "401 Unauthorized" in message and "Kaggle credentials" in message
    assert "Pass --data DIR with a local copy." in message


def test_kaggle_without_kagglehub(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kagglehub", None)
    with pytest.raises(ConfigError, match=r'needs kagglehub: pip install "wastenet\[download\]"'):
        fetch_kaggle_household(tmp_path / "cache")


# ------------------------------------------------------------------- resolve_dataset


def test_resolve_dataset_names_and_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "fetch_trashnet", lambda cache_dir=None: Path("/hub/trashnet"))
    monkeypatch.setattr(download, "fetch_kaggle_household", lambda cache_dir=None: Path("/kg"))
    assert resolve_dataset("trashnet") == Path("/hub/trashnet")
    assert resolve_dataset("kaggle-household") == Path("/kg")
    (tmp_path / "photos").mkdir()
    assert resolve_dataset(str(tmp_path / "photos")) == tmp_path / "photos"
    assert resolve_dataset(tmp_path / "photos") == tmp_path / "photos"


def test_resolve_dataset_missing_folder(tmp_path):
    with pytest.raises(ConfigError, match="dataset folder not found: .*nowhere"):
        resolve_dataset(str(tmp_path / "nowhere"))


def test_default_cache_dir_follows_wastenet_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WASTENET_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    calls = fake_hub(monkeypatch, lambda: zip_snapshot(tmp_path / "snap"))
    assert fetch_trashnet() == tmp_path / "c" / "trashnet"
    assert calls[0]["cache_dir"] == str(tmp_path / "c" / "hf")
    monkeypatch.delenv("WASTENET_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "wastenet"
