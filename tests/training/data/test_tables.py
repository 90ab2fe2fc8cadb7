"""Readers for every layout (tiny generated data and the real ../shared/data), splits, cache."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retina.labels import OCT_CLASSES
from retina.preprocessing import get_preset
from training.data.pixels import PreparedDataset, prepare_all
from training.data.splits import grouped_folds, split_indices
from training.data.tables import DatasetError, read_table


def _img(path: Path, mode: str = "L", size=(40, 30), seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path)


def make_oct2017(root: Path, splits=("train", "test"), patients: int = 4, per: int = 2) -> Path:
    for s in splits:
        for ci, c in enumerate(OCT_CLASSES):
            for p in range(patients):
                pid = f"{s}{ci}{p:03d}"
                for n in range(per):
                    _img(root / s / c / f"{c}-{pid}-{n}.jpeg", seed=hash((s, c, p, n)) % 1000)
    return root


def make_eyepacs(root: Path, patients: int = 12) -> Path:
    rows = []
    for p in range(patients):
        for eye in ("left", "right"):
            name = f"{100 + p}_{eye}"
            _img(root / "train" / f"{name}.jpeg", "RGB", (64, 48), seed=p)
            rows.append((name, p % 5))
    with open(root / "trainLabels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "level"])
        w.writerows(rows)
    return root


def make_aptos(root: Path, n: int = 15) -> Path:
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id_code", "diagnosis"])
        for i in range(n):
            code = f"{i:04x}abcd"
            _img(root / "train_images" / f"{code}.png", "RGB", (50, 50), seed=i)
            w.writerow([code, i % 5])
    return root


def make_npz(path: Path, n: int = 12, size: int = 28) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for s in ("train", "val", "test"):
        arrays[f"{s}_images"] = rng.integers(0, 255, (n, size, size), dtype=np.uint8)
        arrays[f"{s}_labels"] = (np.arange(n) % 4).reshape(-1, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return path


def test_oct2017_folders_without_val_split_by_patient(tmp_path):
    t = read_table(make_oct2017(tmp_path / "OCT2017"))
    assert t.source == "oct2017" and t.task == "oct" and len(t) == 2 * 4 * 4 * 2
    s = split_indices(t, val_frac=0.2, seed=1)
    # test folder kept as given, val carved from train by patient
    assert set(t.split[s["test"]]) == {"test"} and set(t.split[s["val"]]) == {"train"}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(t.groups[s[a]]) & set(t.groups[s[b]])
    assert sum(len(v) for v in s.values()) == len(t)


def test_oct2017_with_val_folder_is_kept(tmp_path):
    t = read_table(make_oct2017(tmp_path / "o", splits=("train", "val", "test")))
    s = split_indices(t)
    assert {k: set(t.split[v]) for k, v in s.items()} == {"train": {"train"}, "val": {"val"}, "test": {"test"}}


def test_oct2017_unknown_class_and_bad_name(tmp_path):
    root = make_oct2017(tmp_path / "o", splits=("train",), patients=1, per=1)
    _img(root / "train" / "GLAUCOMA" / "GLAUCOMA-1-1.jpeg")
    with pytest.raises(DatasetError, match="GLAUCOMA.*unknown class"):
        read_table(root)
    root2 = make_oct2017(tmp_path / "o2", splits=("train",), patients=1, per=1)
    _img(root2 / "train" / "CNV" / "scan.jpeg")
    with pytest.raises(DatasetError, match="CLASS-PATIENT-N"):
        read_table(root2)


def test_medmnist_npz_any_size(tmp_path):
    for size in (28, 64):
        t = read_table(make_npz(tmp_path / f"octmnist_{size}.npz", size=size))
        assert t.source == "medmnist" and t.images.shape == (36, size, size)
        s = split_indices(t)
        assert [len(s[k]) for k in ("train", "val", "test")] == [12, 12, 12]
        x = prepare_all(t.subset(s["val"]), get_preset("oct_28"))
        assert x.shape == (12, 1, 28, 28)


def test_medmnist_missing_keys(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DatasetError, match="missing keys"):
        read_table(p)


@pytest.mark.parametrize(
    ("scheme", "n", "classes"),
    [("grade", 24, 5), ("referable", 24, 2), ("any", 24, 2), ("binary-strict", 24 - 10, 2)],
)
def test_eyepacs_schemes_and_patient_groups(tmp_path, scheme, n, classes):
    t = read_table(make_eyepacs(tmp_path), label_scheme=scheme)
    assert t.source == "eyepacs" and len(t) == n and len(t.class_names) == classes
    assert set(t.groups) <= {str(100 + p) for p in range(12)}
    s = split_indices(t, val_frac=0.2, test_frac=0.2)
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(t.groups[s[a]]) & set(t.groups[s[b]]), "both eyes must stay together"


def test_eyepacs_errors_name_file_and_line(tmp_path):
    root = make_eyepacs(tmp_path)
    (root / "train" / "105_left.jpeg").unlink()
    with pytest.raises(DatasetError, match=r"trainLabels.csv, line \d+: image 105_left"):
        read_table(root)
    root2 = make_eyepacs(tmp_path / "b")
    with open(root2 / "trainLabels.csv", "a") as f:
        f.write("100_left,seven\n")
    with pytest.raises(DatasetError, match="line 26.*integer 0-4"):
        read_table(root2)


def test_aptos(tmp_path):
    t = read_table(make_aptos(tmp_path), label_scheme="referable")
    assert t.source == "aptos" and len(t) == 15 and t.class_names == ("Non-referable", "Referable DR")
    assert t.labels.tolist() == [int(i % 5 >= 2) for i in range(15)]


def test_missing_folder_and_unknown_layout(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        read_table(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="expected one of"):
        read_table(tmp_path / "empty")


def test_unreadable_image_is_an_error_not_a_skip(tmp_path):
    root = make_eyepacs(tmp_path)
    (root / "train" / "101_left.jpeg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="101_left.jpeg"):
        t = read_table(root)
        prepare_all(t, get_preset("fundus_128"), workers=1)


def test_empty_split_is_an_error(tmp_path):
    root = make_oct2017(tmp_path / "o", splits=("train",), patients=1, per=1)
    t = read_table(root)  # 4 images, 4 patients, one per class: cannot stratify 3 ways
    with pytest.raises((DatasetError, ValueError)):
        split_indices(t, val_frac=0.5, test_frac=0.5)


def test_grouped_folds_cover_everything_once(tmp_path):
    t = read_table(make_eyepacs(tmp_path, patients=15))
    folds = grouped_folds(t, 5, seed=0)
    held = np.concatenate([b for _, b in folds])
    assert sorted(held.tolist()) == list(range(len(t)))
    for a, b in folds:
        assert not set(t.groups[a]) & set(t.groups[b])


def test_prepared_cache_is_keyed_by_data_and_spec(tmp_path):
    t = read_table(make_eyepacs(tmp_path / "d"))
    cache = tmp_path / "cache"
    a = prepare_all(t, get_preset("fundus_128"), cache_dir=cache, workers=1)
    b = prepare_all(t, get_preset("fundus_128"), cache_dir=cache, workers=1)
    c = prepare_all(t, get_preset("fundus_160"), cache_dir=cache, workers=1)
    assert a.shape == (24, 3, 128, 128) and np.array_equal(a.numpy(), b.numpy())
    assert c.shape[-1] == 160 and len(list(cache.glob("*.npy"))) == 2
    ds = PreparedDataset(a, t.labels)
    x, y = ds[3]
    assert x.dtype.is_floating_point is False and y == t.labels[3]


def test_real_oct_dev(oct_dev):
    t = read_table(oct_dev)
    assert len(t) == 46 and len(set(t.groups)) == 27 and t.class_names == OCT_CLASSES
    s = split_indices(t, seed=0)
    assert all(len(v) for v in s.values())
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(t.groups[s[a]]) & set(t.groups[s[b]])
    # the same images read as OCT2017 folders give the same patients and labels
    t2 = read_table(oct_dev, fmt="oct2017")
    assert sorted(zip(t2.groups, t2.labels, strict=True)) == sorted(zip(t.groups, t.labels, strict=True))


def test_real_fundus_dev(fundus_dev):
    t = read_table(fundus_dev)
    assert len(t) == 79 and len(set(t.groups)) == 46 and t.task == "fundus"
    assert (t.sizes.max(axis=1) > 300).all(), "fundus-dev is all raw camera photos"
    x = prepare_all(t.subset(np.arange(4)), get_preset("fundus_128"))
    assert x.shape == (4, 3, 128, 128)


def test_real_fundus_train_split_is_patient_disjoint(fundus_train):
    t = read_table(fundus_train)
    assert len(t) == 5189 and len(set(t.groups)) == 2595
    s = split_indices(t, seed=0)
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(t.groups[s[a]]) & set(t.groups[s[b]])


def test_several_datasets_read_as_one_table_grouped_by_patient_across_folders(tmp_path):
    from tests.training.synth import make_labels_csv
    from training.data.tables import read_tables

    a = make_labels_csv(tmp_path / "a", seed=0)
    b = make_labels_csv(tmp_path / "b", seed=1)  # the same patient ids p00.. as in a: one patient, two folders
    t = read_tables(f"{a},{b}", task="oct")
    assert len(t) == 2 * len(read_table(a)) and t.source == "csv"
    assert len(set(t.groups)) == len(set(read_table(a).groups))  # shared ids are one group
    parts = split_indices(t, val_frac=0.25, test_frac=0.25, seed=0)
    seen = [set(t.groups[v]) for v in parts.values()]
    assert all(not (x & y) for i, x in enumerate(seen) for y in seen[i + 1 :])
    with pytest.raises(DatasetError, match="differ"):
        read_tables([a, make_eyepacs(tmp_path / "e")])


def test_eyepacs_layout_without_eye_suffix_gives_one_group_per_image(tmp_path):
    root = tmp_path / "idrid"
    (root / "train").mkdir(parents=True)
    lines = ["image,level"]
    for i in range(6):
        Image.new("RGB", (64, 48), (150, 80, 40)).save(root / "train" / f"IDRiD_{i:03d}.jpeg")
        lines.append(f"IDRiD_{i:03d},{i % 5}")
    (root / "trainLabels.csv").write_text("\n".join(lines) + "\n")
    t = read_table(root)
    assert sorted(set(t.groups)) == [f"IDRiD_{i:03d}" for i in range(6)]


def test_datasets_read_as_one_keep_each_ones_own_split(tmp_path):
    """Adding a dataset must not move the first one's test patients (a warm start stays honest)."""
    from training.data.tables import read_tables

    a = make_eyepacs(tmp_path / "a", patients=20)
    b = tmp_path / "b"
    (b / "train").mkdir(parents=True)
    lines = ["image,level"]
    for i in range(20):
        _img(b / "train" / f"IDRiD_{i:03d}.jpeg", "RGB", (64, 48), seed=100 + i)
        lines.append(f"IDRiD_{i:03d},{i % 5}")
    (b / "trainLabels.csv").write_text("\n".join(lines) + "\n")
    alone = read_table(a)
    both = read_tables([a, b])
    assert both.parts is not None and set(both.parts.tolist()) == {0, 1}
    s_alone = split_indices(alone, val_frac=0.2, test_frac=0.2, seed=0)
    s_both = split_indices(both, val_frac=0.2, test_frac=0.2, seed=0)
    for s in ("train", "val", "test"):
        first = sorted(both.paths[i] for i in s_both[s] if both.parts[i] == 0)
        assert first == sorted(alone.paths[i] for i in s_alone[s]), s
        assert (both.parts[s_both[s]] == 1).any(), f"the second dataset has no {s} part"
    assert sorted(np.concatenate(list(s_both.values())).tolist()) == list(range(len(both)))


def test_datasets_sharing_patients_are_split_jointly(tmp_path):
    from tests.training.synth import make_labels_csv
    from training.data.tables import read_tables

    t = read_tables([make_labels_csv(tmp_path / "a", seed=0), make_labels_csv(tmp_path / "b", seed=1)], task="oct")
    parts = split_indices(t, val_frac=0.25, test_frac=0.25, seed=0)
    seen = [set(t.groups[v]) for v in parts.values()]
    assert all(not (x & y) for i, x in enumerate(seen) for y in seen[i + 1 :])


def test_patient_ids_of_independent_sources_are_namespaced_per_dataset(tmp_path):
    """Two EyePACS-layout sets numbering patients alike (ODIR's 1005 vs EyePACS's 1005_left) are not one patient."""
    from training.data.tables import DatasetError, read_tables

    a = make_eyepacs(tmp_path / "eyepacs", patients=20)
    b = make_eyepacs(tmp_path / "odir", patients=20)  # the same ids 100..119
    shared = read_tables([a, b])
    assert set(shared.groups[shared.parts == 0]) == set(shared.groups[shared.parts == 1])  # ids collide
    per = read_tables([a, b], patients="per_dataset")
    assert not set(per.groups[per.parts == 0]) & set(per.groups[per.parts == 1])
    assert per.groups[0].startswith("eyepacs:")
    alone = read_table(a)
    s_alone = split_indices(alone, val_frac=0.2, test_frac=0.2, seed=0)
    s_per = split_indices(per, val_frac=0.2, test_frac=0.2, seed=0)
    for s in ("train", "val", "test"):  # namespaced, each keeps the split it has alone
        assert sorted(per.paths[i] for i in s_per[s] if per.parts[i] == 0) == sorted(alone.paths[i] for i in s_alone[s])
    with pytest.raises(DatasetError, match="per_dataset"):
        read_tables([a, b], patients="bogus")
