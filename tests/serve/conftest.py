"""Fixtures for the server tests: a tiny random checkpoint, the model loaded from it, servers on loopback.

Each server runs uvicorn in a background thread on a free 127.0.0.1 port and is shut down (uvicorn, then
the engine thread) when its fixture or context ends.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_helpers import running_server  # noqa: E402

from internvl.chat import from_pretrained  # noqa: E402
from internvl.checkpoint.loader import save_checkpoint  # noqa: E402
from internvl.models.internvl import InternVL  # noqa: E402
from internvl.presets import PRESETS  # noqa: E402
from internvl.processing.tokenizer import byte_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A random tiny-random checkpoint with the byte-level tokenizer, weights large enough (std 0.5) that
    different prompts and images give visibly different answers."""
    torch.manual_seed(0)
    tok = byte_tokenizer()
    cfg = PRESETS["tiny-random"].config.replace(image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"))
    model = InternVL(cfg)
    model.init_weights(std=0.5)
    path = save_checkpoint(model, tmp_path_factory.mktemp("serve") / "tiny", "official")
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny(tiny_ckpt):
    """(model, tokenizer) in fp32, so batched and single-request greedy decoding agree exactly."""
    return from_pretrained(tiny_ckpt, dtype=torch.float32)


@pytest.fixture(scope="module")
def server(tiny):
    with running_server(*tiny, max_batch=8, max_queue=32) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)
