"""LoRA on the LLM and the ViT: base weights never move, adapters do; the merged model gives the adapter model's
logits (fp32, atol 1e-5: merging only reorders the sums, x(W + sBA)^T vs xW^T + s(xA^T)B^T); our state-dict merge
equals peft's own in-place merge; `internvl merge-lora` rebuilds exactly the weights training saved."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from synthetic import make_dataset

from internvl.chat import from_pretrained
from internvl.cli import main
from internvl.errors import ConfigError
from internvl.models.internvl import InternVL
from internvl.train.args import TrainConfig
from internvl.train.distributed import DistInfo
from internvl.train.lora import LoraSpec, apply_lora, merged_state_dict
from internvl.train.optim import build_optimizer, cosine_schedule
from internvl.train.state import load_start_model, plain_model
from internvl.train.trainer import StepContext, build_loader, prepare_model, train, train_step

LORA = dict(model="tiny-random", tokenizer="byte", lr=5e-3, max_dynamic_patch=1, progress=False, save_steps=0,
            per_device_batch_size=4, use_llm_lora=4, use_backbone_lora=2, lora_alpha=16.0, lora_dropout=0.0)


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), n=8)


@pytest.fixture(scope="module")
def trained(meta, tmp_path_factory):
    """A LoRA model after 3 optimizer steps, its specs, and its weights before training."""
    cfg = TrainConfig(meta_path=str(meta), output_dir=str(tmp_path_factory.mktemp("out")), max_steps=3, **LORA)
    model, tok, _, specs = prepare_model(cfg, None)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    info = DistInfo()
    loader, _, steps = build_loader(cfg, model, tok, info, 0)
    opt = build_optimizer(model, cfg.lr, cfg.weight_decay)
    sched = cosine_schedule(opt, steps, cfg.warmup_ratio)
    ctx = StepContext(info, [p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm, cfg.bf16)
    model.train()
    for batch in loader:
        train_step(model, [batch], opt, sched, ctx)
    return model.eval(), specs, before, tok


def test_base_weights_stay_and_adapters_train(trained):
    model, _, before, _ = trained
    params = dict(model.named_parameters())
    frozen = [n for n, p in params.items() if not p.requires_grad]
    assert any(n.endswith("q_proj.base_layer.weight") for n in frozen)
    assert any(n.endswith("attn.qkv.base_layer.weight") for n in frozen)
    assert "language_model.embed_tokens.weight" in frozen
    for n in frozen:
        assert torch.equal(params[n], before[n]), n
    adapters = [n for n in params if ".lora_" in n]
    assert len(adapters) == 2 * (7 * 2 + 4 * 2)  # A and B for 7 LLM and 4 ViT projections in 2 layers each
    assert all(not torch.equal(params[n], before[n]) for n in adapters)  # B starts at 0 and moved; A moved
    assert not torch.equal(params["mlp1.1.weight"], before["mlp1.1.weight"])  # the projector trains in full


def logits(model: InternVL, tok, with_image: bool = True) -> torch.Tensor:
    ctx = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 250, (2, 40), generator=g)
    pixel_values = None
    if with_image:
        ids[:, 3:3 + model.num_image_token] = ctx
        pixel_values = torch.randn(2, 3, 112, 112, generator=g)
    with torch.no_grad():
        return InternVL.forward(model, ids, pixel_values).logits


def test_merged_weights_give_the_adapter_logits(trained):
    model, specs, _, tok = trained
    merged = plain_model(model.config, merged_state_dict(model.state_dict(), specs))
    merged.img_context_token_id = model.img_context_token_id
    assert not any(".lora_" in k or "base_layer" in k for k in merged.state_dict())
    for with_image in (True, False):
        want = logits(model, tok, with_image)
        torch.testing.assert_close(logits(merged.eval(), tok, with_image), want, atol=1e-5, rtol=1e-5)
        assert (want - logits(_base_only(model, specs), tok, with_image)).abs().max() > 1e-3  # LoRA matters


def _base_only(model: InternVL, specs) -> InternVL:
    """The same model with the adapters dropped (to show they change the output)."""
    state = {k: v for k, v in model.state_dict().items() if ".lora_" not in k}
    plain = plain_model(model.config, {k.replace(".base_layer.", "."): v for k, v in state.items()})
    plain.img_context_token_id = model.img_context_token_id
    return plain.eval()


def test_state_dict_merge_equals_peft_merge(trained):
    from peft.tuners.lora import LoraLayer
    model, specs, _, _ = trained
    ours = merged_state_dict(model.state_dict(), specs)
    theirs = copy.deepcopy(model)
    layers = [m for m in theirs.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == 22
    for m in layers:
        m.merge()  # peft folds the adapter into base_layer.weight in place
    for name, t in theirs.state_dict().items():
        if ".lora_" not in name:
            torch.testing.assert_close(ours[name.replace(".base_layer.", ".")], t, atol=1e-7, rtol=0)


def test_merge_lora_cli_rebuilds_the_trained_checkpoint(meta, tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(meta_path=str(meta), output_dir=str(out), max_steps=2, **LORA))
    ckpt = out / "checkpoint-2"
    assert (ckpt / "adapter" / "adapter_config.json").exists()
    assert main(["merge-lora", "--adapter", str(ckpt / "adapter"), "--output", str(tmp_path / "merged")]) == 0
    saved, rebuilt = load_file(ckpt / "model.safetensors"), load_file(tmp_path / "merged" / "model.safetensors")
    assert saved.keys() == rebuilt.keys()
    for k in saved:  # base re-made from the preset and seed + adapter = exactly what training saved
        assert torch.equal(saved[k], rebuilt[k]), k
    model, tok = from_pretrained(tmp_path / "merged")
    assert isinstance(model.chat(tok, None, "What is 1 plus 2?", {"max_new_tokens": 3}), str)


def test_unknown_target_module_is_a_clear_error():
    model, _, _ = load_start_model("tiny-random", "byte", 0)
    with pytest.raises(ConfigError, match="wqkv.*match no linear layer"):
        apply_lora(model, {"language_model": LoraSpec(4, 8.0, ("wqkv",))})
