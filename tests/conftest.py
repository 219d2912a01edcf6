"""Shared fixtures: tiny random InternVL models saved by transformers (the oracle) for each backbone.

The helpers live in `hf_oracle.py` (import them from there: `conftest` names several modules here)."""

from __future__ import annotations

import pytest
import torch

from hf_oracle import FAMILIES, make_hf


@pytest.fixture(scope="session", params=FAMILIES)
def hf_checkpoint(request, tmp_path_factory):
    """(family, transformers model, directory it was saved to with save_pretrained)."""
    pytest.importorskip("transformers")
    model = make_hf(request.param)
    path = tmp_path_factory.mktemp(f"hf_{request.param}")
    model.save_pretrained(path)
    return request.param, model, path


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA; without it they are skipped, not failed."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
