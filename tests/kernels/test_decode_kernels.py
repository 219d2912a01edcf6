"""The compiled decode kernels (internvl.kernels): GEMV against float64 math for every weight format, odd
shapes and strides, bad input, the decoder's hook, greedy parity through the engine with the kernels on and
off, the fallback without a compiler, the cache, and the OpenMP thread team.

Tolerances (docs/parity.md): fp32 outputs within 1e-5 of the sum of |terms| (fp32 summation order);
bf16 outputs additionally within one bf16 rounding (2^-8 relative) of the exact value."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from internvl.engine.engine import Engine
from internvl.engine.sampling import SamplingParams
from internvl.kernels import build, gemv
from internvl.kernels import layer as fused_layer
from internvl.kernels.gemv import (decode_kernels, dense_weight, dequantize_int4, int4_weight, int8_weight, linear,
                                   matmul, quantize_int4)
from internvl.models import decoder
from internvl.models.internvl import InternVL
from internvl.presets import PRESETS
from internvl.quantize import Int8Linear, quantize_int8

SHAPES = [(1, 1), (1, 17), (37, 50), (129, 96), (70, 1000)]  # (n, k): k % 16 != 0, n % 8 != 0, n = 1


@pytest.fixture(scope="module")
def lib():
    loaded = build.library()
    assert loaded is not None, "the kernels must build on the test machine (it has a C compiler)"
    return loaded


def make_weight(fmt: str, n: int, k: int, bias: bool, seed: int):
    """(kernel Weight, its exact float64 matrix, float64 bias or None) for one format."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    if fmt in ("fp32", "bf16"):
        dt = torch.float32 if fmt == "fp32" else torch.bfloat16
        w, b = w.to(dt), None if b is None else b.to(dt)
        return dense_weight(w, b), w.double(), None if b is None else b.double()
    if fmt == "int8":
        q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
        scale = torch.rand(n, generator=g).to(torch.bfloat16)  # Int8Linear keeps scales in the model dtype
        return int8_weight(q, scale, b), q.double() * scale.double()[:, None], None if b is None else b.double()
    packed, gscale = quantize_int4(w)
    return int4_weight(packed, gscale, b), dequantize_int4(packed, gscale).double(), None if b is None else b.double()


def check(y: torch.Tensor, x: torch.Tensor, w64: torch.Tensor, b64: torch.Tensor | None) -> None:
    x64 = x.double()
    ref = x64 @ w64.T + (0 if b64 is None else b64)
    size = x64.abs() @ w64.abs().T + (0 if b64 is None else b64.abs())
    tol = 1e-5 * size + 1e-30
    if y.dtype == torch.bfloat16:
        tol = tol + 2.0 ** -8 * ref.abs()
    err = (y.double() - ref).abs()
    assert (err <= tol).all(), f"max error {err.max().item():.3g}, tolerance there {tol[err.argmax() // err.shape[-1]]}"


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "int8", "int4"])
def test_gemv_matches_float64_for_every_format_shape_and_row_count(lib, fmt):
    for i, (n, k) in enumerate(SHAPES):
        if fmt == "int4":
            k = 32 * max(1, k // 32)  # the format's groups
        for bias in (False, True):
            w, w64, b64 = make_weight(fmt, n, k, bias, seed=i)
            for rows in range(1, 9):
                for act in (torch.float32, torch.bfloat16):
                    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows)).to(act)
                    y = matmul(x, w)
                    assert y.shape == (rows, n) and y.dtype == act
                    check(y, x, w64, b64)


def test_bf16_agrees_with_torch_linear(lib):
    g = torch.Generator().manual_seed(3)
    layer = nn.Linear(200, 77).to(torch.bfloat16)
    x = torch.randn(3, 200, generator=g).to(torch.bfloat16)
    with torch.no_grad():
        want = layer(x).float()
    got = matmul(x, dense_weight(layer.weight, layer.bias)).float()
    # torch's bf16 linear rounds its output once too (and may round before the bias): two bf16 steps apart at most
    torch.testing.assert_close(got, want, rtol=2 ** -7, atol=1e-2)


def test_strided_batched_and_empty_inputs(lib):
    w, w64, b64 = make_weight("bf16", 45, 40, True, seed=7)
    base = torch.randn(4, 3, 80)
    every_other = base[:, 0, ::2]  # last dimension not contiguous: copied first
    rows_apart = base[:, :, :40][:, -1]  # rows 240 elements apart: read in place
    assert every_other.stride(-1) == 2 and rows_apart.stride(0) == 240
    for x in (every_other, rows_apart):
        assert torch.equal(matmul(x, w), matmul(x.contiguous(), w))
    x = torch.randn(2, 11, 40)  # 22 rows: three passes of at most 8, leading dimensions kept
    y = matmul(x, w)
    assert y.shape == (2, 11, 45)
    check(y.reshape(22, 45), x.reshape(22, 40), w64, b64)
    assert matmul(torch.randn(0, 40), w).shape == (0, 45)


def test_bad_input_is_refused_with_a_clear_error(lib):
    w = dense_weight(torch.randn(8, 16))
    with pytest.raises(ValueError, match="16"):
        matmul(torch.randn(2, 15), w)
    with pytest.raises(TypeError, match="float16"):
        matmul(torch.randn(2, 16).half(), w)
    with pytest.raises(TypeError, match="fp32 or bf16"):
        dense_weight(torch.randn(8, 16).half())
    with pytest.raises(ValueError, match="contiguous"):
        dense_weight(torch.randn(16, 8).T)
    with pytest.raises(ValueError, match="int8"):
        int8_weight(torch.zeros(8, 16, dtype=torch.int8), torch.ones(7))
    with pytest.raises(ValueError, match="divisible by 32"):
        quantize_int4(torch.randn(4, 48))
    packed, scale = quantize_int4(torch.randn(4, 64))
    with pytest.raises(ValueError, match="int4"):
        int4_weight(packed, scale.float())


def test_int4_round_trip_is_within_half_a_step():
    w = torch.randn(6, 96)
    packed, scale = quantize_int4(w)
    assert packed.dtype == torch.uint8 and packed.shape == (6, 48) and scale.shape == (6, 3)
    step = scale.float().repeat_interleave(32, dim=1)
    assert ((dequantize_int4(packed, scale) - w).abs() <= step / 2 + step * 2 ** -8).all()


# ---------------------------------------------------------------- the decoder's hook

def count_kernel_calls(monkeypatch) -> list[tuple[int, ...]]:
    calls = []
    real = gemv.matmul

    def spy(x, w, lib=None):
        calls.append(tuple(x.shape))
        return real(x, w, lib)

    monkeypatch.setattr(gemv, "matmul", spy)
    return calls


def test_linear_uses_the_kernel_only_in_decode_steps_without_autograd(lib, monkeypatch):
    calls = count_kernel_calls(monkeypatch)
    layer = nn.Linear(40, 24).to(torch.bfloat16)
    q8 = Int8Linear.from_linear(layer)
    x = torch.randn(1, 1, 40).to(torch.bfloat16)
    x8 = torch.randn(8, 40).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(linear(x, layer), layer(x))  # no decode context: the module itself
        with decode_kernels(rows=8, dtype=torch.bfloat16, device="cpu") as on:
            assert on
            y, y8 = linear(x, layer), linear(x, q8)
            assert y.shape == y8.shape == (1, 1, 24)
            linear(x8, q8)  # int8: up to 8 rows
            linear(x8[:2], layer)  # bf16 and fp32 weights: one row only (DENSE_MAX_ROWS)
            linear(torch.randn(9, 40).to(torch.bfloat16), q8)  # more rows than a pass: torch
            linear(x.float(), nn.Linear(40, 24))  # fp32 weights
            linear(x.half(), nn.Linear(40, 24).half())  # fp16: torch
        with decode_kernels(rows=9, dtype=torch.bfloat16, device="cpu") as on:
            assert not on
    assert calls == [(1, 1, 40), (1, 1, 40), (8, 40), (1, 1, 40)]
    with decode_kernels(rows=1, dtype=torch.float32, device="cpu"):  # autograd on: torch
        out = linear(torch.randn(1, 40, requires_grad=True), nn.Linear(40, 24))
        assert out.requires_grad
    assert len(calls) == 4
    torch.testing.assert_close(y.float(), layer(x).float(), rtol=2 ** -7, atol=1e-2)


def test_weights_written_in_place_are_seen(lib):
    layer = nn.Linear(32, 16)
    x = torch.randn(1, 32)
    with torch.no_grad(), decode_kernels(rows=1, dtype=torch.float32, device="cpu"):
        before = linear(x, layer)
        layer.weight.mul_(2)
        layer.bias.zero_()
        after = linear(x, layer)
        torch.testing.assert_close(after, layer(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(before, after)


# ---------------------------------------------------------------- greedy parity through the engine

def qwen2_model(dtype: torch.dtype, tied: bool, seed: int = 0, hidden: int = 72, inter: int = 200) -> InternVL:
    """A random Qwen2-shaped InternVL (q/k/v biases, random) with a head of its own or a tied one."""
    cfg = PRESETS["tiny-random"].config
    llm = dataclasses.replace(cfg.llm, hidden_size=hidden, intermediate_size=inter, num_attention_heads=4,
                              num_key_value_heads=2, tie_word_embeddings=tied)
    torch.manual_seed(seed)
    model = InternVL(dataclasses.replace(cfg, llm=llm)).eval()
    model.init_weights(std=0.1)
    with torch.no_grad():
        for name, p in model.language_model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model.to(dtype)


def greedy(model: InternVL, logits: list | None = None) -> list[list[int]]:
    """Four requests of different lengths decoded together (decode steps of 4, 3, 2 and 1 rows); `logits`
    collects what each step sampled from."""
    g = torch.Generator().manual_seed(1)
    reqs = [(torch.randint(10, 260, (n,), generator=g).tolist(), None, SamplingParams(max_new_tokens=m))
            for n, m in ((5, 6), (9, 4), (3, 8), (14, 3))]
    engine = Engine(model, max_batch=4)
    if logits is not None:
        real = engine._sample
        engine._sample = lambda seqs, x: (logits.append(x.float()), real(seqs, x))[1]
    return [s.output_ids for s in engine.generate(reqs)]


# Each model's seed is one whose reference greedy steps have clear top-1 margins (random models have flat
# logits, and bf16 ties are common): at least one bf16 step at the top logits (1/64) for bf16, at least 1/32
# and above the int8 deviation for int8. The deviation bounds are the parity tolerances in docs/parity.md.
def count_fused_steps(monkeypatch) -> list[int]:
    """Rows of each decode step the fused layer kernel (layer.c) ran."""
    steps = []
    real = decoder.decode_layers

    def spy(layers, x, *args):
        out = real(layers, x, *args)
        if out is not None:
            steps.append(x.shape[0])
        return out

    monkeypatch.setattr(decoder, "decode_layers", spy)
    return steps


@pytest.mark.parametrize("fused", [True, False], ids=["fused-layers", "per-product"])
@pytest.mark.parametrize("dtype,int8,tied,seed,max_dev", [
    (torch.bfloat16, False, False, 1, 0.02), (torch.bfloat16, True, False, 0, 0.06),
    (torch.float32, False, True, 6, 1e-4), (torch.bfloat16, True, True, 6, 0.06)])
def test_greedy_tokens_equal_with_kernels_on_and_off(lib, monkeypatch, fused, dtype, int8, tied, seed, max_dev):
    model = qwen2_model(dtype, tied, seed, hidden=80, inter=208)
    if int8:
        model = quantize_int8(model, tied_head=tied)
    monkeypatch.setattr(fused_layer, "ENABLED", fused)
    calls, steps = count_kernel_calls(monkeypatch), count_fused_steps(monkeypatch)
    on_logits, off_logits = [], []
    on = greedy(model, on_logits)
    rows = set(range(1, fused_layer.max_rows(int8, dtype) + 1)) & {1, 2, 3, 4}
    if fused:  # every decode step the kernels take runs the fused layers; only the head is a separate product
        assert set(steps) == rows
        assert len(calls) >= steps.count(1) and all(c[-1] == 80 for c in calls)  # the head, in 1-row steps
    else:
        layers = 7 * model.config.llm.num_hidden_layers + 1
        assert not steps
        assert {c[0] for c in calls} == ({1, 2, 3, 4} if int8 else {1})  # rows per decode step (DENSE_MAX_ROWS)
        assert len(calls) >= layers * (7 if int8 else 2)  # every layer in every step the kernel takes
    monkeypatch.setattr(gemv, "available", lambda: False)
    off = greedy(copy.deepcopy(model), off_logits)
    top2 = [x.topk(2, dim=-1).values for x in off_logits]
    margin = min((t[:, 0] - t[:, 1]).min().item() for t in top2)
    deviation = max((a - b).abs().max().item() for a, b in zip(on_logits, off_logits) if a.shape == b.shape)
    assert on == off, f"greedy tokens differ (reference top-1 margin {margin:.4f}, logit deviation {deviation:.4f})"
    assert deviation <= max_dev


# ---------------------------------------------------------------- building, fallback, threads

@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """A library() that looks again, building into an empty cache; the normal one restored afterwards."""
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    build.reset()
    yield tmp_path
    monkeypatch.undo()
    build.reset()


def test_no_compiler_warns_once_and_the_engine_falls_back(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    model = qwen2_model(torch.bfloat16, tied=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert build.library() is None and build.library() is None
        fallback = greedy(model)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "/nonexistent/cc" in messages[0] and "PyTorch path" in messages[0]
    assert "\n" not in messages[0]
    assert list(fresh_build.iterdir()) == []  # nothing half-built left behind
    monkeypatch.setattr(gemv, "available", lambda: False)
    assert fallback == greedy(model)


def test_a_failing_build_names_the_compiler_error(fresh_build, monkeypatch, tmp_path):
    fake = tmp_path / "fakecc"
    fake.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo fakecc 1.0; exit 0; fi\n"
                    "echo 'decode.c:1: error: no such luck' >&2; exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    with pytest.warns(RuntimeWarning, match="error: no such luck"):
        assert build.library() is None


def test_switched_off_by_the_environment_without_a_warning(fresh_build, monkeypatch):
    monkeypatch.setenv(build.SWITCH, "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build.library() is None
    with decode_kernels(rows=1, dtype=torch.float32, device="cpu") as on:
        assert not on


def test_the_build_is_cached_by_source_and_flags(lib):
    path = build.build()
    assert path.exists() and path == build.build() and re.fullmatch(r"decode-\w+-[0-9a-f]{16}\.so", path.name)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert lib.iv_isa().decode() == build.choose_isa(build.cpu_flags())


def test_one_openmp_runtime_and_torchs_thread_count(lib):
    """The library joins torch's OpenMP runtime (no second pool to spin against it) and uses its thread count."""
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert lib.iv_team_size(torch.get_num_threads()) == 2
    finally:
        torch.set_num_threads(previous)
    runtime = build.openmp_runtime(lib)
    assert runtime is not None  # built with OpenMP here
    with open("/proc/self/maps") as f:  # torch's runtime: the one libtorch_cpu links to, among those loaded
        mapped = {line.split()[-1] for line in f if "omp" in line.rsplit("/", 1)[-1]}
    torch_lib = Path(torch.__file__).parent / "lib"
    ours = [p for p in mapped if Path(p).parent == torch_lib]
    if ours:  # a pip wheel ships its own libgomp.so.1: the kernels must run on it
        assert runtime == os.path.realpath(ours[0]), (runtime, mapped)


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_other_instruction_sets_give_the_same_products(lib, isa):
    """The builds other CPUs run (AVX-512 without BF16, AVX2, the baseline), built and checked on this machine."""
    if not build.ISA_FLAGS[isa][0] <= build.cpu_flags():
        pytest.skip(f"this CPU cannot run the {isa} build")
    other = build.load(build.build(isa=isa))
    assert other.iv_isa().decode() == isa
    for fmt in ("bf16", "int8", "int4"):
        w, w64, b64 = make_weight(fmt, 37, 96, True, seed=11)
        for rows in (1, 3, 8):
            x = torch.randn(rows, 96)
            check(matmul(x, w, other), x, w64, b64)


def test_the_isa_override_builds_what_it_names_and_refuses_what_it_cannot(fresh_build, monkeypatch):
    if not build.ISA_FLAGS["avx2"][0] <= build.cpu_flags():
        pytest.skip("this CPU cannot run the avx2 build")
    monkeypatch.setenv(build.ISA_ENV, "avx2")
    assert build.library().iv_isa().decode() == "avx2"
    for bad, why in (("avx9000", "names no build"), ("sse1", "names no build")):
        build.reset()
        monkeypatch.setenv(build.ISA_ENV, bad)
        with pytest.warns(RuntimeWarning, match=why):
            assert build.library() is None  # one warning, then the PyTorch path
    build.reset()
    monkeypatch.setattr(build, "cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setenv(build.ISA_ENV, "avx512")
    with pytest.warns(RuntimeWarning, match="cannot run the avx512 build"):
        assert build.library() is None
