"""Fixtures of the evaluation tests: tiny models (built once) and a tiny synthetic MVTec-layout dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aaclip_xattn.data.synthetic import SyntheticConfig, make_synthetic_dataset
from aaclip_xattn.factory import create_model
from aaclip_xattn.seeding import make_generator


@pytest.fixture(scope="session")
def tiny_baseline():
    """A tiny baseline model with seeded random adapters (eval mode)."""
    return create_model("baseline", "tiny", generator=make_generator(0, "init")).eval()


@pytest.fixture(scope="session")
def tiny_xattn():
    """A tiny cross-attention model with seeded random adapters and cross-attention (eval mode)."""
    return create_model("xattn", "tiny", generator=make_generator(1, "init")).eval()


@pytest.fixture(scope="session")
def eval_dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-category synthetic MVTec-layout dataset: 3 normal + 3 anomalous test images each, 64 px."""
    cfg = SyntheticConfig(
        categories=("brick", "grass"),
        image_size=64,
        n_train_good=0,
        n_test_good=3,
        n_test_anomalous=3,
        seed=5,
    )
    return make_synthetic_dataset(tmp_path_factory.mktemp("eval_data") / "synth", cfg)


def _save_reference_checkpoints(model: torch.nn.Module, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    text = {"text_adapter": model.text_adapter.state_dict(), "epoch": 0}
    image = {"image_adapter": model.image_adapter.state_dict(), "epoch": 0}
    if hasattr(model, "text_cross_attn"):
        text["text_cross_attn"] = model.text_cross_attn.state_dict()
        image["image_cross_attn"] = model.image_cross_attn.state_dict()
    torch.save(text, folder / "text_adapter.pth")
    torch.save(image, folder / "image_adapter.pth")
    return folder / "text_adapter.pth", folder / "image_adapter.pth"


@pytest.fixture
def save_reference_checkpoints():
    """Return ``save(model, folder) -> (text_path, image_path)``: adapters in the reference format.

    Cross-attention models also get ``text_cross_attn`` / ``image_cross_attn`` keys.
    """
    return _save_reference_checkpoints
