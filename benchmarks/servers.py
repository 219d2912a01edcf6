"""Pieces of the server benchmarks (`bench_serve`, `bench_dvd`): a random checkpoint whose every answer runs to
max_tokens, `internvl serve` subprocesses started and stopped, and a CPU meter that counts them as ours.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common as C


def build_checkpoint(directory: Path, preset: str, **config) -> Path:
    """Random `preset` weights (std 0.02; `config` overrides fields of its config) in the official layout,
    bf16, with the byte-level tokenizer beside them."""
    import torch

    from internvl.checkpoint.loader import save_checkpoint
    from internvl.models.internvl import InternVL
    from internvl.presets import PRESETS
    from internvl.processing.tokenizer import byte_tokenizer
    tok = byte_tokenizer()
    cfg = PRESETS[preset].config.replace(image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), **config)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = InternVL(cfg)
    model = model.to_empty(device="cpu")
    model.init_weights(std=0.02)
    with torch.no_grad():  # only byte tokens can win, so every answer is text (no EOS): max_tokens each
        lm = model.language_model
        head = lm.embed_tokens.weight if lm.lm_head is None else lm.lm_head.weight
        head[256:] = 0
    path = save_checkpoint(model.to(torch.bfloat16), directory, "official")
    tok.save_pretrained(path)
    return path


def cpu_ticks(pid: int) -> int:
    """User + system CPU time of a process so far, in clock ticks (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class ServersLoad(C.OtherLoad):
    """OtherLoad that also counts the server processes' CPU time as ours, and says each one's share."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__()
        self.pids = pids
        self._ticks0 = [cpu_ticks(pid) for pid in pids]

    def _snapshot(self) -> tuple[int, int, int]:
        busy, total, own = super()._snapshot()
        return busy, total, own + sum(cpu_ticks(pid) for pid in self.pids)

    def cpu_seconds(self) -> list[float]:
        """CPU seconds each server process used since this meter was made."""
        hz = os.sysconf("SC_CLK_TCK")
        return [(cpu_ticks(pid) - t0) / hz for pid, t0 in zip(self.pids, self._ticks0)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], timeout: float = 600.0) -> tuple[subprocess.Popen, str]:
    """`internvl serve ARGS` on a free port, once its /health answers -> (process, base URL)."""
    import httpx
    port = free_port()
    cmd = [sys.executable, "-m", "internvl", "serve", "--port", str(port), *args]
    # the server's own log goes to a file, so a server that fails mid-benchmark can say why (`log_tail`)
    with tempfile.NamedTemporaryFile("wb", prefix=f"internvl_serve_{port}_", suffix=".log", delete=False) as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)  # the child keeps its own handle
    proc.log_path = log.name
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop([proc])
            raise RuntimeError(f"the server did not start: {' '.join(cmd)}\n{log_tail(proc)}")
        time.sleep(0.2)


def log_tail(proc: subprocess.Popen, lines: int = 20) -> str:
    """The last lines of a server's log (what it said before a failure)."""
    try:
        text = Path(proc.log_path).read_text(errors="replace").splitlines()
    except (AttributeError, OSError):
        return "(no server log)"
    return "\n".join(f"  server: {line}" for line in text[-lines:])


def stop(procs: list[subprocess.Popen]) -> None:
    """Interrupt each server (a clean shutdown), killing any that has not exited 30 s later."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if hasattr(proc, "log_path"):
            Path(proc.log_path).unlink(missing_ok=True)
