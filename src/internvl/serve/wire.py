"""The DvD wire format: what a language server sends a vision server (`POST /v1/encode`) and gets back.

Both bodies are safetensors files (`Content-Type: application/octet-stream`): an 8-byte little-endian
header length, a JSON header naming each tensor's dtype, shape and byte range, then the raw bytes. It is
self-describing, has no pickle, and every tensor is one memory copy away from the network buffer.

    request   pixel_values  (N, 3, S, S)  bf16, fp16 or fp32   one request's tiles, all its images in order
    response  features      (M, D)        the vision server's dtype (bf16 in deployment, as the paper sends)
              compressed    (N,)          bool: tile i was routed to the 64-token branch (Flash; else all False)

M is N * num_image_token when no tile is compressed; a compressed tile contributes num_image_token // 4 rows.
D is the LLM's hidden size. The response's metadata holds `num_image_token` so the receiver can check M.
"""

from __future__ import annotations

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

ENCODE_PATH = "/v1/encode"
MEDIA_TYPE = "application/octet-stream"
TILE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


class WireError(ValueError):
    """A body that is not what the wire format says (the message names the problem)."""


def _tensors(body: bytes, what: str, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    if not body:
        raise WireError(f"the {what} is empty; it must be a safetensors file")
    try:
        tensors = load(body)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as e:
        raise WireError(f"the {what} is not a valid safetensors file ({e})") from None
    if set(tensors) != set(keys):
        raise WireError(f"the {what} must hold exactly the tensors {', '.join(keys)}; it holds "
                        f"{', '.join(sorted(tensors)) or 'none'}")
    return tensors


def pack_tiles(pixel_values: torch.Tensor) -> bytes:
    return save({"pixel_values": pixel_values.contiguous()})


def unpack_tiles(body: bytes, image_size: int, max_tiles: int) -> torch.Tensor:
    """A request body -> its tiles (N, 3, S, S), or WireError saying what is wrong with it."""
    tiles = _tensors(body, "request body", ("pixel_values",))["pixel_values"]
    if tiles.dtype not in TILE_DTYPES:
        raise WireError(f"pixel_values has dtype {tiles.dtype}; send bf16, fp16 or fp32")
    if tiles.ndim != 4 or tuple(tiles.shape[1:]) != (3, image_size, image_size) or tiles.shape[0] < 1:
        raise WireError(f"pixel_values has shape {tuple(tiles.shape)}; this model takes tiles of shape "
                        f"(N, 3, {image_size}, {image_size}) with N >= 1")
    if tiles.shape[0] > max_tiles:
        raise WireError(f"pixel_values holds {tiles.shape[0]} tiles, over this server's limit of {max_tiles} "
                        "per request")
    if not torch.isfinite(tiles).all():
        raise WireError("pixel_values holds NaN or infinite values")
    return tiles


def pack_features(features: torch.Tensor, compressed: torch.Tensor, num_image_token: int) -> bytes:
    return save({"features": features.contiguous(), "compressed": compressed.to(torch.bool).contiguous()},
                metadata={"num_image_token": str(num_image_token)})


def unpack_features(body: bytes, tiles: int, num_image_token: int, hidden_size: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """A response body -> (features (M, D), compressed (N,) bool), checked against what was sent."""
    t = _tensors(body, "response", ("features", "compressed"))
    features, compressed = t["features"], t["compressed"]
    if compressed.dtype != torch.bool or tuple(compressed.shape) != (tiles,):
        raise WireError(f"compressed has dtype {compressed.dtype} and shape {tuple(compressed.shape)}; "
                        f"expected bool ({tiles},) for the {tiles} tiles sent")
    small = int(compressed.sum())
    rows = (tiles - small) * num_image_token + small * (num_image_token // 4)
    if not features.is_floating_point() or tuple(features.shape) != (rows, hidden_size):
        raise WireError(f"features has dtype {features.dtype} and shape {tuple(features.shape)}; expected a float "
                        f"tensor of shape ({rows}, {hidden_size}) for {tiles} tiles of {num_image_token} tokens "
                        f"({small} compressed) and this LLM's hidden size; do both servers load the same model?")
    if not torch.isfinite(features).all():
        raise WireError("features holds NaN or infinite values")
    return features, compressed
