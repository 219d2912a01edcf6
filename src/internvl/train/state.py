"""Training checkpoints: the starting model, atomic `checkpoint-STEP/` directories, and everything a resume needs.

Spec sections 2 and 5. A checkpoint directory is an ordinary official-layout checkpoint (config.json,
safetensors shards, tokenizer files) that `internvl chat --model output/checkpoint-STEP` loads as it is,
plus, beside the weights:

    adapter/         LoRA runs only: adapter_config.json + adapter_model.safetensors (every trained tensor,
                     unmerged; the weights above are already merged)
    trainer_state/   state.json (step, data position, run settings), optimizer.pt, scheduler + RNG (rng.pt)

It is assembled under a hidden staging name and renamed into place in one step, and the `latest` pointer is
replaced atomically after it, so a crash at any moment leaves either the previous checkpoint or the new one,
never a half-written directory that a resume could pick up. Old checkpoints are renamed away before they are
deleted, for the same reason.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from ..checkpoint.loader import (LATEST_POINTER, OFFICIAL, SIDE_FILES, build_model, latest_name, load_model,
                                 save_checkpoint)
from ..errors import CheckpointError, ConfigError
from ..models.internvl import InternVL
from ..processing.prompt import IMG_CONTEXT_TOKEN
from ..processing.tokenizer import Tokenizer, byte_tokenizer

log = logging.getLogger(__name__)

PREFIX, LATEST, TRAINER_STATE, ADAPTER = "checkpoint-", LATEST_POINTER, "trainer_state", "adapter"
_STEP_DIR = re.compile(rf"^{PREFIX}(\d+)$")


# ---------------------------------------------------------------- the starting model

def load_tokenizer(spec: str) -> Tokenizer:
    """'byte' -> the byte-level test tokenizer; otherwise a directory with tokenizer files."""
    return byte_tokenizer() if spec == "byte" else Tokenizer.from_pretrained(spec)


def load_start_model(model: str, tokenizer: str | None, seed: int,
                     cls: type[InternVL] = InternVL) -> tuple[InternVL, Tokenizer, Path | None]:
    """The model a run starts from, in fp32 on the CPU -> (model, tokenizer, checkpoint dir or None).

    `model` is a checkpoint directory / Hub repo id, or a preset name: a fresh model initialised from
    `seed` (the same seed gives the same weights, which resuming and merging a preset-based LoRA rely on).
    """
    from ..presets import PRESETS
    if model in PRESETS:
        if tokenizer is None:
            raise ConfigError(f"--model {model} is a preset (random weights): give --tokenizer DIR (or 'byte')")
        tok = load_tokenizer(tokenizer)
        cfg = PRESETS[model].config.replace(image_token_id=tok.convert_tokens_to_ids(IMG_CONTEXT_TOKEN))
        if tok.vocab_size > cfg.llm.vocab_size:
            raise ConfigError(f"the tokenizer has {tok.vocab_size} tokens but preset {model} embeds only "
                              f"{cfg.llm.vocab_size}")
        torch.manual_seed(seed)
        net = cls(cfg)
        net.init_weights()
        source = None
    else:
        net, source, _ = load_model(model, dtype=torch.float32, cls=cls)
        tok = load_tokenizer(tokenizer) if tokenizer else Tokenizer.from_pretrained(source)
    net.img_context_token_id = tok.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    if net.config.image_token_id is None:
        net.config = net.config.replace(image_token_id=net.img_context_token_id)
    return net, tok, source


def plain_model(config, state: dict[str, torch.Tensor]) -> InternVL:
    """An `InternVL` holding exactly `state` (no copy), ready to save or run."""
    model = build_model(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.language_model.rotary.reset_buffers()  # non-persistent buffers are not in `state`
    return model


# ---------------------------------------------------------------- RNG

def capture_rng() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- writing

def save_training_checkpoint(output_dir: str | os.PathLike, step: int, *, model_state: dict[str, torch.Tensor],
                             config, tokenizer: Tokenizer, tokenizer_source: Path | None,
                             optimizer_state: dict, scheduler_state: dict, rng_states: list[dict],
                             trainer_state: dict, adapter: dict | None = None, keep: int = 0) -> Path:
    """Write `output_dir/checkpoint-STEP` atomically, point `latest` at it, drop checkpoints beyond `keep`.

    Args:
        model_state: Full plain (merged) state dict of the model.
        config: The model's InternVLConfig.
        tokenizer_source: Checkpoint directory whose tokenizer files are copied unchanged (None: save
            `tokenizer` instead).
        rng_states: One RNG snapshot per rank.
        trainer_state: JSON-able run state (step, data position, settings).
        adapter: For LoRA runs, keyword arguments of `lora.save_adapter` (tensors, specs, base_model, seed).
        keep: Newest checkpoints to keep (0 = all).
    """
    out = Path(output_dir)
    final = out / f"{PREFIX}{step}"
    staging = out / f".{PREFIX}{step}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        save_checkpoint(plain_model(config, model_state), staging, OFFICIAL, side_files_from=tokenizer_source)
        if tokenizer_source is None or not any((tokenizer_source / f).exists() for f in SIDE_FILES):
            tokenizer.save_pretrained(staging)
        if adapter is not None:
            from .lora import save_adapter
            save_adapter(staging / ADAPTER, **adapter)
        ts = staging / TRAINER_STATE
        ts.mkdir()
        torch.save(optimizer_state, ts / "optimizer.pt")
        torch.save({"scheduler": scheduler_state, "rng": rng_states}, ts / "rng.pt")
        # state.json last: a staging directory without it was never finished
        (ts / "state.json").write_text(json.dumps({**trainer_state, "step": step}, indent=2, default=str) + "\n")
        _fsync_tree(staging)
        if final.exists():  # re-saving a step (e.g. a resumed run that stops where it started)
            _remove(final)
        os.replace(staging, final)
        _fsync_dir(out)
        write_latest(out, final.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if keep:
        prune(out, keep)
    return final


def write_latest(output_dir: Path, name: str) -> None:
    tmp = output_dir / f".{LATEST}.tmp"
    tmp.write_text(name + "\n")
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, output_dir / LATEST)


def prune(output_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints (never the one `latest` names)."""
    latest = latest_name(output_dir)
    done = sorted(list_checkpoints(output_dir), key=lambda p: step_of(p), reverse=True)
    for path in done[keep:]:
        if path.name != latest:
            _remove(path)


def clean_staging(output_dir: str | os.PathLike) -> None:
    """Remove what an interrupted save or delete left behind (hidden `.checkpoint-*` entries)."""
    out = Path(output_dir)
    if out.is_dir():
        for p in out.iterdir():
            if p.name.startswith(f".{PREFIX}") or p.name.startswith(".deleting-"):
                shutil.rmtree(p, ignore_errors=True)


def _remove(path: Path) -> None:
    # rename first: a crash mid-delete must not leave a half-deleted checkpoint-N under its real name
    doomed = path.with_name(f".deleting-{path.name}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- reading

def step_of(path: Path) -> int:
    m = _STEP_DIR.match(path.name)
    if not m:
        raise CheckpointError(f"{path}: not a checkpoint-STEP directory")
    return int(m.group(1))


def is_complete(path: Path) -> bool:
    return _STEP_DIR.match(path.name) is not None and (path / TRAINER_STATE / "state.json").is_file() \
        and (path / "config.json").is_file()


def list_checkpoints(output_dir: Path) -> list[Path]:
    return [p for p in output_dir.iterdir() if p.is_dir() and is_complete(p)] if output_dir.is_dir() else []


def find_latest(output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from: the one `latest` names, else the highest complete checkpoint-STEP."""
    out = Path(output_dir)
    name = latest_name(out)
    if name is not None:
        if is_complete(out / name):
            return out / name
        log.warning("%s names %s, which is not a complete checkpoint; looking for the newest one", out / LATEST,
                    out / name)
    done = list_checkpoints(out)
    return max(done, key=step_of) if done else None


def read_trainer_state(checkpoint: Path) -> tuple[dict, dict, dict]:
    """(state.json, optimizer state, {scheduler, rng}) of a checkpoint."""
    ts = checkpoint / TRAINER_STATE
    state = json.loads((ts / "state.json").read_text())
    optimizer = torch.load(ts / "optimizer.pt", map_location="cpu", weights_only=True)
    # our own file: RNG states hold numpy arrays and tuples, which the weights-only unpickler refuses
    extra = torch.load(ts / "rng.pt", map_location="cpu", weights_only=False)
    return state, optimizer, extra
