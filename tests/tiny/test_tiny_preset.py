"""The `tiny` preset: the real InternVL architecture at 96px tiles, within the CPU-training budget, and
end to end through tiling, prompt expansion, forward and backward with a multi-tile image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from internvl.checkpoint.loader import build_model, load_model, save_checkpoint
from internvl.models.internvl import InternVL
from internvl.presets import PRESETS
from internvl.processing.image import load_image
from internvl.processing.prompt import build_query
from internvl.processing.templates import get_template
from internvl.tiny.tokenizer import train_tokenizer

CFG = PRESETS["tiny"].config


def test_config_and_budget():
    assert CFG.image_size == 96 and CFG.force_image_size == 96 and CFG.vision.patch_size == 8
    assert (CFG.image_size // CFG.vision.patch_size) % 2 == 0  # pixel shuffle 0.5 needs an even grid
    assert CFG.num_image_token == 36 and CFG.template == "internvl2_5" and CFG.max_dynamic_patch == 6
    assert CFG.vision.num_hidden_layers == 4 and CFG.llm.num_hidden_layers == 4
    assert CFG.llm.architecture == "Qwen2ForCausalLM"
    n = sum(p.numel() for p in build_model(CFG).parameters())
    assert n == PRESETS["tiny"].params
    assert n * 4 <= 40 * 2**20  # fp32 weights within the 40 MB checkpoint budget


def test_checkpoint_size_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = InternVL(CFG)
    model.init_weights()
    path = save_checkpoint(model, tmp_path / "tiny", "official")
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size <= 40 * 2**20, size
    loaded, _, _ = load_model(path)
    assert loaded.config == CFG
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_forward_backward_with_a_multi_tile_image():
    torch.manual_seed(0)
    tok = train_tokenizer()
    model = InternVL(CFG)
    model.init_weights()
    image = Image.new("RGB", (300, 150), "white")  # 2:1 -> a 2x1 grid of 96px tiles
    pixels = load_image(image, input_size=CFG.image_size, max_num=2, use_thumbnail=False)
    assert pixels.shape == (2, 3, 96, 96)
    query = build_query(get_template(CFG.template), "How many objects are there?", None, [2], CFG.num_image_token)
    ids = torch.tensor([tok.encode(query + "0<|im_end|>")])
    assert int((ids == CFG.image_token_id).sum()) == 2 * CFG.num_image_token == 2 * 36
    logits = model(ids, pixels).logits
    assert logits.shape == (1, ids.shape[1], CFG.llm.vocab_size) and torch.isfinite(logits).all()
    loss = F.cross_entropy(logits[0, -3:-1], ids[0, -2:])
    loss.backward()
    assert model.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0  # gradient reaches pixels' path
    assert model.mlp1[1].weight.grad.abs().sum() > 0
