"""Re-ID dataset folders -> lists of ``(path, pid, camid)`` samples.

Every parser reads the layout a dataset is distributed in (docs/method.md §7)
and returns a :class:`ReidDataset` whose splits are lists of
``(absolute path, person/vehicle id, 0-based camera id)`` sorted by path.
Identity ids are kept as written in the file names (they are never used as
training labels; PPLR trains on its own pseudo labels).

Conventions of the folder datasets (Market-1501, DukeMTMC-reID, VeRi-776):
pid -1 marks junk images and is dropped everywhere; pid 0 marks distractors,
kept in the gallery and dropped from train and query. MSMT17 numbers its
identities from 0 in list files, so there pid 0 is an ordinary identity.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

Sample = tuple[str, int, int]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

JUNK_PID = -1
DISTRACTOR_PID = 0


class DatasetError(ValueError):
    """A dataset folder is missing, incomplete or has an empty split."""


class DatasetWarning(UserWarning):
    """Some files of a split were skipped (malformed names)."""


def canonical_dataset_name(name: str) -> str:
    """Map a user-given dataset name or alias (any case) to its canonical name."""
    aliases = _aliases()
    canonical = aliases.get(name.strip().lower())
    if canonical is None:
        spellings = ", ".join(sorted(aliases))
        raise ValueError(
            f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)} "
            f"(accepted spellings: {spellings})")
    return canonical


def dataset_name_argument(value: str) -> str:
    """:func:`canonical_dataset_name` as an argparse ``type``: an unknown name is a usage error."""
    import argparse
    try:
        return canonical_dataset_name(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


@dataclass
class ReidDataset:
    """A re-ID dataset: train, query and gallery lists of ``(path, pid, camid)``."""

    name: str
    root: str
    train: list[Sample] = field(default_factory=list)
    query: list[Sample] = field(default_factory=list)
    gallery: list[Sample] = field(default_factory=list)

    @property
    def num_train_pids(self) -> int:
        """Number of distinct identities in the training split."""
        return len({pid for _, pid, _ in self.train})

    @property
    def num_train_cams(self) -> int:
        """Number of distinct cameras in the training split."""
        return len({cam for _, _, cam in self.train})

    def summary(self) -> str:
        """A small table of ids / images / cameras per split."""
        lines = [f"dataset {self.name} at {self.root}",
                 "  split   |   ids | images | cams",
                 "  --------+-------+--------+-----"]
        for split, samples in (("train", self.train), ("query", self.query),
                               ("gallery", self.gallery)):
            pids = {pid for _, pid, _ in samples}
            cams = {cam for _, _, cam in samples}
            lines.append(f"  {split:<7} | {len(pids):5d} | {len(samples):6d} | {len(cams):4d}")
        return "\n".join(lines)


# ---------------------------------------------------------------- file names


@dataclass(frozen=True)
class _NameFormat:
    """How one dataset encodes identity and camera in its file names."""

    pattern: re.Pattern  # matched against the file stem; groups: pid, camera
    num_cams: int        # cameras are numbered 1..num_cams in file names
    example: str         # shown in warnings

    def parse(self, stem: str) -> tuple[int, int] | None:
        """``(pid, 0-based camera)`` or None when the name is malformed."""
        match = self.pattern.fullmatch(stem)
        if match is None:
            return None
        pid, cam = int(match.group(1)), int(match.group(2))
        if not 1 <= cam <= self.num_cams:
            return None
        return pid, cam - 1


_MARKET_NAMES = _NameFormat(re.compile(r"(-1|\d+)_c(\d+)s\d+_\d+_\d+"), 6,
                            "PPPP_cCsS_FFFFFF_NN.jpg, e.g. 0002_c1s1_000451_03.jpg")
_DUKE_NAMES = _NameFormat(re.compile(r"(-1|\d+)_c(\d+)_f\d+"), 8,
                          "PPPP_cC_fFFFFFFF.jpg, e.g. 0005_c2_f0046985.jpg")
_VERI_NAMES = _NameFormat(re.compile(r"(-1|\d+)_c(\d+)_.+"), 20,
                          "VVVV_cCCC_....jpg, e.g. 0001_c001_00016450_0.jpg")
_MSMT_NAMES = _NameFormat(re.compile(r"(\d+)_\d+_(\d+)_.+"), 15,
                          "PPPP_NNN_CC_....jpg with camera CC, "
                          "e.g. 0000_000_01_0303morning_0015_0.jpg")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _warn_skipped(dataset: str, split: str, skipped: list[str], expected: str) -> None:
    if skipped:
        warnings.warn(
            f"{dataset} {split}: skipped {len(skipped)} file(s) with malformed names "
            f"(expected {expected}); first: {skipped[0]}",
            DatasetWarning, stacklevel=4)


def _require_nonempty(dataset: str, split: str, samples: list[Sample], source: str,
                      expected: str) -> list[Sample]:
    if not samples:
        raise DatasetError(
            f"{dataset} {split} split is empty: no usable images in {source} "
            f"(expected file names {expected}).")
    return samples


def _read_image_folder(dataset: str, split: str, folder: str, names: _NameFormat,
                       keep: Callable[[int], bool]) -> list[Sample]:
    """Parse every image of ``folder``; ``keep(pid)`` filters junk/distractors."""
    samples: list[Sample] = []
    skipped: list[str] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not (entry.is_file() and _is_image(entry.name)):
            continue
        parsed = names.parse(os.path.splitext(entry.name)[0])
        if parsed is None:
            skipped.append(entry.path)
        elif keep(parsed[0]):
            samples.append((os.path.abspath(entry.path), parsed[0], parsed[1]))
    _warn_skipped(dataset, split, skipped, f"{names.example}, camera 1..{names.num_cams}")
    return _require_nonempty(dataset, split, samples, folder, names.example)


def _read_msmt_list(split: str, list_file: str, image_dir: str) -> list[Sample]:
    """Parse an MSMT17 list file: lines ``relative/path.jpg pid``."""
    samples: list[Sample] = []
    skipped: list[str] = []
    with open(list_file, encoding="utf-8") as lines:
        for line in lines:
            fields = line.split()
            if not fields:
                continue
            parsed = None
            if len(fields) == 2 and fields[1].isdigit() and _is_image(fields[0]):
                parsed = _MSMT_NAMES.parse(os.path.splitext(os.path.basename(fields[0]))[0])
            if parsed is None:
                skipped.append(line.strip())
            else:
                path = os.path.abspath(os.path.join(image_dir, fields[0]))
                samples.append((path, int(fields[1]), parsed[1]))
    _warn_skipped("MSMT17", f"{split} ({os.path.basename(list_file)})", skipped,
                  f"lines 'relative/path.jpg pid', files named {_MSMT_NAMES.example}")
    return samples


# ------------------------------------------------------------------- layouts


def _check_entries(display: str, root: str, entries: tuple[str, ...]) -> None:
    """Raise DatasetError naming the first of ``entries`` missing under ``root``."""
    for entry in entries:
        path = os.path.join(root, entry)
        if not os.path.exists(path):
            raise DatasetError(
                f"{display} is incomplete: {path} does not exist.\n"
                f"Expected layout: {root}/{{{','.join(entries)}}}")


def _locate(display: str, folder_names: list[str], entries: tuple[str, ...], *,
            data_dir: str) -> str:
    """Find the dataset folder under ``data_dir`` and check its entries exist.

    ``data_dir`` may also be the dataset folder itself.
    """
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    candidates = [os.path.join(data_dir, n) for n in folder_names]
    root = next((c for c in candidates if os.path.isdir(c)), None)
    if root is None and all(os.path.exists(os.path.join(data_dir, e)) for e in entries):
        root = data_dir
    if root is None:
        layout = f"{candidates[0]}/{{{','.join(entries)}}}"
        if len(folder_names) > 1:
            layout += f" (the folder may also be named {' or '.join(folder_names[1:])})"
        raise DatasetError(
            f"{display} not found: {candidates[0]} does not exist.\n"
            f"Expected layout: {layout}\n"
            f"Unpack the dataset there, or pass the folder that contains it as the data dir.")
    _check_entries(display, root, entries)
    return root


def _read_three_folder_layout(name: str, display: str, root: str, folders: tuple[str, str, str],
                              names: _NameFormat) -> ReidDataset:
    """Datasets made of a train, a query and a gallery folder of images."""
    train_dir, query_dir, gallery_dir = (os.path.join(root, f) for f in folders)

    def real_identity(pid: int) -> bool:
        return pid not in (JUNK_PID, DISTRACTOR_PID)

    def not_junk(pid: int) -> bool:
        return pid != JUNK_PID

    return ReidDataset(
        name=name, root=root,
        train=_read_image_folder(display, "train", train_dir, names, real_identity),
        query=_read_image_folder(display, "query", query_dir, names, real_identity),
        gallery=_read_image_folder(display, "gallery", gallery_dir, names, not_junk))


_MARKET_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")
_MSMT_LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")

def read_market_layout(root: str, name: str = "market1501") -> ReidDataset:
    """Parse a folder holding Market-1501's three image folders (any dataset in that layout)."""
    root = os.path.abspath(root)
    _check_entries(name, root, _MARKET_FOLDERS)
    return _read_three_folder_layout(name, name, root, _MARKET_FOLDERS, _MARKET_NAMES)


def load_market1501(data_dir: str) -> ReidDataset:
    """Market-1501 from ``<data_dir>/Market-1501-v15.09.15`` (or ``Market-1501``)."""
    root = _locate(*DATASETS["market1501"].layout, data_dir=data_dir)
    return _read_three_folder_layout("market1501", "Market-1501", root, _MARKET_FOLDERS,
                                     _MARKET_NAMES)


def load_dukemtmcreid(data_dir: str) -> ReidDataset:
    """DukeMTMC-reID from ``<data_dir>/DukeMTMC-reID``."""
    root = _locate(*DATASETS["dukemtmcreid"].layout, data_dir=data_dir)
    return _read_three_folder_layout("dukemtmcreid", "DukeMTMC-reID", root, _MARKET_FOLDERS,
                                     _DUKE_NAMES)


def load_veri(data_dir: str) -> ReidDataset:
    """VeRi-776 from ``<data_dir>/VeRi``."""
    root = _locate(*DATASETS["veri"].layout, data_dir=data_dir)
    return _read_three_folder_layout("veri", "VeRi-776", root,
                                     ("image_train", "image_query", "image_test"), _VERI_NAMES)


def load_msmt17(data_dir: str) -> ReidDataset:
    """MSMT17_V1 from ``<data_dir>/MSMT17_V1``; list_val is merged into train."""
    root = _locate(*DATASETS["msmt17"].layout, data_dir=data_dir)
    train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "test")

    def read(split: str, list_name: str, image_dir: str) -> list[Sample]:
        return _read_msmt_list(split, os.path.join(root, list_name), image_dir)

    train = read("train", "list_train.txt", train_dir) + read("train", "list_val.txt", train_dir)
    splits = {"train": sorted(set(train)),
              "query": sorted(read("query", "list_query.txt", test_dir)),
              "gallery": sorted(read("gallery", "list_gallery.txt", test_dir))}
    for split, samples in splits.items():
        _require_nonempty("MSMT17", split, samples, f"the list files of {root}",
                          f"lines 'relative/path.jpg pid', files named {_MSMT_NAMES.example}")
    return ReidDataset(name="msmt17", root=root, **splits)


def locate_dataset(name: str, data_dir: str) -> str | None:
    """The folder of dataset ``name`` under ``data_dir``, without reading any of its files.

    Raises DatasetError (naming the expected layout) when the folder or one of its
    entries is missing; None for ``synthetic``, which training generates. The
    command line calls this with its other checks, so that every problem is
    reported at once.
    """
    canonical = canonical_dataset_name(name)
    if canonical == "synthetic":
        return None
    return _locate(*DATASETS[canonical].layout, data_dir=data_dir)


def create_dataset(name: str, data_dir: str, *, generate: bool = True,
                   check_images: Sequence[str] = ("train", "query", "gallery")) -> ReidDataset:
    """Load dataset ``name`` (case-insensitive, aliases accepted) from ``data_dir``.

    ``synthetic`` is generated into ``data_dir`` on first use and reused after;
    with ``generate=False`` (evaluation) a missing synthetic folder is an error.
    Every image of the ``check_images`` splits is checked before anything else
    runs: unreadable files raise UnreadableImagesError (a DatasetError) naming
    them all (pplr_fast.data.image_dataset.check_images).
    """
    dataset = _load_dataset(name, data_dir, generate)
    if check_images:
        from .image_dataset import check_images as check
        check(dataset, check_images)
    return dataset


def _load_dataset(name: str, data_dir: str, generate: bool) -> ReidDataset:
    return DATASETS[canonical_dataset_name(name)].load(data_dir, generate)


def load_synthetic(data_dir: str, generate: bool = True) -> ReidDataset:
    """The built-in synthetic dataset under ``data_dir``, generated first if absent and ``generate``."""
    from .synthetic import FOLDER_NAME, make_synthetic_dataset
    folder = os.path.join(os.path.abspath(os.path.expanduser(data_dir)), FOLDER_NAME)
    if not generate and not os.path.isdir(folder):
        raise DatasetError(
            f"no synthetic dataset at {folder}; it is made by training "
            "(python -m pplr_fast.train --data-dir ...): pass the --data-dir the run used")
    return read_market_layout(make_synthetic_dataset(data_dir), name="synthetic")


@dataclass(frozen=True)
class DatasetPreset:
    """Per-dataset training settings (the paper's values where it gives them)."""

    height: int
    width: int
    num_instances: int
    eps: float
    eps_cam: float  # DBSCAN eps when camera proxies are used (PPLR-CAM)
    lam_cam: float
    real: bool = True  # a real dataset: training from random weights needs --pretrained none


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset this package reads: how it is spelled, where it lives, how it trains."""

    aliases: tuple[str, ...]  # accepted spellings besides the canonical name (any case)
    read: Callable[..., ReidDataset]  # read(data_dir), or read(data_dir, generate) if generated
    preset: DatasetPreset
    # A folder dataset: (display name, folder names it is unpacked as, entries that folder
    # must hold). None for a dataset this package generates.
    layout: tuple[str, list[str], tuple[str, ...]] | None = None

    def load(self, data_dir: str, generate: bool) -> ReidDataset:
        return self.read(data_dir) if self.layout is not None else self.read(data_dir, generate)


# The registry of datasets: the command line, the loaders and pplr_fast.config (the training
# presets) all read it. Its order is the order names are listed in help and error texts.
DATASETS: dict[str, DatasetEntry] = {
    "market1501": DatasetEntry(
        ("market", "market-1501"), load_market1501,
        DatasetPreset(384, 128, 4, eps=0.6, eps_cam=0.4, lam_cam=0.5),
        ("Market-1501", ["Market-1501-v15.09.15", "Market-1501"],
         ("bounding_box_train", "bounding_box_test", "query"))),
    "msmt17": DatasetEntry(
        ("msmt", "msmt17_v1"), load_msmt17,
        DatasetPreset(384, 128, 4, eps=0.7, eps_cam=0.6, lam_cam=1.0),
        ("MSMT17", ["MSMT17_V1"], ("train", "test") + _MSMT_LISTS)),
    # The paper gives no camera-proxy eps for VeRi-776: the plain eps is reused.
    "veri": DatasetEntry(
        ("veri776", "veri-776"), load_veri,
        DatasetPreset(256, 256, 8, eps=0.7, eps_cam=0.7, lam_cam=0.5),
        ("VeRi-776", ["VeRi"], ("image_train", "image_query", "image_test"))),
    # The paper gives no values for DukeMTMC-reID: Market-1501's are used.
    "dukemtmcreid": DatasetEntry(
        ("duke", "dukemtmc", "dukemtmc-reid"), load_dukemtmcreid,
        DatasetPreset(384, 128, 4, eps=0.6, eps_cam=0.4, lam_cam=0.5),
        ("DukeMTMC-reID", ["DukeMTMC-reID"], ("bounding_box_train", "bounding_box_test", "query"))),
    # Built-in demo data (pplr_fast.data.synthetic), generated at 128x64, the size the CPU
    # demo trains at. A smaller eps than Market-1501's: with an untrained network (no
    # ImageNet weights offline) eps 0.6 merges most images into a few clusters at the first
    # epoch, while 0.45 gives about 40 clusters for 64 identities.
    "synthetic": DatasetEntry(
        (), load_synthetic,
        DatasetPreset(128, 64, 4, eps=0.45, eps_cam=0.4, lam_cam=0.5, real=False)),
}

DATASET_NAMES = tuple(DATASETS)


def _aliases() -> dict[str, str]:
    """Every accepted spelling (lower case) -> canonical name."""
    return {spelling: name for name, entry in DATASETS.items()
            for spelling in (name,) + entry.aliases}
