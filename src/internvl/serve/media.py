"""An `image_url` -> image tiles: `data:` URIs, http(s) downloads, and local files under one allowed directory.

Every limit a hostile or careless request could hit is checked before the expensive step it guards: the
encoded size before decoding base64 or finishing a download, the pixel count from the header before
decompressing (a small PNG can claim gigapixels), the allowed directory after resolving symlinks. Each
failure is an APIError(400) naming the content part and the reason. Runs in a worker thread, not the
event loop (decoding and tiling are CPU work; downloads block).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import urllib.error
import urllib.parse
import urllib.request
import warnings

import torch
from PIL import Image

from ..errors import ImageLoadError
from ..processing.image import load_image
from .config import ServeConfig
from .messages import ImageRef
from .protocol import APIError


def _too_big(where: str, size: int, limit: int) -> APIError:
    return APIError(400, f"{where}: the image is {size:,} bytes, over the server's limit of {limit:,} bytes",
                    param=where)


def _from_data_uri(url: str, where: str, limit: int) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header:
        raise APIError(400, f"{where}: a data URI must look like 'data:image/png;base64,<data>'", param=where)
    if len(payload) * 3 // 4 > limit + 3:  # the decoded size, known before decoding
        raise _too_big(where, len(payload) * 3 // 4, limit)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise APIError(400, f"{where}: the data URI is not valid base64 ({e})", param=where) from None


def _download(url: str, where: str, limit: int, timeout: float) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "internvl-serve"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise _too_big(where, int(declared), limit)
            data = resp.read(limit + 1)
    except urllib.error.HTTPError as e:
        raise APIError(400, f"{where}: fetching {url} failed with HTTP {e.code} {e.reason}", param=where) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise APIError(400, f"{where}: cannot fetch {url} ({reason})", param=where) from None
    if len(data) > limit:
        raise _too_big(where, len(data), limit)
    return data


def _local(url: str, where: str, root: str | None, limit: int) -> bytes:
    if root is None:
        raise APIError(400, f"{where}: local image paths are disabled; start the server with "
                            "--allowed-local-media-path DIR to allow files under DIR", param=where)
    path = urllib.parse.unquote(urllib.parse.urlparse(url).path) if url.startswith("file:") else url
    base = os.path.realpath(root)
    real = os.path.realpath(os.path.join(base, path))
    if os.path.commonpath([real, base]) != base:
        raise APIError(400, f"{where}: {path} is outside the allowed media directory {root}", param=where)
    try:
        size = os.path.getsize(real)
        if size > limit:
            raise _too_big(where, size, limit)
        with open(real, "rb") as f:
            return f.read()
    except OSError as e:
        raise APIError(400, f"{where}: cannot read {path} ({e.strerror or e})", param=where) from None


def fetch(url: str, where: str, config: ServeConfig) -> bytes:
    """The encoded bytes an image_url points to."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return _from_data_uri(url, where, config.max_image_bytes)
    if scheme in ("http", "https"):
        return _download(url, where, config.max_image_bytes, config.media_timeout)
    if scheme == "file" or url.startswith("/"):
        return _local(url, where, config.allowed_local_media_path, config.max_image_bytes)
    raise APIError(400, f"{where}: unsupported image URL {url[:60]!r}: use a data: URI, an http(s) URL, or a "
                        "file path under the server's --allowed-local-media-path", param=where)


def check_pixels(data: bytes, where: str, limit: int) -> None:
    """Refuse an image whose header declares more than `limit` pixels, before anything is decompressed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
    except Image.DecompressionBombError:
        w = h = None  # Pillow refused on its own (even larger); say so below
    except Exception:
        return  # not an image at all: load_image names the problem
    if w is None or w * h > limit:
        size = f"{w}x{h} = {w * h:,} pixels" if w else "more pixels than Pillow allows"
        raise APIError(400, f"{where}: the image has {size}, over the server's limit of {limit:,} pixels "
                            "(decompression-bomb guard)", param=where)


def load_tiles(ref: ImageRef, config: ServeConfig, image_size: int, max_tiles: int, min_tiles: int = 1,
               use_thumbnail: bool = True) -> torch.Tensor:
    """One image_url -> its tiles (N, 3, image_size, image_size), as `internvl.load_image` makes them."""
    data = fetch(ref.url, ref.where, config)
    check_pixels(data, ref.where, config.max_image_pixels)
    try:
        return load_image(data, input_size=image_size, max_num=max_tiles, min_num=min(min_tiles, max_tiles),
                          use_thumbnail=use_thumbnail)
    except ImageLoadError as e:
        raise APIError(400, f"{ref.where}: {e}", param=ref.where) from None
