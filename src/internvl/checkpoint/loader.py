"""Load and save InternVL checkpoints in the official and `-hf` layouts, and convert between them.

Spec section 2. The model is built on the meta device, every tensor it needs is read once from the
memory-mapped shards, converted by the layout's rules, checked for shape, and assigned (never copied
into a second full model). Missing and unexpected checkpoint keys are reported by name before any
tensor is read.

The -hf layout keeps the image settings where transformers' `InternVLProcessor` reads them: tile size,
tile counts and dynamic tiling in `preprocessor_config.json` (its `GotOcr2ImageProcessor` keys `size`,
`min_patches`, `max_patches`, `crop_to_patches`, plus our `use_thumbnail`, which transformers ignores: it
always adds the thumbnail), tokens per tile in `processor_config.json`; the template in `config.json`. So
official -> hf -> official restores every setting, and the same images give the same tiles and answers.

Saving never deletes a user's files: a checkpoint written into an existing directory replaces only the files
it writes (and weight shards of an earlier save that would contradict them); `convert` refuses a non-empty
destination unless asked to overwrite.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from ..config import InternVLConfig
from ..errors import CheckpointError, ConfigError
from ..models.internvl import InternVL
from . import keymaps
from .safetensors_io import INDEX, TensorReader, write_sharded

logger = logging.getLogger(__name__)

OFFICIAL, HF = "official", "hf"
# Intern-S1 / Intern-S1-mini: the -hf tensor names (`model.vision_tower.*`, `model.language_model.*`, `lm_head`)
# under their own config (`model_type: interns1`); loaded like -hf, never written.
INTERNS1 = "interns1"
HF_FAMILY = (HF, INTERNS1)
# Files that travel with the weights when a checkpoint is converted or re-saved.
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
              "vocab.json", "merges.txt", "tokenizer.model", "generation_config.json", "chat_template.jinja",
              "chat_template.json", "preprocessor_config.json", "processor_config.json")
# `internvl train` writes this file beside its checkpoint-STEP dirs, naming the newest complete one.
LATEST_POINTER = "latest"
# Default template for -hf checkpoints whose config does not name one (those not written by this project).
_HF_TEMPLATES = {"InternLM2ForCausalLM": "internlm2-chat", "Phi3ForCausalLM": "phi3-chat",
                 "GptOssForCausalLM": "internvl3_5_gpt_oss"}
PREPROCESSOR, PROCESSOR = "preprocessor_config.json", "processor_config.json"
# The weight files of a checkpoint: an earlier save's that the new one does not rewrite are stale.
_WEIGHT_FILE = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors|" + re.escape(INDEX))
# ImageNet normalization and PIL's bicubic filter (3): what every InternVL image processor uses.
_IMAGE_NORM = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


def latest_name(run_dir: Path) -> str | None:
    """The checkpoint name a training run's `latest` file holds (None without the file)."""
    pointer = run_dir / LATEST_POINTER
    return pointer.read_text().strip() if pointer.is_file() else None


def resolve_path(path_or_repo: str | os.PathLike) -> Path:
    """A local checkpoint directory, or a Hugging Face Hub repo id downloaded into the local cache. A training
    run's output directory (or its `latest` file) means the checkpoint that `latest` names."""
    p = Path(path_or_repo).expanduser()
    if p.name == LATEST_POINTER and p.is_file():
        p = p.parent  # `runs/x/latest`: the training run's newest checkpoint
    if p.is_dir():
        name = latest_name(p) if not (p / "config.json").exists() else None
        if name is not None:
            if not (p / name).is_dir():
                raise CheckpointError(f"{p / LATEST_POINTER} names {name}, which is missing")
            return p / name
        return p
    if p.exists():
        raise CheckpointError(f"{p} is a file; give the checkpoint directory")
    text = str(path_or_repo)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise CheckpointError(f"{text}: no such directory (and not a Hub repo id like 'OpenGVLab/InternVL3-1B')")
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(text, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model",
                                                             "*.jinja", "*.py"]))
    except Exception as e:  # network, auth, not found: one clear message
        raise CheckpointError(f"{text}: not a local directory and could not be fetched from the Hub ({e})") from e


def _read_json(directory: str | os.PathLike) -> dict:
    path = Path(directory) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{directory}: no config.json")
    try:
        d = json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: a JSON object was expected, found {type(d).__name__}")
    return d


def read_config(directory: str | os.PathLike) -> tuple[InternVLConfig, str]:
    """Read `config.json` of any layout -> (config, layout)."""
    d = _read_json(directory)
    if "llm_config" in d:
        return InternVLConfig.from_official(d), OFFICIAL
    if "text_config" in d:
        layout = INTERNS1 if d.get("model_type") == "interns1" else HF
        return InternVLConfig.from_hf(d, **_hf_image_settings(Path(directory), d, layout)), layout
    raise CheckpointError(f"{Path(directory) / 'config.json'}: neither an official (llm_config) nor a -hf "
                          "(text_config) InternVL config")


def _hf_image_settings(directory: Path, d: dict, layout: str = HF) -> dict:
    """Tiling settings of a -hf checkpoint live in its processor files (see the module docstring)."""
    settings: dict = {}
    if layout == INTERNS1:
        settings["template"] = "interns1"
    elif "template" not in d:
        text = d["text_config"]
        arch = ((text.get("architectures") or [""])[0]
                or {"gpt_oss": "GptOssForCausalLM"}.get(text.get("model_type"), ""))
        settings["template"] = _HF_TEMPLATES.get(arch, "internvl2_5")
    for name in (PREPROCESSOR, PROCESSOR):
        f = directory / name
        if f.exists():
            try:
                p = json.loads(f.read_text())
            except ValueError as e:
                raise CheckpointError(f"{f}: invalid JSON ({e})") from e
            p = p.get("image_processor", p) if isinstance(p, dict) else {}
            if "max_patches" in p:
                settings["max_dynamic_patch"] = p["max_patches"]
            if "min_patches" in p:
                settings["min_dynamic_patch"] = p["min_patches"]
            if "crop_to_patches" in p:
                settings["dynamic_image_size"] = p["crop_to_patches"]
            if "use_thumbnail" in p:
                settings["use_thumbnail"] = p["use_thumbnail"]
            size = p.get("size")
            if isinstance(size, dict) and size.get("height"):
                if size.get("width", size["height"]) != size["height"]:
                    raise CheckpointError(f"{f}: tiles of {size['width']}x{size['height']} are not square")
                settings["force_image_size"] = size["height"]
    return settings


def hf_processor_files(cfg: InternVLConfig, directory: Path | None = None) -> dict[str, dict]:
    """The -hf processor files for `cfg`: the image settings in `preprocessor_config.json`, the tokens per
    tile in `processor_config.json`. Other keys of `directory`'s -hf versions of them are kept (an official
    checkpoint's CLIP-style preprocessor_config.json is replaced)."""
    image = {"image_processor_type": "GotOcr2ImageProcessor", "processor_class": "InternVLProcessor",
             "crop_to_patches": cfg.dynamic_image_size, "min_patches": cfg.min_dynamic_patch,
             "max_patches": cfg.max_dynamic_patch, "use_thumbnail": cfg.use_thumbnail,
             "size": {"height": cfg.image_size, "width": cfg.image_size}}
    defaults = {"do_resize": True, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
                "do_normalize": True, **_IMAGE_NORM, "do_convert_rgb": True}
    old_image = _read_json_file(directory / PREPROCESSOR) if directory is not None else {}
    if not str(old_image.get("image_processor_type", "")).startswith("GotOcr2"):
        old_image = {}
    processor = _read_json_file(directory / PROCESSOR) if directory is not None else {}
    processor.update(processor_class="InternVLProcessor", image_seq_length=cfg.num_image_token)
    if isinstance(processor.get("image_processor"), dict):  # the nested form: keep it in agreement
        processor["image_processor"] = {**processor["image_processor"], **image}
    return {PREPROCESSOR: {**defaults, **old_image, **image}, PROCESSOR: processor}


def _read_json_file(path: Path) -> dict:
    """A JSON object from `path`, or {} when it is missing or not a JSON object (files we only update)."""
    try:
        d = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}
    return d if isinstance(d, dict) else {}


def _rules(cfg: InternVLConfig, layout: str, mxfp4: bool = False) -> list[keymaps.Rule]:
    return keymaps.official_rules(cfg, mxfp4) if layout == OFFICIAL else keymaps.hf_rules(cfg, mxfp4)


def _checkpoint_keys(reader: TensorReader, layout: str) -> dict[str, str]:
    """Normalized name -> name in the files."""
    return {keymaps.normalize_hf_key(k) if layout in HF_FAMILY else k: k for k in reader.keys()}


def resolve_tie(cfg: InternVLConfig, directory: str | os.PathLike, layout: str) -> InternVLConfig:
    """Tie the LM head to the embeddings the way the layout's own code does, from what the files hold.

    -hf (transformers 5): the top-level `tie_word_embeddings` (default True) decides, and a saved
    `lm_head.weight` that differs from the embeddings unties again; a file without `lm_head.weight` is tied
    when either config level says so (a transformers 4.x save decided by `text_config`). Official layout: the
    remote code copies `llm_config.tie_word_embeddings` to the top level and ties unconditionally, so the
    config is taken as it is.
    """
    if layout not in HF_FAMILY:
        return cfg
    reader = TensorReader(directory)
    keys = _checkpoint_keys(reader, layout)
    head, embed = "language_model.lm_head.weight", "language_model.model.embed_tokens.weight"
    tie = cfg.llm.tie_word_embeddings
    if head in keys:
        if tie and embed in keys and not torch.equal(reader.get(keys[head]), reader.get(keys[embed])):
            logger.info("%s: lm_head.weight differs from the embeddings: not tied (as transformers)", directory)
            tie = False
    elif not tie and _read_json(directory)["text_config"].get("tie_word_embeddings", False):
        tie = True
    if tie == cfg.llm.tie_word_embeddings:
        return cfg
    return cfg.replace(llm=dataclasses.replace(cfg.llm, tie_word_embeddings=tie))


def load_weights(model: InternVL, directory: str | os.PathLike, layout: str,
                 dtype: torch.dtype | None = None) -> None:
    """Fill a (meta-device) model from a checkpoint directory, strictly. A model whose top-level parts were
    dropped (set to None, see `load_model`'s `parts`) reads only the tensors of the parts it has; the file
    must still hold exactly the whole model's tensors.

    GPT-OSS experts stored as MXFP4 (`*_blocks` + `*_scales`) are dequantized here, to bf16 unless `dtype`.
    """
    cfg = model.config
    reader = TensorReader(directory)
    actual = _checkpoint_keys(reader, layout)
    expected = model.state_dict()
    mxfp4 = any(k.endswith("mlp.experts.gate_up_proj_blocks") for k in actual)
    whole = expected if all(getattr(model, p) is not None for p in model_parts(cfg)) else build_model(cfg).state_dict()
    every_step = keymaps.plan(_rules(cfg, layout, mxfp4), list(whole))
    steps = [s for s in every_step if all(k in expected for k in s.internal)]
    needed = {k for s in steps for k in s.external}
    missing = sorted(needed - actual.keys())
    unexpected = sorted(k for k in actual.keys() - {k for s in every_step for k in s.external}
                        if not keymaps.DROPPABLE.search(k)
                        and not (cfg.llm.tie_word_embeddings and k.endswith("lm_head.weight")))
    if missing or unexpected:
        raise CheckpointError(f"{directory}: checkpoint does not match the {cfg.llm.architecture} model built from "
                              f"its config.json; missing: {_short(missing)}; unexpected: {_short(unexpected)}")
    state = {}
    for step in steps:
        outs = step.rule.join([reader.get(actual[k]) for k in step.external])
        if step.external[0].endswith("_blocks") and dtype is None:
            # dequantized experts take the dtype the checkpoint stores their biases in (its working dtype)
            bias = step.external[0][:-len("_blocks")] + "_bias"
            outs = [t.to(reader.dtype(actual[bias])) if bias in actual else t for t in outs]
        for key, t in zip(step.internal, outs):
            want = tuple(expected[key].shape)
            if tuple(t.shape) != want:
                raise CheckpointError(f"{directory}: {key} from {', '.join(step.external)} has shape "
                                      f"{tuple(t.shape)}, the config implies {want}")
            state[key] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    model.load_state_dict(state, strict=True, assign=True)
    if model.language_model is not None:
        model.language_model.rotary.reset_buffers()


def model_parts(cfg: InternVLConfig) -> tuple[str, ...]:
    """The top-level modules of a model built from `cfg` (the Flash modules only where the config has them)."""
    flash = ("mlp2", "pooling_before_gating", "gating") if cfg.has_vir else ()
    return ("vision_model", "mlp1", *flash, "language_model")


VISION_PARTS = ("vision_model", "mlp1", "mlp2", "pooling_before_gating", "gating")  # what a vision server runs
LANGUAGE_PARTS = ("language_model",)  # what a language server runs


def _short(keys: list[str], n: int = 8) -> str:
    if not keys:
        return "none"
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def build_model(cfg: InternVLConfig, cls: type[InternVL] = InternVL) -> InternVL:
    """An InternVL module with no storage yet (meta device), ready for `load_weights` or `to_empty`."""
    with torch.device("meta"):
        return cls(cfg)


def load_model(path_or_repo: str | os.PathLike, dtype: torch.dtype | None = None,
               device: str | torch.device = "cpu", cls: type[InternVL] = InternVL,
               parts: tuple[str, ...] | None = None) -> tuple[InternVL, Path, str]:
    """Load a checkpoint of either layout -> (model in eval mode, resolved directory, layout).

    `parts` keeps only those top-level modules (e.g. `VISION_PARTS` for a vision server): the others are
    never read and are None on the returned model."""
    directory = resolve_path(path_or_repo)
    cfg, layout = read_config(directory)
    cfg = resolve_tie(cfg, directory, layout)
    model = build_model(cfg, cls)
    if parts is not None:
        for part in model_parts(cfg):
            if part not in parts:
                setattr(model, part, None)
    load_weights(model, directory, layout, dtype)
    return model.to(device).eval(), directory, layout


def save_checkpoint(model: InternVL, directory: str | os.PathLike, layout: str = OFFICIAL,
                    side_files_from: str | os.PathLike | None = None,
                    max_shard_bytes: int = 5 * 1024 ** 3) -> Path:
    """Write config.json + safetensors shards (+ tokenizer files copied from `side_files_from`; + the
    processor files in the -hf layout).

    Everything is staged under a temporary name first. A new directory is then renamed into place whole,
    so an interrupted save never leaves a half-written checkpoint behind. Into an existing directory the
    staged files are moved one by one (config.json last), after removing weight files of an earlier save
    that the new ones do not replace (a stale shard index would point at the old weights); every other
    file there (a model card, notes, sub-folders) is left as it was.
    """
    if layout not in (OFFICIAL, HF):
        raise ConfigError(f"layout must be 'official' or 'hf', got {layout!r}"
                          + (" (Intern-S1 checkpoints are read, not written; save as 'hf')" if layout == INTERNS1 else ""))
    cfg = model.config
    config = cfg.to_official() if layout == OFFICIAL else cfg.to_hf()
    if layout == HF and cfg.image_token_id is None:
        raise ConfigError("the -hf layout needs image_token_id (the <IMG_CONTEXT> id); set it in the config")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory} is a file, not a directory")
    state = model.state_dict()
    steps = keymaps.plan(_rules(cfg, layout), list(state))

    def tensors():
        for step in steps:
            outs = step.rule.split([state[k].detach() for k in step.internal])
            yield from zip(step.external, (t.cpu() for t in outs))

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        write_sharded(tensors(), tmp, max_shard_bytes)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        if side_files_from is not None:
            for name in SIDE_FILES:
                src = Path(side_files_from) / name
                if src.is_file():
                    shutil.copy2(src, tmp / name)
        if layout == HF:
            for name, content in hf_processor_files(cfg, tmp).items():
                (tmp / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
        _usual_permissions(tmp)
        if directory.exists():
            _move_into(tmp, directory)
            tmp.rmdir()
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _move_into(staged: Path, directory: Path) -> None:
    """Move the staged checkpoint files into an existing directory, touching no other file there."""
    names = {f.name for f in staged.iterdir()}
    for f in directory.iterdir():
        if _WEIGHT_FILE.fullmatch(f.name) and f.name not in names and f.is_file():
            f.unlink()
    for name in sorted(names, key=lambda n: n == "config.json"):  # config.json last
        os.replace(staged / name, directory / name)


def _usual_permissions(directory: Path) -> None:
    """mkdtemp makes the staging directory private (0700) and the safetensors writer its files 0600; give the
    finished checkpoint the permissions of any directory and file created under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for f in directory.iterdir():
        if f.is_file():
            os.chmod(f, 0o666 & ~umask)


def check_destination(dst: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse to write a checkpoint over a user's files unless `overwrite`: an existing file, or a directory
    that is not empty. (With `overwrite`, `save_checkpoint` still replaces only the checkpoint's own files.)"""
    dst = Path(dst)
    if overwrite:
        return
    if dst.is_dir():
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in dst.iterdir())
        if entries:
            shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
            raise CheckpointError(f"{dst} is not empty ({shown}); pass --overwrite to write the checkpoint's files "
                                  "into it (other files are left alone), or choose a new directory")
    elif dst.exists() or dst.is_symlink():
        raise CheckpointError(f"{dst} is an existing file; pass --overwrite to replace it with the checkpoint "
                              "directory, or choose a new directory")


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, overwrite: bool = False) -> Path:
    """Re-save a checkpoint in the other layout; tensors pass through unchanged in value and dtype, and every
    image setting with them (see the module docstring).

    Raises:
        CheckpointError: `dst` is an existing file or a non-empty directory and not `overwrite` (checked
            before anything is loaded).
    """
    if to not in (OFFICIAL, HF):
        raise ConfigError(f"the layout to convert to must be 'official' or 'hf', got {to!r}")
    check_destination(dst, overwrite)
    model, directory, layout = load_model(src)
    if to == HF and model.config.image_token_id is None:
        from ..processing.tokenizer import Tokenizer
        token_id = Tokenizer.from_pretrained(directory).convert_tokens_to_ids("<IMG_CONTEXT>")
        model.config = model.config.replace(image_token_id=token_id)
    logger.info("converting %s (%s layout) -> %s (%s layout)", directory, layout, dst, to)
    dst = Path(dst)
    if overwrite and (dst.is_file() or dst.is_symlink()):
        dst.unlink()  # asked for: the file gives way to the checkpoint directory
    return save_checkpoint(model, dst, to, side_files_from=directory)
