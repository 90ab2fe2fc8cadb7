"""Build ``samples/``: a few CC BY 4.0 retinal images shipped with the repository, and their attribution.

Only the two redistributable sources in ``../shared/data`` are used (EyePACS may not be redistributed):

* Kermany OCT2017 (``oct-dev``): ``--per-class`` B-scans per class, each from another patient, original bytes;
  one of them also wrapped in a DICOM secondary-capture file (JPEG baseline, no patient identifiers);
* one OCT volume (``oct-train``): the first patient and class, in patient-id order, with exactly
  ``--volume-frames`` B-scans of one size that the gate all accepts, as a multi-frame Ophthalmic
  Tomography DICOM (uncompressed, no patient identifiers) for ``POST /predict/volume``;
* IDRiD (``fundus-idrid``): ``--per-grade`` photos per DR grade, re-encoded at ``--fundus-side`` px.

Candidates are taken in sorted file-name order (not by what the models answer, so the samples are not
cherry-picked for accuracy); each one is kept only when the shipped image gate accepts it as a gradable
image of its modality, exactly as the service decides. Run from the repository root:

    python -m scripts.make_samples [--data ../shared/data] [--out samples]
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from retina.gate import GATE_FILE, ImageGate
from retina.labels import OCT_CLASSES
from retina.paths import DEFAULT_MODELS_DIR, data_dir

logger = logging.getLogger("make_samples")

GRADE_NAMES = ("no DR", "mild NPDR", "moderate NPDR", "severe NPDR", "proliferative DR")
OCT_CITATION = (
    "Kermany D, Zhang K, Goldbaum M (2018). Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images "
    "for Classification. Mendeley Data, V2. doi:10.17632/rscbjbr9sj.2. Licence: CC BY 4.0."
)
IDRID_CITATION = (
    "Porwal P, Pachade S, Kamble R, Kokare M, Deshmukh G, Sahasrabuddhe V, Meriaudeau F (2018). Indian Diabetic "
    "Retinopathy Image Dataset (IDRiD). IEEE Dataport. doi:10.21227/H25W98. Licence: CC BY 4.0."
)


@dataclass(frozen=True)
class Sample:
    """One shipped file: where it came from, its label, and what was done to it."""

    path: str  # relative to samples/
    source: str  # original file name in the dataset
    label: str
    change: str


def _accepted(gate: ImageGate, img: Image.Image, modality: str) -> bool:
    res = gate.assess(img)
    if res.modality != modality or not res.gradable:
        logger.info("gate refuses (%s, gradable=%s, %s)", res.modality, res.gradable, "; ".join(res.reasons))
        return False
    return True


def pick_oct(gate: ImageGate, root: Path, out: Path, per_class: int) -> list[Sample]:
    """``per_class`` oct-dev scans per class, from distinct patients, copied byte for byte."""
    rows = sorted(csv.DictReader((root / "labels.csv").open()), key=lambda r: r["path"])
    chosen: list[Sample] = []
    for cls in OCT_CLASSES:
        patients: set[str] = set()
        for row in (r for r in rows if r["label"] == cls):
            if len(patients) == per_class:
                break
            if row["patient_id"] in patients:
                continue
            src = root / row["path"]
            data = src.read_bytes()
            if not _accepted(gate, Image.open(io.BytesIO(data)), "oct"):
                continue
            (out / "oct").mkdir(parents=True, exist_ok=True)
            (out / "oct" / src.name).write_bytes(data)
            patients.add(row["patient_id"])
            chosen.append(Sample(f"oct/{src.name}", f"OCT2017 {row['path']}", cls, "original bytes"))
    return chosen


def pick_fundus(gate: ImageGate, root: Path, out: Path, per_grade: int, side: int) -> list[Sample]:
    """``per_grade`` IDRiD photos per grade, downscaled to ``side`` px on the long side (JPEG q85)."""
    rows = sorted(csv.DictReader((root / "trainLabels.csv").open()), key=lambda r: r["image"])
    chosen: list[Sample] = []
    for grade in range(len(GRADE_NAMES)):
        n = 0
        for row in (r for r in rows if int(r["level"]) == grade):
            if n == per_grade:
                break
            img = Image.open(root / "train" / f"{row['image']}.jpeg").convert("RGB")
            img.thumbnail((side, side), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=85, optimize=True)
            # Judge the bytes that ship, not the image before re-encoding.
            if not _accepted(gate, Image.open(io.BytesIO(buf.getvalue())), "fundus"):
                continue
            name = f"{row['image']}-grade{grade}.jpeg"
            (out / "fundus").mkdir(parents=True, exist_ok=True)
            (out / "fundus" / name).write_bytes(buf.getvalue())
            n += 1
            chosen.append(
                Sample(
                    f"fundus/{name}",
                    f"IDRiD disease grading, training set, {row['image']}.jpg",
                    f"grade {grade} ({GRADE_NAMES[grade]})",
                    f"downscaled to {img.size[0]}x{img.size[1]} px, JPEG quality 85",
                )
            )
    return chosen


def write_dicom(jpeg: Path, dest: Path) -> None:
    """Wrap a grayscale JPEG in a DICOM secondary capture (JPEG baseline), with no patient identifiers."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    img = Image.open(jpeg)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.Rows, ds.Columns = img.height, img.width
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([jpeg.read_bytes()])
    ds["PixelData"].is_undefined_length = True
    ds.save_as(dest, enforce_file_format=True)


def pick_volume(gate: ImageGate, root: Path, out: Path, n_frames: int) -> Sample | None:
    """The first (patient, class) of ``root`` with exactly ``n_frames`` same-size B-scans the gate accepts."""
    from training.data.volumes import patient_volumes, volume_dicom

    with (root / "labels.csv").open() as f:
        rows = [(root / r["path"], r["label"], r["patient_id"]) for r in csv.DictReader(f)]
    for vol in sorted(patient_volumes(rows, n_frames), key=lambda v: (v.patient, v.label)):
        images = [Image.open(p).convert("L") for p in vol.paths]
        if len(images) != n_frames or len({im.size for im in images}) != 1:
            continue
        if not all(_accepted(gate, im, "oct") for im in images):
            continue
        import numpy as np

        name = f"oct/{vol.label}-{vol.patient}-volume.dcm"
        (out / name).write_bytes(volume_dicom([np.asarray(im) for im in images], "opt"))
        sources = ", ".join(f"test/{vol.label}/{p.name}" for p in vol.paths)
        return Sample(
            name,
            f"OCT2017 {sources}",
            vol.label,
            f"the {n_frames} decoded B-scans as one multi-frame Ophthalmic Tomography DICOM, frames in file-number "
            "order (uncompressed, no patient data)",
        )
    return None


def write_attribution(out: Path, samples: list[Sample], dicom: Sample | None, volume: Sample | None = None) -> None:
    lines = [
        "# Sample images: sources, licences and labels",
        "",
        "Shipped so that the README's examples and the UI work without `../shared/data`. Every file comes from a",
        "dataset published under the Creative Commons Attribution 4.0 licence (CC BY 4.0,",
        "https://creativecommons.org/licenses/by/4.0/); the changes made are listed per file. Labels are the",
        "datasets' own. Made by `python -m scripts.make_samples` (first files in name order that the shipped",
        "image gate accepts as gradable; not chosen by what the models answer). Research use only: these images",
        "are not for diagnosis.",
        "",
        "## Sources",
        "",
        f"- OCT B-scans (`oct/`): {OCT_CITATION}",
        f"- Colour fundus photos (`fundus/`): {IDRID_CITATION}",
        "",
        "## Files",
        "",
        "| file | original file | label | change |",
        "| --- | --- | --- | --- |",
    ]
    for s in [*samples, *([dicom] if dicom else []), *([volume] if volume else [])]:
        lines.append(f"| `{s.path}` | {s.source} | {s.label} | {s.change} |")
    (out / "ATTRIBUTION.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=data_dir())
    parser.add_argument("--out", type=Path, default=Path("samples"))
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--per-grade", type=int, default=2)
    parser.add_argument("--fundus-side", type=int, default=512)
    parser.add_argument("--volume-frames", type=int, default=3, help="B-scans in the sample volume (< 1 MB at 3)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    gate = ImageGate.load(DEFAULT_MODELS_DIR / GATE_FILE)
    args.out.mkdir(parents=True, exist_ok=True)
    samples = pick_oct(gate, args.data / "oct-dev", args.out, args.per_class)
    samples += pick_fundus(gate, args.data / "fundus-idrid", args.out, args.per_grade, args.fundus_side)
    dicom = None
    first = next((s for s in samples if s.path.startswith("oct/")), None)
    if first is not None:
        dest = args.out / "oct" / (Path(first.path).stem + ".dcm")
        write_dicom(args.out / first.path, dest)
        dicom = Sample(
            f"oct/{dest.name}",
            first.source,
            first.label,
            "same JPEG bytes in a DICOM secondary capture (no patient data)",
        )
    volume = pick_volume(gate, args.data / "oct-train", args.out, args.volume_frames)
    write_attribution(args.out, samples, dicom, volume)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    n = len(samples) + (dicom is not None) + (volume is not None)
    logger.info("wrote %d samples to %s (%.0f KB)", n, args.out, total / 1e3)


if __name__ == "__main__":
    main()
