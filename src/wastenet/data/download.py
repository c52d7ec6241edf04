"""Dataset fetchers: TrashNet from the Hugging Face Hub, the household set from Kaggle.

Both end in the layout every wastenet command reads, a folder of class folders
(``ROOT/<class>/**/<image>``). Downloads are cached in ``$WASTENET_CACHE`` (default
``~/.cache/wastenet``); a second call finds the prepared copy and does no network. The
download clients are optional (``pip install "wastenet[download]"``) and imported lazily::

    from wastenet.data.download import resolve_dataset

    root = resolve_dataset("trashnet")          # ~/.cache/wastenet/trashnet/<class>/*.jpg
    root = resolve_dataset("kaggle-household")  # .../images/images (30 class folders)
    root = resolve_dataset("data/my_photos")    # any existing folder, returned as is
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable

from wastenet.data.images import IMAGE_EXTENSIONS, sniff_format
from wastenet.errors import ConfigError
from wastenet.files import write_atomic

__all__ = [
    "HOUSEHOLD_CLASSES",
    "KAGGLE_HOUSEHOLD_HANDLE",
    "TRASHNET_CLASSES",
    "TRASHNET_REPO_ID",
    "default_cache_dir",
    "fetch_kaggle_household",
    "fetch_trashnet",
    "resolve_dataset",
]

TRASHNET_REPO_ID = "garythung/trashnet"
KAGGLE_HOUSEHOLD_HANDLE = "alistairking/recyclable-and-household-waste-classification"

#: TrashNet's classes; also its ClassLabel order (alphabetical) for parquet shards.
TRASHNET_CLASSES = ("cardboard", "glass", "metal", "paper", "plastic", "trash")

#: The 30 class folders of the Kaggle household set.
HOUSEHOLD_CLASSES = (
    "aerosol_cans", "aluminum_food_cans", "aluminum_soda_cans", "cardboard_boxes",
    "cardboard_packaging", "clothing", "coffee_grounds", "disposable_plastic_cutlery",
    "eggshells", "food_waste", "glass_beverage_bottles", "glass_cosmetic_containers",
    "glass_food_jars", "magazines", "newspaper", "office_paper", "paper_cups",
    "plastic_cup_lids", "plastic_detergent_bottles", "plastic_food_containers",
    "plastic_shopping_bags", "plastic_soda_bottles", "plastic_straws", "plastic_trash_bags",
    "plastic_water_bottles", "shoes", "steel_food_cans", "styrofoam_cups",
    "styrofoam_food_containers", "tea_bags",
)  # fmt: skip

# Written last, so its presence means the folder beside it is complete.
_MARKER = ".wastenet-complete"
_INSTALL_HINT = 'pip install "wastenet[download]"'


def default_cache_dir() -> Path:
    """``$WASTENET_CACHE`` if set, else ``~/.cache/wastenet``."""
    env = os.environ.get("WASTENET_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "wastenet"


def resolve_dataset(spec: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Turn a ``--data`` value into a dataset folder.

    ``"trashnet"`` and ``"kaggle-household"`` are downloaded (once); anything else must be
    an existing folder (write ``./trashnet`` for a local folder of that name).

    >>> resolve_dataset("../shared/data/trashnet")      # doctest: +SKIP
    PosixPath('../shared/data/trashnet')
    """
    text = os.fspath(spec)
    if text == "trashnet":
        return fetch_trashnet(cache_dir)
    if text == "kaggle-household":
        return fetch_kaggle_household(cache_dir)
    path = Path(text).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"dataset folder not found: {text} (or use trashnet / kaggle-household to download)"
        )
    return path


# --------------------------------------------------------------------------- TrashNet


def fetch_trashnet(cache_dir: str | os.PathLike | None = None) -> Path:
    """Download TrashNet from the Hub once and return ``<cache>/trashnet`` (6 class folders).

    The Hub repository may hold the original ``dataset-resized.zip`` (``dataset-resized/
    <class>/*.jpg``), already unpacked class folders, or parquet shards (``image`` with
    bytes and ``label``; needs ``pyarrow``).

    >>> fetch_trashnet()                                 # doctest: +SKIP
    PosixPath('/home/me/.cache/wastenet/trashnet')
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    out = cache / "trashnet"
    if (out / _MARKER).is_file():
        return out  # prepared before: no import, no network

    try:
        import huggingface_hub
    except ImportError:
        raise ConfigError(
            f"downloading TrashNet needs huggingface_hub: {_INSTALL_HINT} "
            "(or pass --data DIR with a local copy)"
        ) from None
    try:
        snapshot = Path(
            huggingface_hub.snapshot_download(
                repo_id=TRASHNET_REPO_ID, repo_type="dataset", cache_dir=str(cache / "hf")
            )
        )
    except Exception as err:  # noqa: BLE001 - network, auth, disk: all mean "no dataset"
        raise ConfigError(
            f"could not download TrashNet from the Hugging Face Hub ({TRASHNET_REPO_ID}): "
            f"{_one_line(err)}. Offline? Pass --data DIR with a local copy."
        ) from None

    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".trashnet-", dir=cache))
    try:
        _materialise_trashnet(snapshot, staging)
        if (out / _MARKER).is_file():
            return out  # another process finished first; keep its copy
        if out.exists():
            shutil.rmtree(out)  # an earlier, interrupted preparation (no marker)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    write_atomic(out / _MARKER, json.dumps({"source": TRASHNET_REPO_ID}) + "\n")
    return out


def _materialise_trashnet(snapshot: Path, dest: Path) -> None:
    """Fill ``dest`` with ``<class>/<image>`` from whatever layout the snapshot has."""
    root = _find_class_root(snapshot, TRASHNET_CLASSES)
    if root is None:
        zips = sorted(p for p in snapshot.rglob("*.zip") if not _hidden(p, snapshot))
        for number, archive in enumerate(zips):
            _safe_extract(archive, dest / ".unzipped" / str(number))
        root = _find_class_root(dest / ".unzipped", TRASHNET_CLASSES) if zips else None
    if root is not None:
        # Files unpacked into dest can be moved; the Hub cache must stay intact (copy).
        move = dest in root.parents
        for cls in TRASHNET_CLASSES:
            _transfer_images(root / cls, dest / cls, move=move)
        shutil.rmtree(dest / ".unzipped", ignore_errors=True)
        return
    shards = sorted(p for p in snapshot.rglob("*.parquet") if not _hidden(p, snapshot))
    if shards:
        _parquet_to_folders(shards, dest)
        return
    raise ConfigError(
        f"the TrashNet download at {snapshot} has no class folders, zip or parquet files "
        f"with the classes {', '.join(TRASHNET_CLASSES)}"
    )


def _safe_extract(archive: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    base = dest.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                name = member.filename
                parts = Path(name).parts
                # Skip macOS metadata; refuse names that would escape dest (zip slip).
                if member.is_dir() or "__MACOSX" in parts or Path(name).name.startswith("."):
                    continue
                target = (dest / name).resolve()
                if base not in target.parents:
                    raise ConfigError(f"unsafe path {name!r} in {archive.name}")
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except zipfile.BadZipFile as err:
        raise ConfigError(f"corrupt archive {archive}: {err}") from None


def _parquet_to_folders(shards: list[Path], dest: Path) -> None:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(
            "this TrashNet download is in parquet format, which needs pyarrow: "
            "pip install pyarrow (or pass --data DIR with a local copy)"
        ) from None
    counter = 0
    for shard in shards:
        table = pq.read_table(shard)
        if "image" not in table.column_names or "label" not in table.column_names:
            raise ConfigError(f"{shard.name}: expected 'image' and 'label' columns")
        names = _label_names(table.schema.metadata) or list(TRASHNET_CLASSES)
        for row in table.select(["image", "label"]).to_pylist():
            image, label = row["image"], row["label"]
            data = image.get("bytes") if isinstance(image, dict) else image
            if not data:
                continue
            cls = names[label] if isinstance(label, int) else str(label)
            original = image.get("path") if isinstance(image, dict) else None
            stem = Path(original).stem if original else f"{cls}{counter}"
            target = dest / cls / f"{stem}{_suffix_for(data)}"
            if target.exists():
                target = target.with_name(f"{stem}_{counter}{target.suffix}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            counter += 1


def _label_names(metadata: dict[bytes, bytes] | None) -> list[str] | None:
    # The `datasets` library stores ClassLabel names in the schema's "huggingface" metadata.
    try:
        info = json.loads(metadata[b"huggingface"])  # type: ignore[index]
        label = info["info"]["features"]["label"]
        return list(label["names"])
    except Exception:  # noqa: BLE001 - absent or another layout: fall back to the default
        return None


def _suffix_for(data: bytes) -> str:
    return ".png" if sniff_format(data) == "PNG" else ".jpg"


# --------------------------------------------------------------------- Kaggle household


def fetch_kaggle_household(cache_dir: str | os.PathLike | None = None) -> Path:
    """Download the 30-class Kaggle household set once; return the folder of class folders.

    The archive nests the classes (``images/images/<class>/{default,real_world}/*.png``);
    the returned path is the folder that holds all 30. Needs Kaggle credentials
    (``~/.kaggle/kaggle.json`` or ``KAGGLE_USERNAME``/``KAGGLE_KEY``).

    >>> fetch_kaggle_household()                         # doctest: +SKIP
    PosixPath('/home/me/.cache/wastenet/kaggle-household/images/images')
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    record = cache / "kaggle-household.path"
    if record.is_file():
        known = Path(record.read_text("utf-8").strip())
        if known.is_dir():
            return known  # located before: no import, no network

    try:
        import kagglehub
    except ImportError:
        raise ConfigError(
            f"downloading the Kaggle household set needs kagglehub: {_INSTALL_HINT} "
            "(or pass --data DIR with a local copy)"
        ) from None
    kwargs: dict[str, Any] = {}
    if _accepts(kagglehub.dataset_download, "output_dir"):  # kagglehub >= 0.3.13
        kwargs["output_dir"] = str(cache / "kaggle-household")
    try:
        downloaded = Path(kagglehub.dataset_download(KAGGLE_HOUSEHOLD_HANDLE, **kwargs))
    except Exception as err:  # noqa: BLE001 - network, credentials, disk
        raise ConfigError(
            f"could not download the household set from Kaggle ({KAGGLE_HOUSEHOLD_HANDLE}): "
            f"{_one_line(err)}. Offline, or no Kaggle credentials (~/.kaggle/kaggle.json or "
            "KAGGLE_USERNAME/KAGGLE_KEY)? Pass --data DIR with a local copy."
        ) from None

    root = _find_class_root(downloaded, HOUSEHOLD_CLASSES)
    if root is None:
        raise ConfigError(
            f"the Kaggle download at {downloaded} has no folder with the 30 household "
            "class folders (e.g. images/images/aerosol_cans)"
        )
    cache.mkdir(parents=True, exist_ok=True)
    write_atomic(record, str(root.resolve()) + "\n")
    return root


# ----------------------------------------------------------------------------- helpers


def _find_class_root(top: Path, classes: Iterable[str], max_depth: int = 6) -> Path | None:
    """The shallowest folder under ``top`` (inclusive) with a sub-folder for every class."""
    wanted = set(classes)
    level = [top] if top.is_dir() else []
    for _ in range(max_depth + 1):
        nxt: list[Path] = []
        for folder in sorted(level):
            subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
            if wanted <= {p.name for p in subdirs}:
                return folder
            nxt.extend(p for p in subdirs if p.name != "__MACOSX")
        level = nxt
    return None


def _transfer_images(src: Path, dest: Path, *, move: bool) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.rglob("*")):
        if (
            path.is_file()
            and path.suffix.lower() in IMAGE_EXTENSIONS
            and not _hidden(path, src)
        ):
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            if move:
                os.replace(path, target)
            else:
                shutil.copy2(path, target)  # follows the Hub cache's symlinks to blobs


def _hidden(path: Path, base: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(base).parts)


def _accepts(func: Any, name: str) -> bool:
    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."
