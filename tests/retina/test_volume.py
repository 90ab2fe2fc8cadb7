"""retina.volume (aggregation rules, deciding B-scans, ungradable volumes) and multi-frame DICOM decoding."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from retina.dicom import MultiFrameError, open_frames
from retina.errors import ImageDecodeError
from retina.gate import GateResult
from retina.labels import OCT_CLASSES
from retina.volume import RULES, aggregate, assess_volume, deciding_frames, needed_gradable
from tests.dicom_helpers import leaked, make_volume

P = np.array(
    [
        [0.95, 0.02, 0.02, 0.01],  # CNV on one B-scan
        [0.05, 0.05, 0.05, 0.85],
        [0.05, 0.05, 0.10, 0.80],
    ]
)
META = SimpleNamespace(task="oct", class_names=list(OCT_CLASSES), version="t", extra={}, metrics={}, temperature=1.0)
NO_OVERRIDE = SimpleNamespace(
    referral_oct_urgent=None, referral_oct_routine=None, referral_fundus_refer=None, referral_fundus_urgent=None
)


def test_rules_by_hand() -> None:
    np.testing.assert_allclose(aggregate(P, "mean"), P.mean(0))
    top = np.sort(P, 0)[-3:].mean(0)
    np.testing.assert_allclose(aggregate(P, "top3_mean"), top / top.sum())
    np.testing.assert_allclose(aggregate(P, "max"), P.max(0) / P.max(0).sum())
    nor = 1 - np.prod(1 - P, 0)
    np.testing.assert_allclose(aggregate(P, "noisy_or"), nor / nor.sum())
    np.testing.assert_allclose(aggregate(P, "vote"), [1 / 3, 0, 0, 2 / 3])
    for rule in RULES:
        assert aggregate(P, rule).sum() == pytest.approx(1.0)
    # The lone CNV B-scan wins under max / noisy-OR, not under the mean.
    assert aggregate(P, "mean").argmax() == 3 and aggregate(P, "max").argmax() == 0


def test_noisy_or_does_not_saturate_on_a_long_confident_volume() -> None:
    p = np.tile([0.999, 0.0005, 0.0003, 0.0002], (128, 1))
    assert np.isfinite(aggregate(p, "noisy_or")).all()


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown volume rule"):
        aggregate(P, "median")
    with pytest.raises(ValueError):
        aggregate(np.zeros((0, 4)), "mean")


def test_deciding_frames_are_the_highest_of_the_label() -> None:
    assert deciding_frames([4, 7, 9], P, 3) == [7, 9, 4]
    assert deciding_frames([4, 7, 9], P, 0, k=1) == [4]


def test_needed_gradable() -> None:
    assert needed_gradable(3, 1, 0.5) == 2
    assert needed_gradable(128, 1, 0.5) == 64
    assert needed_gradable(1, 1, 0.0) == 1


def _gate(modality: str = "oct", gradable: bool = True, reasons: tuple[str, ...] = ()) -> GateResult:
    return GateResult(modality, {}, gradable, list(reasons))  # type: ignore[arg-type]


def test_assess_volume_skips_and_counts() -> None:
    verdicts = [_gate(), _gate(gradable=False, reasons=("too dark",)), _gate("other", False), _gate(), _gate()]
    probs = {0: P[0], 3: P[1], 4: P[2]}
    a = assess_volume("m", META, verdicts, probs, NO_OVERRIDE, rule="mean")
    assert (a.n_frames, a.n_graded, a.n_ungradable, a.n_not_oct, a.needed) == (5, 3, 1, 1, 3)
    assert a.volume.gradable and a.volume.label == "NORMAL"
    assert [f.status for f in a.frames] == ["graded", "ungradable", "not_oct", "graded", "graded"]
    assert a.frames[1].reasons == ("too dark",) and a.frames[2].reasons
    assert a.deciding == (3, 4, 0)
    body = a.to_dict()
    assert body["deciding_frames"] == [3, 4, 0] and len(body["frames"]) == 5 and "gate" not in body


def test_too_few_gradable_b_scans_make_the_volume_ungradable() -> None:
    verdicts = [_gate(), _gate(gradable=False, reasons=("blurred",)), _gate(gradable=False, reasons=("blurred",))]
    a = assess_volume("m", META, verdicts, {0: P[0]}, NO_OVERRIDE, rule="mean")
    assert not a.volume.gradable and a.volume.label is None and a.deciding == ()
    assert a.volume.referral["level"] == "ungradable"
    assert "only 1 of 3 B-scans are gradable" in a.volume.referral["reason"]


def test_probabilities_must_match_the_graded_frames() -> None:
    with pytest.raises(ValueError, match="exactly the graded frames"):
        assess_volume("m", META, [_gate(), _gate()], {0: P[0]}, NO_OVERRIDE, rule="mean")


# ----------------------------------------------------------------------------- multi-frame DICOM


@pytest.fixture(scope="module")
def grey() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (40, 60)).astype(np.uint8) for _ in range(4)]


@pytest.mark.parametrize("kind", ["opt", "sc"])
def test_frames_decode_lazily_and_exactly(grey: list[np.ndarray], kind: str) -> None:
    frames = open_frames(make_volume(grey, kind))
    assert (frames.n_frames, frames.rows, frames.cols) == (4, 40, 60)
    for want, img in zip(grey, frames, strict=True):
        assert img.mode == "L"
        np.testing.assert_array_equal(np.asarray(img), want)


def test_per_frame_window_of_ophthalmic_tomography(grey: list[np.ndarray]) -> None:
    # Frame 1 gets a narrow window: only its values change (clipped), the others are untouched.
    windows = [(128.0, 256.0), (128.0, 64.0), (128.0, 256.0), (128.0, 256.0)]
    frames = open_frames(make_volume(grey, "opt", windows=windows))
    np.testing.assert_array_equal(np.asarray(frames.frame(0)), grey[0])
    narrow = np.asarray(frames.frame(1)).astype(int)
    assert (narrow == 0).mean() > 0.3 and (narrow == 255).mean() > 0.3
    np.testing.assert_array_equal(np.asarray(frames.frame(3)), grey[3])


def test_sixteen_bit_secondary_capture_with_one_window(grey: list[np.ndarray]) -> None:
    words = [g.astype(np.uint16) * 256 + 128 for g in grey]
    frames = open_frames(make_volume(words, "sc", windows=[(32768.0, 65536.0)]))
    for want, img in zip(grey, frames, strict=True):
        assert np.abs(np.asarray(img).astype(int) - want).max() <= 1


def test_limits_are_checked_before_decoding(grey: list[np.ndarray]) -> None:
    data = make_volume(grey, "opt")
    with pytest.raises(ImageDecodeError) as e:
        open_frames(data, max_frames=3)
    assert e.value.code == "too_many_frames" and "4 frames" in e.value.detail
    with pytest.raises(ImageDecodeError) as e:
        open_frames(data, max_pixels=4 * 40 * 60 - 1)
    assert e.value.code == "image_too_large"
    with pytest.raises(ImageDecodeError, match="frames 0-3"):
        open_frames(data).frame(4)


def test_single_image_decoding_refuses_a_volume_without_identifiers(grey: list[np.ndarray]) -> None:
    from retina.decode import decode_image

    with pytest.raises(MultiFrameError) as e:
        decode_image(make_volume(grey, "opt"))
    assert e.value.frames == 4 and e.value.code == "invalid_image"
    assert leaked(e.value.detail) == []


def test_truncated_volume_is_invalid_not_a_crash(grey: list[np.ndarray]) -> None:
    data = make_volume(grey, "opt")
    frames = open_frames(data[: len(data) - 40 * 60 * 2])  # the last two frames cut off
    assert frames.n_frames == 4
    with pytest.raises(ImageDecodeError):
        for _ in frames:
            pass


def test_a_frame_is_a_pil_image(grey: list[np.ndarray]) -> None:
    assert isinstance(open_frames(make_volume(grey[:2], "sc")).frame(1), Image.Image)
