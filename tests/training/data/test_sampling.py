"""Domain-balanced draws and the fundus camera augmentation."""

from __future__ import annotations

import numpy as np
import torch

from retina.preprocessing import ChannelGain, PreprocessSpec, Vignette, augmentations, get_preset
from training.data.loaders import AugmentedBatches
from training.data.sampling import domain_sample_weights, prevalence_weights


def test_domain_weights_give_each_domain_a_share_by_power() -> None:
    domains = np.array(["0:crop"] * 900 + ["0:photo"] * 100)
    for power, want_photo in ((1.0, 0.1), (0.0, 0.5), (0.5, 10 / 40)):
        w = domain_sample_weights(domains, power).numpy()
        share = w[900:].sum() / w.sum()
        assert abs(share - want_photo) < 1e-9, power
        assert np.allclose(w[:900], w[0]) and np.allclose(w[900:], w[900])  # even within a domain


def test_augmented_batches_draw_epoch_images() -> None:
    spec = PreprocessSpec(size=32, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3, square="stretch")
    x = torch.randint(0, 255, (10, 3, 32, 32), dtype=torch.uint8)
    y = np.arange(10) % 2
    w = domain_sample_weights(np.array(["a"] * 9 + ["b"]), 0.0)
    batches = AugmentedBatches(x, y, spec, "light", 8, seed=0, weights=w, num_samples=40)
    got = [len(b[1]) for b in batches]
    assert sum(got) == 40 and len(batches) == 5


def test_camera_augmentation_keeps_shape_and_changes_colour_per_channel() -> None:
    spec = get_preset("fundus_224")
    torch.manual_seed(0)
    x = torch.full((3, spec.size, spec.size), 160, dtype=torch.uint8)
    out = augmentations(spec, "camera")(x)
    assert out.shape == x.shape and out.dtype == torch.uint8
    g = ChannelGain(0.25, 10.0)(x)
    assert len(set(g[:, 0, 0].tolist())) > 1  # one gain per channel
    v = Vignette(0.9)(x)
    assert v[:, 0, 0].float().mean() < v[:, spec.size // 2, spec.size // 2].float().mean() + 1e-6
    assert (v.float() - 128).abs().max() <= 32  # only contrast about mid-grey is lost


def test_prevalence_weights_give_every_domain_one_prevalence_and_keep_its_share() -> None:
    # EyePACS-like (19 % referable), IDRiD-like (63 %) and a domain with no positive at all
    domains = np.array(["0:crop"] * 100 + ["1:photo"] * 30 + ["2:photo"] * 10)
    positive = np.zeros(140, dtype=bool)
    positive[:19] = True
    positive[100:119] = True
    dom_w = domain_sample_weights(domains, 0.5).numpy()
    w = dom_w * prevalence_weights(domains, positive, 0.3).numpy()
    for d in ("0:crop", "1:photo"):
        rows = domains == d
        assert abs(w[rows & positive].sum() / w[rows].sum() - 0.3) < 1e-9, d
        assert abs(w[rows].sum() - dom_w[rows].sum()) < 1e-9, d  # the domain's share of draws is kept
    assert np.allclose(w[130:], dom_w[130:])  # no positive: left as it is


def test_prevalence_balanced_draws_hide_the_domain_from_the_label() -> None:
    """Drawn with the weights, the domain no longer predicts the label (the v3 shortcut)."""
    domains = np.array(["a"] * 800 + ["b"] * 200)
    positive = np.r_[np.arange(800) < 120, np.arange(200) < 130]  # 15 % vs 65 %
    w = domain_sample_weights(domains, 0.0) * prevalence_weights(domains, positive, 0.3)
    draws = torch.multinomial(w, 20_000, replacement=True, generator=torch.Generator().manual_seed(0)).numpy()
    for d in ("a", "b"):
        got = positive[draws][domains[draws] == d].mean()
        assert abs(got - 0.3) < 0.02, (d, got)
