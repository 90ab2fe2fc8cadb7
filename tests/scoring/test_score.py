"""Batch scoring (``python -m scoring``): one row per file, error rows, resume, and Ray = local.

The scoring runs use the shipped models on ``samples/`` (real Kermany OCT scans, IDRiD photos and
a DICOM), so they are ``slow``; listing the inputs is not.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from skimage import data as skimage_data

from retina.labels import DR_GRADES, OCT_CLASSES
from retina.paths import REPO_ROOT
from scoring.cli import main
from scoring.inputs import list_inputs
from scoring.rows import COLUMN_NAMES
from scoring.sinks import read_rows

SAMPLES = REPO_ROOT / "samples"
SAMPLE_FILES = sorted(p for p in SAMPLES.rglob("*") if p.is_file())


def _score(*args: str | Path) -> int:
    return main([str(a) for a in args] + ["--log-level", "WARNING"])


def _by_path(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {r["path"]: r for r in rows}
    assert len(out) == len(rows), "a file has more than one row"
    return out


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """``samples/`` scored by the local process pool (2 workers), model auto, Parquet."""
    out = tmp_path_factory.mktemp("score") / "samples.parquet"
    assert _score(SAMPLES, "--out", out, "--model", "auto", "--workers", "2", "--chunk-size", "4") == 0
    return read_rows(out)


# ----------------------------------------------------------------------------- inputs (fast)


def test_inputs_are_every_file_of_a_folder_or_the_paths_of_a_csv(tmp_path: Path) -> None:
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for rel in ("a/deep/IM0001", "a/x.jpeg", "b.txt", ".hidden", "a/DICOMDIR"):
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "c.jpeg").write_bytes(b"x")
    # Every file, extension or not (DICOM files often have none), but no hidden ones and no DICOMDIR index.
    assert list_inputs(tmp_path) == [str(tmp_path / r) for r in ("a/deep/IM0001", "a/x.jpeg", "b.txt")]

    listing = tmp_path / "list.csv"
    listing.write_text(f"id,path\n1,a/x.jpeg\n2,{tmp_path / 'b.txt'}\n3,a/x.jpeg\n\n4,missing.png\n")
    # Relative paths are taken from the CSV's folder; a repeated path is scored once; a missing one stays listed.
    assert list_inputs(listing) == [str(tmp_path / r) for r in ("a/x.jpeg", "b.txt", "missing.png")]
    headless = tmp_path / "plain.csv"
    headless.write_text("a/x.jpeg\nb.txt\n")
    assert list_inputs(headless) == [str(tmp_path / "a/x.jpeg"), str(tmp_path / "b.txt")]
    with pytest.raises(FileNotFoundError):
        list_inputs(tmp_path / "nope")


def test_usage_problems_exit_2_before_anything_is_written(tmp_path: Path) -> None:
    assert _score(SAMPLES, "--out", tmp_path / "r.json") == 2
    assert _score(tmp_path / "nope", "--out", tmp_path / "r.csv") == 2
    assert _score(SAMPLES, "--out", tmp_path / "r.csv", "--model", "no-such-model") == 2
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the CLI on real images


@pytest.mark.slow
def test_every_sample_gets_one_row_with_its_hash_and_the_model_of_its_modality(
    local_rows: list[dict[str, Any]],
) -> None:
    rows = _by_path(local_rows)
    assert sorted(rows) == [str(p) for p in SAMPLE_FILES]
    for path in SAMPLE_FILES:
        row = rows[str(path)]
        assert set(row) == set(COLUMN_NAMES)
        assert row["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        if path.name == "ATTRIBUTION.md":  # the text file beside the images
            assert row["error"] == "unsupported_media_type" and row["label"] is None
            continue
        if path.name.endswith("-volume.dcm"):  # a multi-frame OCT volume is /predict/volume's, not one image
            assert row["error"] == "invalid_image" and "multi-frame" in row["error_detail"], row
            continue
        task = path.parent.name
        assert row["error"] is None, row
        assert (row["model"], row["task"], row["gate_modality"], row["gradable"]) == (
            f"{task}-resnet18",
            task,
            task,
            True,
        )
        probs = json.loads(row["probabilities"])
        assert list(probs) == list(OCT_CLASSES if task == "oct" else DR_GRADES)
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-9)
        assert row["label"] in probs and row["confidence"] == probs[row["label"]]
        assert row["referral_level"] and 0 < row["referral_threshold"] < 1
        assert row["model_version"]
        assert set(json.loads(row["gate_probabilities"])) == {"oct", "fundus", "other"}
        assert (row["derived"] is not None) == (task == "fundus")
    # The DICOM holds the same scan as the JPEG of the same name: the same answer.
    dcm, jpeg = rows[str(SAMPLES / "oct/CNV-9333524-1.dcm")], rows[str(SAMPLES / "oct/CNV-9333524-1.jpeg")]
    assert dcm["sha256"] != jpeg["sha256"] and dcm["label"] == jpeg["label"]


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.slow
def test_bad_files_become_error_rows_and_the_run_goes_on(tmp_path: Path) -> None:
    good = SAMPLES / "oct/NORMAL-9698749-1.jpeg"
    files = {
        "good.jpeg": good.read_bytes(),
        "truncated.jpeg": good.read_bytes()[: good.stat().st_size // 2],
        "notes.txt": b"patient list, not an image\n",
        "empty.png": b"",
        "cat.jpeg": _jpeg(Image.fromarray(skimage_data.chelsea())),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    listing = tmp_path / "inputs.csv"
    (tmp_path / "huge.dcm").write_bytes(b"\0" * 2_000_001)
    listing.write_text("path\n" + "\n".join([*files, "gone.jpeg", "huge.dcm"]) + "\n")
    out = tmp_path / "out.csv"
    assert _score(listing, "--out", out, "--model", "oct", "--workers", "1", "--max-file-mb", "2") == 0
    rows = {Path(r["path"]).name: r for r in read_rows(out)}
    assert sorted(rows) == sorted([*files, "gone.jpeg", "huge.dcm"])
    errors = {name: rows[name]["error"] for name in rows}
    assert errors == {
        "good.jpeg": None,
        "truncated.jpeg": "invalid_image",
        "notes.txt": "unsupported_media_type",
        "empty.png": "empty_file",
        "cat.jpeg": "not_retinal_image",
        "gone.jpeg": "unreadable_file",
        "huge.dcm": "file_too_large",
    }
    assert rows["good.jpeg"]["label"] in OCT_CLASSES
    for name, row in rows.items():
        if name != "good.jpeg":
            assert row["error_detail"] and row["label"] is None and row["probabilities"] is None, row
        if name in files:
            assert row["sha256"] == hashlib.sha256(files[name]).hexdigest()
    assert rows["gone.jpeg"]["sha256"] is None and rows["huge.dcm"]["sha256"] is None
    # The gate's verdict is kept for an image it refused.
    assert rows["cat.jpeg"]["gate_modality"] == "other" and rows["cat.jpeg"]["model"] == "oct-resnet18"


def _three_scans(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for name in ("CNV-9482771-8.jpeg", "DME-9714913-1.jpeg", "NORMAL-9709360-2.jpeg"):
        shutil.copy(SAMPLES / "oct" / name, src / name)
    return src


@pytest.mark.slow
def test_a_rerun_resumes_a_killed_parquet_run_without_duplicates(tmp_path: Path) -> None:
    src = _three_scans(tmp_path)
    out = tmp_path / "r.parquet"
    args = (src, "--out", out, "--model", "oct", "--workers", "1", "--chunk-size", "1", "--flush-rows", "1")
    assert _score(*args) == 0
    parts = sorted(out.glob("part-*.parquet"))
    full = _by_path(read_rows(out))
    assert len(parts) == 3 and len(full) == 3
    # A kill during the third write: that part never got its final name, a temporary is left behind.
    lost = parts[2]
    lost.rename(out / f".{lost.name}.tmp")
    kept = {p: p.stat().st_mtime_ns for p in parts[:2]}
    assert len(read_rows(out)) == 2
    assert _score(*args) == 0
    assert not list(out.glob(".*.tmp"))
    assert {p: p.stat().st_mtime_ns for p in parts[:2]} == kept  # finished parts are not rewritten
    assert len(list(out.glob("part-*.parquet"))) == 3  # only the missing row was scored again
    assert _by_path(read_rows(out)) == full
    assert _score(*args) == 0  # nothing left to do
    assert len(list(out.glob("part-*.parquet"))) == 3


@pytest.mark.slow
def test_a_rerun_resumes_a_csv_cut_mid_row_without_duplicates(tmp_path: Path) -> None:
    src = _three_scans(tmp_path)
    out = tmp_path / "r.csv"
    args = (src, "--out", out, "--model", "oct", "--workers", "1", "--flush-rows", "1", "--chunk-size", "1")
    assert _score(*args) == 0
    full = _by_path(read_rows(out))
    text = out.read_bytes()
    # A kill in the middle of writing the last row: half of it is on disk.
    last_row_start = text.rstrip(b"\n").rfind(b"\n") + 1
    out.write_bytes(text[: last_row_start + (len(text) - last_row_start) // 2])
    assert _score(*args) == 0
    assert out.read_bytes().count(b"\n") == 4  # header + 3 rows
    assert _by_path(read_rows(out)) == full


# ----------------------------------------------------------------------------- Ray


@pytest.mark.slow
def test_ray_gives_the_same_rows_as_the_local_pool(local_rows: list[dict[str, Any]], tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "ray.parquet"
        # Ray is initialised, so --ray uses this instance instead of connecting to "auto". The OCT
        # samples (the DICOM among them) keep the test short; the fundus photos cost ~10x more each.
        args = ("--out", out, "--model", "auto", "--ray", "auto", "--ray-actors", "2", "--ray-batch-size", "3")
        assert _score(SAMPLES / "oct", *args) == 0
        ray_rows = _by_path(read_rows(out))
    finally:
        ray.shutdown()
    local = {path: row for path, row in _by_path(local_rows).items() if Path(path).parent.name == "oct"}
    assert len(ray_rows) == len(local) == len([p for p in SAMPLE_FILES if p.parent.name == "oct"])
    assert ray_rows == local


def test_ray_without_a_cluster_is_one_clear_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``--ray auto`` with no cluster running: no ConnectionError traceback, a remedy, nothing written."""
    ray = pytest.importorskip("ray")

    def no_cluster(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    out = tmp_path / "r.parquet"
    assert _score(SAMPLES / "oct", "--out", out, "--ray", "auto") == 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info is None
    line = errors[0].getMessage()
    assert "\n" not in line and "ray start --head" in line and "drop --ray" in line
    assert not out.exists()
