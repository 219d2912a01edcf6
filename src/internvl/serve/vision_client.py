"""The language server's side of DvD: send one request's tiles to a vision server, get its image tokens back.

Called from the request handler, before the job reaches the engine thread, so a new request's images are
encoded while the engine decodes the running ones. The least-loaded vision server is tried first (ties in
turn, round robin); one that is down, slow or answers garbage is skipped for the next, and when none
answers the request ends with a 503 (502 when every server answered, but wrongly) naming each URL and what
went wrong. Nothing is remembered about a failed server: it is tried again on the next request, so the
language server recovers as soon as it is back. Every call is bounded by `--vision-timeout`.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import torch
from starlette.concurrency import run_in_threadpool

from .protocol import APIError
from .wire import ENCODE_PATH, MEDIA_TYPE, WireError, pack_tiles, unpack_features

log = logging.getLogger(__name__)


class VisionFailure(Exception):
    def __init__(self, message: str, unavailable: bool) -> None:
        super().__init__(message)
        self.unavailable = unavailable  # down, slow or refusing for its own reasons (not a wrong answer)


class VisionClient:
    def __init__(self, urls: tuple[str, ...], timeout: float, num_image_token: int, hidden_size: int,
                 api_key: str | None = None, max_calls: int = 64) -> None:
        self.urls, self.timeout, self.api_key = list(urls), timeout, api_key
        # One thread per call in flight (made when needed), enough for every request the server admits: a
        # shared pool would queue calls, cap how many requests a vision server can batch, and eat timeouts.
        self._pool = ThreadPoolExecutor(max_calls, thread_name_prefix="internvl-vision-call")
        self.num_image_token, self.hidden_size = num_image_token, hidden_size
        self.in_flight = {u: 0 for u in self.urls}  # event-loop thread only
        self.failures = 0
        self._turn = 0

    def order(self) -> list[str]:
        """The servers to try: fewest requests in flight first, ties in round-robin order."""
        start, self._turn = self._turn, (self._turn + 1) % len(self.urls)
        rotated = self.urls[start:] + self.urls[:start]
        return sorted(rotated, key=lambda u: self.in_flight[u])  # a stable sort keeps the rotation among ties

    async def encode(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tiles (N, 3, S, S) -> (image tokens (M, D), compressed (N,) bool), or APIError 503/502."""
        body = await run_in_threadpool(pack_tiles, pixel_values)
        tiles, problems, unavailable = pixel_values.shape[0], [], False
        for url in self.order():
            self.in_flight[url] += 1
            try:
                return await self._call(url, body, tiles)
            except VisionFailure as e:
                self.failures += 1
                log.warning("vision server %s: %s", url, e)
                problems.append(f"{url} {e}")
                unavailable = unavailable or e.unavailable
            finally:
                self.in_flight[url] -= 1
        raise APIError(503 if unavailable else 502, "could not encode the request's images: vision server "
                       + "; ".join(problems), code="vision_server_unavailable" if unavailable else "vision_server_error")

    async def _call(self, url: str, body: bytes, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
        parts = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=self.timeout)
        limit = tiles * self.num_image_token * self.hidden_size * 4 + 2**16  # fp32 features + header room
        try:
            status, data = await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(
                    self._pool, self._post, conn, parts.path + ENCODE_PATH, body, limit), self.timeout)
        except (asyncio.TimeoutError, TimeoutError, socket.timeout):
            raise VisionFailure(f"did not answer within {self.timeout:g} s", True) from None
        except (OSError, http.client.HTTPException) as e:
            raise VisionFailure(f"is unreachable ({type(e).__name__}: {e})", True) from None
        finally:
            _abort(conn)  # also wakes a thread still blocked on the socket after a timeout
        if status != 200:
            raise VisionFailure(f"answered HTTP {status}: {_message(data)}", status >= 500)
        if len(data) > limit:
            raise VisionFailure(f"answered more than {limit:,} bytes for {tiles} tiles", False)
        try:
            return await run_in_threadpool(unpack_features, data, tiles, self.num_image_token, self.hidden_size)
        except WireError as e:
            raise VisionFailure(f"answered something unusable: {e}", False) from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _post(self, conn: http.client.HTTPConnection, path: str, body: bytes, limit: int) -> tuple[int, bytes]:
        headers = {"Content-Type": MEDIA_TYPE}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read(limit + 1)


def _abort(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    conn.close()


def _message(data: bytes) -> str:
    """The error message of an OpenAI-style error body, else the start of the body."""
    try:
        return str(json.loads(data)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        text = data[:200].decode("utf-8", "replace")
        return repr(text) if text else "(empty body)"
