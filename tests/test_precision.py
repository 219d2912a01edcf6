"""Precision per phase: the plan chosen for each CPU kind (forced through INTERNVL_CPU_KIND), widening inside
ops, the dtype each engine phase really computes in, and the mixed plan's outputs against the uniform bf16
path and an fp32 reference (tolerances in docs/parity.md)."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from internvl.engine.engine import Engine
from internvl.engine.sampling import SamplingParams
from internvl.hardware import KIND_ENV, CPUKind
from internvl.models.internvl import InternVL
from internvl.precision import PrecisionPlan, choose_plan, compute_dtype, compute_in, plan_of
from internvl.presets import PRESETS

IMG = 7
BF16, FP32 = torch.bfloat16, torch.float32


# ---------------------------------------------------------------- the plan per CPU kind

@pytest.mark.parametrize("kind, want", [("avx2", (BF16, FP32, FP32)), ("avx512_bf16", (BF16, BF16, BF16)),
                                        ("amx_bf16", (BF16, BF16, BF16)), ("other", (FP32, FP32, FP32))])
def test_auto_plan_per_cpu_kind(monkeypatch, kind, want):
    monkeypatch.setenv(KIND_ENV, kind)
    plan = choose_plan("cpu")
    assert (plan.weights, plan.vision, plan.prefill) == want
    assert plan.decode == plan.weights
    assert set(plan.why) == {"vision", "prefill", "decode"} and all(plan.why.values())
    assert plan.uniform == (kind != "avx2")


def test_cuda_is_bf16_everywhere_whatever_the_cpu():
    plan = choose_plan("cuda", kind=CPUKind("avx2", "test"))
    assert plan == PrecisionPlan.uniform_in(BF16)


def test_overrides():
    avx2, native = CPUKind("avx2", "test"), CPUKind("avx512_bf16", "test")
    # --dtype keeps its meaning: one dtype for every phase
    assert choose_plan("cpu", "fp32", kind=avx2) == PrecisionPlan.uniform_in(FP32)
    assert choose_plan("cpu", "bf16", kind=avx2) == PrecisionPlan.uniform_in(BF16)
    assert choose_plan("cpu", "auto", "uniform", kind=avx2) == PrecisionPlan.uniform_in(FP32)
    assert choose_plan("cpu", None, "uniform", kind=native) == PrecisionPlan.uniform_in(BF16)
    # mixed anywhere, e.g. to test it on an AVX-512 machine
    assert choose_plan("cpu", None, "mixed", kind=native) == PrecisionPlan(BF16, FP32, FP32)
    assert choose_plan("cpu", "fp16", "mixed", kind=native) == PrecisionPlan(torch.float16, FP32, FP32)
    assert choose_plan("cpu", "fp32", "mixed", kind=native).uniform  # fp32 weights: nothing to widen
    with pytest.raises(ValueError, match="precision"):
        choose_plan("cpu", None, "fast")
    with pytest.raises(ValueError, match="dtype"):
        choose_plan("cpu", "int3")


def test_bad_cpu_kind_override_is_named(monkeypatch):
    monkeypatch.setenv(KIND_ENV, "avx9000")
    with pytest.raises(ValueError, match="INTERNVL_CPU_KIND"):
        choose_plan("cpu")


# ---------------------------------------------------------------- widening inside ops

def test_linear_widens_bf16_weights_only_inside_compute_in():
    x, w = torch.randn(3, 8), torch.randn(5, 8).to(BF16)
    with pytest.raises(RuntimeError):
        F.linear(x, w)
    with compute_in(FP32, BF16):
        y = F.linear(x, w)
        assert compute_dtype(BF16) == FP32
    assert y.dtype == FP32
    torch.testing.assert_close(y, F.linear(x, w.float()), rtol=0, atol=0)
    assert w.dtype == BF16 and compute_dtype(BF16) == BF16  # stored once, as it was


def test_writes_go_to_the_narrow_buffer_not_a_temporary():
    cache = torch.zeros(3, 4, dtype=BF16)
    with compute_in(FP32, BF16):
        cache[0] = torch.ones(4)
        cache[1].copy_(torch.full((4,), 2.0))
        cache[torch.tensor([2]), 1:3] = torch.full((1, 2), 3.0)  # a tensor index: index_put, which needs one dtype
    assert cache.dtype == BF16 and cache.tolist() == [[1.0] * 4, [2.0] * 4, [0.0, 3.0, 3.0, 0.0]]


def test_same_dtype_is_a_no_op():
    with compute_in(BF16, BF16):
        assert not torch._C._is_torch_function_mode_enabled()
        assert compute_dtype(BF16) == BF16


def test_other_threads_are_not_affected():
    """The server encodes images on one thread while the engine decodes on another."""
    seen = []

    def other():
        seen.append(compute_dtype(BF16))
        try:
            F.linear(torch.randn(1, 4), torch.randn(2, 4).to(BF16))
            seen.append("widened")
        except RuntimeError:
            seen.append("not widened")

    with compute_in(FP32, BF16):
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert seen == [BF16, "not widened"]


# ---------------------------------------------------------------- the engine's phases

def model(seed: int = 0, std: float = 0.1, dtype: torch.dtype = BF16) -> InternVL:
    torch.manual_seed(seed)
    m = InternVL(PRESETS["tiny-random"].config.replace(image_token_id=IMG)).eval()
    m.init_weights(std=std)
    return m.to(dtype)


def request(m: InternVL, seed: int, tiles: int = 2) -> tuple[list[int], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    size = m.config.image_size
    ids = torch.randint(10, 160, (12,), generator=g).tolist() + [IMG] * (m.num_image_token * tiles) + [20, 21]
    return ids, torch.randn(tiles, 3, size, size, generator=g)


MIXED = PrecisionPlan(BF16, FP32, FP32)


def test_each_phase_computes_in_its_dtype():
    m = model()
    m.precision = MIXED
    seen: dict[str, set] = {"vision": set(), "llm": set()}
    m.vision_model.encoder.layers[0].register_forward_hook(lambda mod, a, out: seen["vision"].add(a[0].dtype))
    m.language_model.layers[0].register_forward_hook(lambda mod, a, out: seen["llm"].add((a[0].shape[1], a[0].dtype)))
    engine = Engine(m, max_batch=1)
    ids, pix = request(m, 0)
    engine.generate([(ids, pix, SamplingParams(max_new_tokens=3))])
    assert seen["vision"] == {FP32}
    assert seen["llm"] == {(len(ids), FP32), (1, BF16)}  # the prompt in fp32, decode steps in bf16
    assert engine.cache.k[0].dtype == BF16  # decode reads a bf16 cache
    assert all(p.dtype == BF16 for p in m.parameters())  # no second copy of the model


def test_mixed_batches_in_scattered_cache_slots(caplog):
    """Requests of different lengths prefilled together into non-contiguous slots (tensor-indexed cache
    writes) stay one batch: no fallback to one by one."""
    m = model(4)
    m.precision = MIXED
    engine = Engine(m, max_batch=4)
    params = SamplingParams(max_new_tokens=3)
    first = [engine.submit(request(m, i, tiles=0)[0][:8 + i], None, params) for i in range(3)]
    engine.step()  # admit and prefill all three
    engine.cancel(first[1])  # free the middle slot, then fill it and the last one in one prefill
    while engine.has_work():
        engine.step()
    with caplog.at_level("WARNING"):
        later = engine.generate([(request(m, 10 + i, tiles=0)[0][:6 + 3 * i], None, params) for i in range(3)])
    assert "one by one" not in caplog.text
    assert all(s.error is None and len(s.output_ids) == 3 for s in later)


def test_a_plan_for_other_weights_is_refused():
    m = model(dtype=FP32)
    m.precision = MIXED
    with pytest.raises(ValueError, match="dtype=bf16"):
        plan_of(m)


def test_uniform_plan_is_the_old_path_bit_for_bit():
    """On a CPU with native bf16 the auto plan is uniform bf16: exactly what the engine did without a plan."""
    m = model()
    ids, pix = request(m, 1)
    params = SamplingParams(max_new_tokens=8)
    before = Engine(m, max_batch=1).generate([(ids, pix, params)])[0].output_ids
    m.precision = choose_plan("cpu", kind=CPUKind("avx512_bf16", "test"))
    assert Engine(m, max_batch=1).generate([(ids, pix, params)])[0].output_ids == before


def first_logits(m: InternVL, ids: list[int], pix: torch.Tensor) -> torch.Tensor:
    """The prefill's first-token logits, as the engine computes them."""
    engine = Engine(m, max_batch=1)
    engine.submit(ids, pix, SamplingParams(max_new_tokens=1))
    got = []
    logits = m.language_model.logits
    m.language_model.logits = lambda h: got.append(logits(h)) or got[-1]
    try:
        engine.step()
    finally:
        del m.language_model.logits
    return got[0].float()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixed_prefill_logits_and_greedy_tokens(seed):
    """Mixed against an fp32 run of the same (bf16-rounded) weights: only the bf16 KV cache and the bf16 head
    round (measured rel. error <= 4e-3, bound 1e-2); and closer to the fp32 model than uniform bf16 is.
    Greedy tokens equal the uniform bf16 path's (16 steps, measured on these seeds)."""
    m = model(seed)
    ids, pix = request(m, seed)
    uniform = first_logits(m, ids, pix)
    m.precision = MIXED
    mixed = first_logits(m, ids, pix)
    m.precision = None
    exact = first_logits(m.float(), ids, pix)  # fp32 compute over the same rounded weights
    full = first_logits(model(seed, dtype=FP32), ids, pix)  # the fp32 model before rounding
    assert rel(mixed, exact) < 1e-2
    assert rel(mixed, full) < rel(uniform, full)
    m = m.to(BF16)
    params = SamplingParams(max_new_tokens=16)
    want = Engine(m, max_batch=1).generate([(ids, pix, params)])[0].output_ids
    m.precision = MIXED
    assert Engine(m, max_batch=1).generate([(ids, pix, params)])[0].output_ids == want


def test_mixed_with_int8_weights():
    """--quantize int8 composes: int8 weights dequantized inside the fp32 prefill, the int8 GEMV in decode."""
    from internvl.quantize import quantize_int8
    m = model(3)
    ids, pix = request(m, 3, tiles=1)
    quantize_int8(m)
    params = SamplingParams(max_new_tokens=8)
    want = Engine(m, max_batch=1).generate([(ids, pix, params)])[0].output_ids
    m.precision = MIXED
    assert Engine(m, max_batch=1).generate([(ids, pix, params)])[0].output_ids == want


def test_serve_flag_from_the_config_dataclass():
    import argparse

    from internvl.errors import ConfigError
    from internvl.serve.config import ServeConfig, add_arguments, from_args
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert from_args(parser.parse_args(["--precision", "mixed"])).precision == "mixed"
    with pytest.raises(ConfigError, match="--precision"):
        ServeConfig(precision="fast")
