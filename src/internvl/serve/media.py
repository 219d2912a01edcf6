"""The images of a request: `image_url`s (`data:` URIs, http(s) downloads, local files under one allowed
directory) -> tiles.

Every limit a hostile or careless request could hit is checked before the expensive step it guards:
- the URL's form before any fetch (scheme, host, port, no control or NUL characters);
- the encoded size before decoding base64 or finishing a download;
- the time of each fetch, as a hard deadline (a slow or silent server, a slow DNS answer);
- local paths after resolving symlinks, and only regular files (a FIFO would block a read for ever);
- each image's pixel count and side lengths from its header, before anything is decompressed (a 100-byte PNG
  can claim gigapixels, or 1 x 40,000,000 pixels, which costs seconds to resample), and the pixels of all
  the request's images together.
Each failure is an APIError(400) naming the content part and the reason. Runs in a worker thread, not the
event loop (decoding and tiling are CPU work; downloads block).
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import ipaddress
import os
import re
import stat
import threading
import time
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

MAX_URL_LENGTH = 8192  # characters of an http(s) URL or a path (data URIs are bounded by max_image_bytes)
_CHUNK = 64 * 1024
_HOST = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?")


def _bad(where: str, reason: str) -> APIError:
    return APIError(400, f"{where}: {reason}", param=where)


def _too_big(where: str, size: int, limit: int) -> APIError:
    return _bad(where, f"the image is {size:,} bytes, over the server's limit of {limit:,} bytes")


def _shown(url: str) -> str:
    return repr(url if len(url) <= 80 else url[:77] + "...")


def _from_data_uri(url: str, where: str, limit: int) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header:
        raise _bad(where, "a data URI must look like 'data:image/png;base64,<data>'")
    if len(payload) * 3 // 4 > limit + 3:  # the decoded size, known before decoding
        raise _too_big(where, len(payload) * 3 // 4, limit)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _bad(where, f"the data URI is not valid base64 ({e})") from None


def check_http_url(url: str, where: str) -> None:
    """Refuse an http(s) URL that is not well formed, before anything is fetched."""
    if len(url) > MAX_URL_LENGTH:
        raise _bad(where, f"the URL is {len(url):,} characters long, over the limit of {MAX_URL_LENGTH:,}")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise _bad(where, f"the URL {_shown(url)} contains spaces or control characters (percent-encode them)")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number in 0..65535
    except ValueError as e:
        raise _bad(where, f"the URL {_shown(url)} is malformed ({e})") from None
    host = parts.hostname or ""
    if not host:
        raise _bad(where, f"the URL {_shown(url)} has no host")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            ascii_host = host.encode("idna").decode("ascii")
        except UnicodeError:
            ascii_host = ""
        if not _HOST.fullmatch(ascii_host):
            raise _bad(where, f"the URL {_shown(url)} does not name a valid host ({host!r})") from None
    if port == 0:
        raise _bad(where, f"the URL {_shown(url)} names port 0")


class _HTTPOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s) URLs that pass the same checks (urllib alone would follow ftp://)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, f"redirect to a {scheme or 'relative'}: URL refused", headers,
                                         fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_opener = urllib.request.build_opener(_HTTPOnlyRedirects)


def _read_url(url: str, where: str, limit: int, timeout: float, deadline: float) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "internvl-serve"})
    try:
        with _opener.open(req, timeout=timeout) as resp:
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise _too_big(where, int(declared), limit)
            data = bytearray()
            while len(data) <= limit:
                if time.monotonic() > deadline:  # a slow trickle: stop reading (the caller answered already)
                    raise _bad(where, f"fetching {_shown(url)} took longer than {timeout:g} s")
                chunk = resp.read(min(_CHUNK, limit + 1 - len(data)))
                if not chunk:
                    break
                data += chunk
    except urllib.error.HTTPError as e:
        raise _bad(where, f"fetching {_shown(url)} failed with HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise _bad(where, f"cannot fetch {_shown(url)} ({type(e).__name__}: {reason})") from None
    if len(data) > limit:
        raise _too_big(where, len(data), limit)
    return bytes(data)


def _download(url: str, where: str, limit: int, timeout: float) -> bytes:
    """The body at `url`, within `timeout` seconds in all: connecting, DNS and every read. The fetch runs in a
    thread of its own so the deadline holds even where a socket timeout does not (name resolution); a
    fetch past its deadline is abandoned and stops at its next read."""
    check_http_url(url, where)
    deadline = time.monotonic() + timeout
    result: dict[str, object] = {}

    def fetch() -> None:
        try:
            result["data"] = _read_url(url, where, limit, timeout, deadline)
        except BaseException as e:  # handed to the waiting thread
            result["error"] = e

    thread = threading.Thread(target=fetch, name="internvl-fetch", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise _bad(where, f"fetching {_shown(url)} took longer than {timeout:g} s (the server's --media-timeout)")
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["data"]  # type: ignore[return-value]


def _local(url: str, where: str, root: str | None, limit: int) -> bytes:
    if root is None:
        raise _bad(where, "local image paths are disabled; start the server with --allowed-local-media-path DIR to "
                          "allow files under DIR")
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path) if url.startswith("file:") else url
    if "\0" in path:
        raise _bad(where, "the path contains a NUL character")
    if len(path) > MAX_URL_LENGTH:
        raise _bad(where, f"the path is {len(path):,} characters long, over the limit of {MAX_URL_LENGTH:,}")
    base = os.path.realpath(root)
    real = os.path.realpath(os.path.join(base, path))
    if os.path.commonpath([real, base]) != base:
        raise _bad(where, f"{path} is outside the allowed media directory {root}")
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOFOLLOW: no symlink swapped in since realpath
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise _bad(where, f"cannot read {path} ({e.strerror or e})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode) else \
                "a device or socket"
            raise _bad(where, f"{path} is {kind}, not a regular file")
        if info.st_size > limit:
            raise _too_big(where, info.st_size, limit)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise _bad(where, f"cannot read {path} ({e.strerror or e})") from None
    if len(data) > limit:
        raise _too_big(where, len(data), limit)
    return data


def fetch(url: str, where: str, config: ServeConfig) -> bytes:
    """The encoded bytes an image_url points to."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return _from_data_uri(url, where, config.max_image_bytes)
    if scheme in ("http", "https"):
        return _download(url, where, config.max_image_bytes, config.media_timeout)
    if scheme == "file" or url.startswith("/"):
        return _local(url, where, config.allowed_local_media_path, config.max_image_bytes)
    raise _bad(where, f"unsupported image URL {_shown(url[:60])}: use a data: URI, an http(s) URL, or a file path "
                      "under the server's --allowed-local-media-path")


def check_pixels(data: bytes, where: str, config: ServeConfig) -> int:
    """The pixels an image's header declares (0 when it is not an image: decoding names that problem);
    refuses more than `max_image_pixels` or a side over `max_image_side`, before anything is decompressed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
    except Image.DecompressionBombError:
        raise _bad(where, f"the image has more pixels than Pillow allows, over the server's limit of "
                          f"{config.max_image_pixels:,} pixels (decompression-bomb guard)") from None
    except Exception:
        return 0  # not an image at all, or a corrupt header: load_image names the problem
    if w * h > config.max_image_pixels:
        raise _bad(where, f"the image has {w}x{h} = {w * h:,} pixels, over the server's limit of "
                          f"{config.max_image_pixels:,} pixels (decompression-bomb guard)")
    if max(w, h) > config.max_image_side:
        raise _bad(where, f"the image is {w}x{h} pixels; its longer side is over the server's limit of "
                          f"{config.max_image_side:,} pixels")
    return w * h


def load_images(refs: list[ImageRef], config: ServeConfig, image_size: int, max_tiles: list[int], min_tiles: int = 1,
                use_thumbnail: bool = True) -> list[torch.Tensor]:
    """The request's images -> their tiles (N_i, 3, image_size, image_size), as `internvl.load_image` makes them.

    All images are fetched and their headers checked (alone and together) before any of them is decoded.
    """
    encoded = [fetch(ref.url, ref.where, config) for ref in refs]
    pixels = [check_pixels(data, ref.where, config) for data, ref in zip(encoded, refs)]
    if sum(pixels) > config.max_request_pixels:
        raise APIError(400, f"the request's {len(refs)} images have {sum(pixels):,} pixels in all, over the "
                            f"server's limit of {config.max_request_pixels:,} per request", param="messages")
    tiles = []
    for data, ref, most in zip(encoded, refs, max_tiles):
        try:
            tiles.append(load_image(data, input_size=image_size, max_num=most, min_num=min(min_tiles, most),
                                    use_thumbnail=use_thumbnail))
        except ImageLoadError as e:
            raise _bad(ref.where, str(e)) from None
    return tiles
