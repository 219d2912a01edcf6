"""Official <-> -hf checkpoints: bit-identical round trips, golden official key names, strict loading."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from internvl.checkpoint.loader import convert, load_model, save_checkpoint
from internvl.checkpoint.safetensors_io import TensorReader, write_sharded
from internvl.errors import CheckpointError

# Golden official names (spec section 2): every key of an official checkpoint matches one of these.
OFFICIAL_KEYS = [
    r"vision_model\.embeddings\.(class_embedding|position_embedding|patch_embedding\.(weight|bias))",
    r"vision_model\.encoder\.layers\.\d+\.(attn\.(qkv|proj)\.(weight|bias)|attn\.[qk]_norm\.weight|ls1|ls2"
    r"|norm[12]\.(weight|bias)|mlp\.fc[12]\.(weight|bias))",
    r"mlp1\.[013]\.(weight|bias)",
    r"language_model\.(lm_head\.weight|model\.(embed_tokens|norm)\.weight)",
    r"language_model\.model\.layers\.\d+\.(input_layernorm|post_attention_layernorm)\.weight",
    r"language_model\.model\.layers\.\d+\.self_attn\.([qkvo]_proj\.(weight|bias)|[qk]_norm\.weight|qkv_proj\.weight)",
    r"language_model\.model\.layers\.\d+\.mlp\.((gate|up|down)_proj\.weight|gate_up_proj\.weight|gate\.weight"
    r"|experts\.\d+\.(gate|up|down)_proj\.weight)",
]


def tensors(path) -> dict[str, torch.Tensor]:
    r = TensorReader(path)
    return {k: r.get(k) for k in r.keys()}


def assert_identical(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_hf_roundtrip_is_bit_identical(hf_checkpoint, tmp_path):
    _, _, path = hf_checkpoint
    model, _, _ = load_model(path)
    save_checkpoint(model, tmp_path / "again", "hf")
    assert_identical(tensors(path), tensors(tmp_path / "again"))


def test_official_layout_names_logits_and_roundtrip(hf_checkpoint, tmp_path):
    family, hf, path = hf_checkpoint
    official = convert(path, tmp_path / "official", "official")
    cfg = json.loads((official / "config.json").read_text())
    assert cfg["architectures"] == ["InternVLChatModel"] and "llm_config" in cfg and "vision_config" in cfg
    keys = list(tensors(official))
    bad = [k for k in keys if not any(re.fullmatch(p, k) for p in OFFICIAL_KEYS)]
    assert not bad, bad
    assert any(k.endswith("attn.qkv.weight") for k in keys)
    if family == "phi3":  # Phi-3 keeps its fused projections in the official layout
        assert any(k.endswith("self_attn.qkv_proj.weight") for k in keys)
    # the official copy gives the same logits as the -hf copy
    a, _, _ = load_model(path)
    b, _, layout = load_model(official)
    assert layout == "official"
    ids = torch.tensor([[11, 12] + [7] * 16 + [13, 14, 15]])
    pix = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a(ids, pix).logits, b(ids, pix).logits)
    # official -> ours -> official, and back to -hf: bit-identical
    save_checkpoint(b, tmp_path / "official2", "official")
    assert_identical(tensors(official), tensors(tmp_path / "official2"))
    convert(official, tmp_path / "hf2", "hf")
    assert_identical(tensors(path), tensors(tmp_path / "hf2"))


def test_sharded_write_and_read(tmp_path):
    ts = {f"w{i}": torch.randn(64, 64) for i in range(5)}
    files = write_sharded(ts.items(), tmp_path, max_shard_bytes=40_000)  # 16 KiB each: two per shard
    assert len(files) == 3 and (tmp_path / "model.safetensors.index.json").exists()
    assert_identical(ts, tensors(tmp_path))


def test_dtype_cast_on_load(hf_checkpoint):
    _, _, path = hf_checkpoint
    model, _, _ = load_model(path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def _broken_copy(src, dst, edit):
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        ts = {k: f.get_tensor(k) for k in f.keys()}
    edit(ts)
    save_file(ts, str(dst / "model.safetensors"))


def test_missing_and_unexpected_keys_are_named(hf_checkpoint, tmp_path):
    _, _, path = hf_checkpoint
    _broken_copy(path, tmp_path / "m", lambda ts: ts.pop("multi_modal_projector.linear_1.weight"))
    with pytest.raises(CheckpointError, match=r"missing: multi_modal_projector\.linear_1\.weight"):
        load_model(tmp_path / "m")
    _broken_copy(path, tmp_path / "u", lambda ts: ts.update(surprise=torch.zeros(1)))
    with pytest.raises(CheckpointError, match="unexpected: surprise"):
        load_model(tmp_path / "u")


def test_wrong_shape_is_named(hf_checkpoint, tmp_path):
    _, _, path = hf_checkpoint
    _broken_copy(path, tmp_path / "s", lambda ts: ts.update({"multi_modal_projector.linear_2.bias": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"mlp1\.3\.bias.*\(3,\).*\(64,\)"):
        load_model(tmp_path / "s")


def test_bad_directories(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        load_model(tmp_path / "nope")
    (tmp_path / "c").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        load_model(tmp_path / "c")


def test_hub_repo_id_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="OpenGVLab/InternVL3-1B: not a local directory and could not be fetched"):
        load_model("OpenGVLab/InternVL3-1B")


def test_run_directory_whose_latest_names_a_missing_checkpoint(tmp_path):
    from internvl.checkpoint.loader import resolve_path
    (tmp_path / "latest").write_text("checkpoint-7\n")
    with pytest.raises(CheckpointError, match="checkpoint-7, which is missing"):
        resolve_path(tmp_path)
    (tmp_path / "checkpoint-7").mkdir()
    assert resolve_path(tmp_path) == tmp_path / "checkpoint-7"
    assert resolve_path(tmp_path / "latest") == tmp_path / "checkpoint-7"


def test_saved_checkpoint_has_the_permissions_of_the_umask(tmp_path):
    import os
    import stat

    from internvl.models.internvl import InternVL
    from internvl.presets import PRESETS
    old = os.umask(0o022)
    try:
        path = save_checkpoint(InternVL(PRESETS["tiny-random"].config), tmp_path / "ckpt", "official")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert {stat.S_IMODE(f.stat().st_mode) for f in path.iterdir()} == {0o644}


def test_every_image_setting_survives_official_hf_official(tmp_path):
    """In the -hf layout the tiling settings live in the processor files, where transformers' InternVL
    processor reads them; converting there and back restores the official config.json exactly."""
    from internvl.checkpoint.loader import read_config
    from internvl.models.internvl import InternVL
    from internvl.presets import PRESETS
    cfg = PRESETS["tiny-random"].config.replace(image_token_id=7, max_dynamic_patch=3, min_dynamic_patch=2,
                                                use_thumbnail=False, force_image_size=112, template="Hermes-2",
                                                system_message="Be terse.")
    official = save_checkpoint(InternVL(cfg), tmp_path / "official", "official")
    hf = convert(official, tmp_path / "hf", "hf")
    back = convert(hf, tmp_path / "back", "official")
    assert read_config(hf) == (cfg, "hf") and read_config(back) == (cfg, "official")
    assert json.loads((back / "config.json").read_text()) == json.loads((official / "config.json").read_text())
    pre = json.loads((hf / "preprocessor_config.json").read_text())
    assert (pre["max_patches"], pre["min_patches"], pre["size"], pre["use_thumbnail"]) == \
        (3, 2, {"height": 112, "width": 112}, False)
    assert json.loads((hf / "processor_config.json").read_text())["image_seq_length"] == cfg.num_image_token
    transformers = pytest.importorskip("transformers")
    processor = transformers.AutoImageProcessor.from_pretrained(hf)
    assert (processor.max_patches, processor.min_patches, processor.size.height, processor.crop_to_patches) == \
        (3, 2, 112, True)
    # a -hf checkpoint's own processor keys are kept when it is re-saved, ours updated
    pre["do_convert_rgb"], pre["max_patches"] = False, 12
    (hf / "preprocessor_config.json").write_text(json.dumps(pre))
    model, _, _ = load_model(hf)
    again = save_checkpoint(model, tmp_path / "hf2", "hf", side_files_from=hf)
    pre2 = json.loads((again / "preprocessor_config.json").read_text())
    assert pre2["do_convert_rgb"] is False and pre2["max_patches"] == 12


def test_save_into_an_existing_directory_keeps_other_files(tmp_path):
    from internvl.models.internvl import InternVL
    from internvl.presets import PRESETS
    model = InternVL(PRESETS["tiny-random"].config)
    d = tmp_path / "ckpt"
    save_checkpoint(model, d, "official", max_shard_bytes=200_000)  # sharded
    assert (d / "model.safetensors.index.json").exists()
    (d / "README.md").write_text("card")
    save_checkpoint(model, d, "official")  # one file now: the old shards and their index are gone
    names = sorted(p.name for p in d.iterdir())
    assert names == ["README.md", "config.json", "model.safetensors"], names
    assert load_model(d)[2] == "official"
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        save_checkpoint(model, tmp_path / "f", "official")
