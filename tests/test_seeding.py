"""Named RNG streams are reproducible, independent, and leave the global RNG untouched."""

from __future__ import annotations

import pytest
import torch

from aaclip_xattn import seeding


def test_stream_seed_is_reproducible_and_distinguishes_streams_and_extras():
    assert seeding.stream_seed(3, "augment", 1, 2) == seeding.stream_seed(3, "augment", 1, 2)
    seeds = {
        seeding.stream_seed(3, "augment", 1, 2),
        seeding.stream_seed(3, "augment", 2, 1),
        seeding.stream_seed(3, "data_order", 1, 2),
        seeding.stream_seed(4, "augment", 1, 2),
    }
    assert len(seeds) == 4
    assert all(0 <= s < 2**63 for s in seeds)


def test_make_generator_does_not_touch_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    gen = seeding.make_generator(7, "init")
    a = torch.rand(4, generator=gen)
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(a, torch.rand(4, generator=seeding.make_generator(7, "init")))


def test_unknown_stream_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown RNG stream 'typo'.*augment"):
        seeding.stream_seed(0, "typo")


def test_numpy_generator_matches_for_same_stream():
    a = seeding.make_numpy_generator(1, "split", 8).integers(0, 1000, 5)
    b = seeding.make_numpy_generator(1, "split", 8).integers(0, 1000, 5)
    assert (a == b).all()
