"""Compile the kernels (decode.c, layer.c) on first use with the system C compiler, cache the library per
user, load it with ctypes.

The library is built for the CPU this process runs on (AVX-512 with or without BF16, AVX2+FMA, or the
compiler's baseline, chosen from /proc/cpuinfo) and cached under `~/.cache/internvl/kernels` (or `$XDG_CACHE_HOME`, or
`$INTERNVL_KERNELS_CACHE`) in a file named by the hash of the source, the instruction-set flags and the
compiler's identity, so a changed source or compiler builds anew and every process after the first loads it in
milliseconds. Builds go to a temporary name and are renamed into place, so concurrent processes never see a
half-written library.

OpenMP: torch's CPU wheels load their own `libgomp.so.1`; the library names the same soname, so the dynamic
loader binds it to the runtime already loaded and the kernels run on torch's thread pool instead of starting
a second one that would spin against it.

Without a compiler, or when the build fails, `library()` warns once (one line: why, and that the PyTorch path
is used) and returns None; `INTERNVL_KERNELS=0` turns the kernels off without a warning.
`INTERNVL_KERNELS_ISA=avx2|avx512|generic` builds for a smaller instruction set than the CPU's (how the
benchmarks emulate an AVX2-only CPU).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

SOURCES = [Path(__file__).with_name(name) for name in ("decode.c", "layer.c")]
HEADER = Path(__file__).with_name("kernels.h")
SWITCH = "INTERNVL_KERNELS"  # "0" turns the kernels off
CACHE_ENV = "INTERNVL_KERNELS_CACHE"
ISA_ENV = "INTERNVL_KERNELS_ISA"  # build for another instruction set this CPU also runs (e.g. avx2, to emulate)
BUILD_TIMEOUT_S = 900  # a slow, busy machine needs minutes for the baseline build

ISA_FLAGS = {  # name -> (cpuinfo flags it needs, compiler flags); the first the CPU has is built
    "avx512bf16": ({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "avx2", "fma"},
                   ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mavx2", "-mfma"]),
    "avx512": ({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma"},
               ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma"]),
    "avx2": ({"avx2", "fma"}, ["-mavx2", "-mfma"]),
    "generic": (set(), []),
}


class Mat(ctypes.Structure):
    """One weight matrix as decode.c reads it (its `Mat`)."""

    _fields_ = [("fmt", ctypes.c_int32), ("n", ctypes.c_int32), ("k", ctypes.c_int32), ("pad_", ctypes.c_int32),
                ("w", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("gscale", ctypes.c_void_p),
                ("bias", ctypes.c_void_p)]


class Layer(ctypes.Structure):
    """One decoder layer as layer.c reads it (its `Layer`): its seven products, norm weights and shape."""

    _fields_ = [*((name, ctypes.POINTER(Mat)) for name in ("q", "k", "v", "o", "gate", "up", "down")),
                *((name, ctypes.c_void_p) for name in ("in_norm", "post_norm", "q_norm", "k_norm")),
                ("eps", ctypes.c_float),
                *((name, ctypes.c_int32) for name in ("n_heads", "n_kv", "head_dim", "hidden", "inter"))]


class BuildError(RuntimeError):
    """The kernels could not be built or loaded (the message says why)."""


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def choose_isa(flags: set[str]) -> str:
    return next(name for name, (needs, _) in ISA_FLAGS.items() if needs <= flags)


def compiler() -> list[str]:
    """The C compiler command: $CC (may carry flags), else cc or gcc on the PATH."""
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    found = shutil.which("cc") or shutil.which("gcc")
    if found is None:
        raise BuildError("no C compiler (cc/gcc) on the PATH and $CC unset")
    return [found]


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "internvl" / "kernels"


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BuildError(f"{shlex.join(cmd[:1])} failed to run: {e}") from None


def build(cc: list[str] | None = None, isa: str | None = None, directory: Path | None = None) -> Path:
    """Compile the kernels (or find them cached) and return the library's path; raises BuildError."""
    cc = cc or compiler()
    isa = isa or os.environ.get(ISA_ENV, "").strip() or choose_isa(cpu_flags())
    if isa not in ISA_FLAGS:
        raise BuildError(f"{ISA_ENV}={isa!r} names no build; choose one of {', '.join(ISA_FLAGS)}")
    if not ISA_FLAGS[isa][0] <= cpu_flags():
        raise BuildError(f"this CPU cannot run the {isa} build (it lacks "
                         f"{', '.join(sorted(ISA_FLAGS[isa][0] - cpu_flags()))})")
    version = _run([*cc, "--version"], 60)
    if version.returncode != 0:
        raise BuildError(f"{shlex.join(cc)} --version exited with {version.returncode}")
    source = b"\0".join(path.read_bytes() for path in [HEADER, *SOURCES])
    flags = ["-O3", "-shared", "-fPIC", "-Wno-psabi", *ISA_FLAGS[isa][1]]
    key = hashlib.sha256(b"\0".join([source, shlex.join(cc + flags).encode(), version.stdout.encode()])).hexdigest()
    directory = directory or cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:  # e.g. a read-only home: a per-user temporary directory instead
        directory = Path(tempfile.gettempdir()) / f"internvl-kernels-{os.getuid()}"
        directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"decode-{isa}-{key[:16]}.so"
    if target.exists():
        return target
    tmp = directory / f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        for openmp in (["-fopenmp"], []):
            done = _run([*cc, *flags, *openmp, *map(str, SOURCES), "-o", str(tmp), "-lm"], BUILD_TIMEOUT_S)
            if done.returncode == 0:
                os.replace(tmp, target)  # atomic: other processes see no file or the whole file
                return target
            if "omp" not in done.stderr.lower():  # only a compiler without OpenMP gets a one-thread build
                break
    finally:
        tmp.unlink(missing_ok=True)
    lines = done.stderr.strip().splitlines()
    why = next((line for line in lines if "error" in line), lines[-1] if lines else f"exit code {done.returncode}")
    raise BuildError(f"{shlex.join(cc)} could not compile the kernels: {why}")


def load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.iv_gemv.argtypes = [ctypes.POINTER(Mat), ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                            ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.iv_gemv.restype = ctypes.c_int
    lib.iv_decode_layer.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                    ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                    ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.iv_decode_layer.restype = ctypes.c_int
    lib.iv_team_size.argtypes = [ctypes.c_int]
    lib.iv_team_size.restype = ctypes.c_int
    lib.iv_isa.restype = ctypes.c_char_p
    lib.iv_openmp_entry.restype = ctypes.c_void_p
    if lib.iv_sizeof_layer() != ctypes.sizeof(Layer):
        raise BuildError(f"{path.name}: its Layer has {lib.iv_sizeof_layer()} bytes, ours {ctypes.sizeof(Layer)}")
    if lib.iv_sizeof_mat() != ctypes.sizeof(Mat):
        raise BuildError(f"{path.name}: its Mat has {lib.iv_sizeof_mat()} bytes, ours {ctypes.sizeof(Mat)}")
    return lib


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p), ("dli_sname", ctypes.c_char_p),
                ("dli_saddr", ctypes.c_void_p)]


def openmp_runtime(lib: ctypes.CDLL) -> str | None:
    """The file of the OpenMP runtime `lib` runs on (torch's own, when the loader bound them), or None."""
    entry = lib.iv_openmp_entry()
    if not entry:
        return None
    info = _DlInfo()
    if not ctypes.CDLL(None).dladdr(ctypes.c_void_p(entry), ctypes.byref(info)) or not info.dli_fname:
        return None
    return os.path.realpath(info.dli_fname.decode())


_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_tried = False


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (switched off, or unavailable: warned once)."""
    global _library, _tried
    if not _tried:
        with _lock:
            if not _tried:
                _library = _load_or_warn()
                _tried = True
    return _library


def _load_or_warn() -> ctypes.CDLL | None:
    if os.environ.get(SWITCH, "1").strip().lower() in ("0", "off", "false", "no"):
        return None
    import torch  # noqa: F401  (first, so its OpenMP runtime is the one the library binds to)
    try:
        return load(build())
    except (BuildError, OSError) as e:
        warnings.warn(f"internvl decode kernels unavailable ({e}); using the PyTorch path", RuntimeWarning,
                      stacklevel=3)
        return None


def reset() -> None:
    """Forget the loaded library, so the next `library()` looks again (for tests)."""
    global _library, _tried
    with _lock:
        _library, _tried = None, False
