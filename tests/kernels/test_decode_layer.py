"""The fused decode layer (kernels/layer.c through kernels/layer.py): one decode step of every layer against the
decoder's own modules, for Qwen2 (q/k/v biases), Qwen3 (per-head q/k norms) and int8 weights, ragged rows in
scattered cache slots, bf16 rounding, the cases it must leave to the modules, weights changed between steps,
and arguments the C side refuses.

Tolerances (docs/parity.md): fp32 within 2e-5 of the modules (fp32 summation order); bf16 no further from a
float64 run than the modules' own bf16 path is (x 1.25, plus one bf16 step of the largest value)."""

from __future__ import annotations

import copy
import ctypes
import dataclasses

import pytest
import torch

from internvl.engine.kv_cache import KVCache
from internvl.kernels import build, decode_kernels
from internvl.kernels import layer as fused
from internvl.models import decoder
from internvl.models.internvl import InternVL
from internvl.presets import PRESETS
from internvl.quantize import quantize_int8

PROMPTS = {0: 5, 2: 11, 3: 2}  # slot -> tokens already cached: ragged rows, slots not contiguous


@pytest.fixture(scope="module", autouse=True)
def lib():
    assert build.library() is not None, "the kernels must build on the test machine (it has a C compiler)"


def make_llm(family: str = "qwen2", dtype: torch.dtype = torch.float32, seed: int = 0, int8: bool = False):
    cfg = PRESETS["tiny-random"].config
    arch = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "moe": "Qwen3MoeForCausalLM"}[family]
    extra = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=48) if family == "moe" else {}
    llm_cfg = dataclasses.replace(cfg.llm, architecture=arch, hidden_size=96, intermediate_size=160,
                                  num_attention_heads=6, num_key_value_heads=2, head_dim=16,
                                  attention_bias=family == "qwen2", qk_norm=None, **extra)
    torch.manual_seed(seed)
    model = InternVL(dataclasses.replace(cfg, llm=llm_cfg)).eval()
    model.init_weights(std=0.1)
    with torch.no_grad():  # no parameter a no-op: biases random, norms around 1
        for name, p in model.language_model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
    model = model.to(dtype)
    return (quantize_int8(model) if int8 else model).language_model


@torch.no_grad()
def prefilled(llm, dtype: torch.dtype) -> KVCache:
    """A cache of 4 slots with PROMPTS written by the module path (slot 1 stays empty)."""
    cfg = llm.cfg
    cache = KVCache(cfg.num_hidden_layers, 4, cfg.num_key_value_heads, 64, cfg.dim_per_head, dtype)
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        cache.allocate()
    for slot, n in PROMPTS.items():
        view = cache.prefill([slot], [n])
        embeds = llm.embed_tokens(torch.randint(0, cfg.vocab_size, (1, n), generator=g)).to(dtype)
        llm(embeds, view.positions(), view.mask(), view)
    return cache


@torch.no_grad()
def step(llm, cache: KVCache, dtype: torch.dtype, use_fused: bool, slots=tuple(PROMPTS)) -> torch.Tensor:
    """One decode step of `slots` (fixed tokens) under the engine's decode context; returns the hidden states."""
    fused.ENABLED = use_fused
    try:
        view = cache.step(list(slots), 1)
        tokens = torch.arange(len(slots))[:, None] * 7 + 3
        embeds = llm.embed_tokens(tokens).to(dtype)
        with decode_kernels(len(slots), dtype, "cpu"):
            return llm(embeds, view.positions(), view.mask(), view)
    finally:
        fused.ENABLED = True


def both(llm, dtype, monkeypatch, slots=tuple(PROMPTS)):
    """(modules' hidden, fused hidden, modules' cache, fused cache) for one step from the same cache."""
    monkeypatch.setitem(fused.MAX_ROWS, "dense", 8)  # several rows through the dense kernel too
    cache = prefilled(llm, dtype)
    ref_cache = copy.deepcopy(cache)
    ran = []
    real = fused.decode_layers
    monkeypatch.setattr(decoder, "decode_layers", lambda *a: (out := real(*a), ran.append(out is not None))[0])
    ref = step(llm, ref_cache, dtype, use_fused=False, slots=slots)
    got = step(llm, cache, dtype, use_fused=True, slots=slots)
    assert ran == [False, True]  # the modules, then the fused kernel
    return ref, got, ref_cache, cache


def fused_ran(llm, x_dtype) -> bool:
    return all(fused._plan(b, torch.empty(1, dtype=x_dtype)) is not None for b in llm.layers)


@pytest.mark.parametrize("family,int8", [("qwen2", False), ("qwen3", False), ("qwen2", True)])
@pytest.mark.parametrize("slots", [(0,), (0, 2, 3)], ids=["one-row", "ragged-rows"])
def test_fp32_step_matches_the_modules(monkeypatch, family, int8, slots):
    llm = make_llm(family, int8=int8)
    assert fused_ran(llm, torch.float32)
    ref, got, ref_cache, cache = both(llm, torch.float32, monkeypatch, slots)
    torch.testing.assert_close(got, ref, rtol=2e-5, atol=2e-5)
    for layer in range(llm.cfg.num_hidden_layers):  # the step's keys and values, where the modules put them
        torch.testing.assert_close(cache.k[layer], ref_cache.k[layer], rtol=2e-5, atol=2e-5)
        torch.testing.assert_close(cache.v[layer], ref_cache.v[layer], rtol=2e-5, atol=2e-5)
    assert cache.lengths == ref_cache.lengths


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_bf16_step_rounds_like_the_modules(monkeypatch, family):
    llm = make_llm(family, torch.bfloat16, seed=1)
    ref, got, _, _ = both(llm, torch.bfloat16, monkeypatch)
    exact_llm = make_llm(family, torch.bfloat16, seed=1).double()  # the same bf16 weights, float64 math
    exact = step(exact_llm, prefilled(exact_llm, torch.float64), torch.float64, use_fused=False)
    err_modules = (ref.double() - exact).norm()
    err_fused = (got.double() - exact).norm()
    assert err_modules > 0  # bf16 really rounds here
    assert err_fused <= 1.25 * err_modules + exact.abs().max() / 256
    assert (got.double() - ref.double()).abs().max() <= exact.abs().max() / 16  # one sample, not another's


def run_counting(llm, dtype=torch.float32, grad=False) -> tuple[torch.Tensor, bool]:
    """One step, and whether the fused kernel ran for it."""
    ran = []
    real = fused.decode_layers

    def spy(*args):
        out = real(*args)
        ran.append(out is not None)
        return out

    cache = prefilled(llm, dtype)
    decoder.decode_layers, saved = spy, decoder.decode_layers
    try:
        with torch.set_grad_enabled(grad):
            view = cache.step([0], 1)
            with decode_kernels(1, dtype, "cpu"):
                out = llm(llm.embed_tokens(torch.tensor([[4]])).to(dtype), view.positions(), view.mask(), view)
    finally:
        decoder.decode_layers = saved
    return out, ran == [True]


def test_leaves_to_the_modules_what_it_does_not_cover():
    llm = make_llm("qwen2")
    assert run_counting(llm)[1]  # the plain case runs fused
    # a forward hook on any module of a layer still sees its call
    seen = []
    handle = llm.layers[1].mlp.up_proj.register_forward_hook(lambda *_: seen.append(1))
    assert not run_counting(llm)[1] and seen
    handle.remove()
    assert not run_counting(llm, grad=True)[1]  # autograd
    assert not run_counting(make_llm("moe"))[1]  # sparse MoE feed-forward
    cache = prefilled(llm, torch.float32)
    view = cache.step([0], 2)  # two new tokens in a row: a prefill, not a decode step
    with torch.no_grad(), decode_kernels(1, torch.float32, "cpu"):
        x = llm.embed_tokens(torch.tensor([[4, 5]]))
        assert fused.decode_layers(llm.layers, x, *llm.rotary(view.positions(), x.dtype), view) is None
    # a cache laid out for another model (head_dim 8 where the layers have 16): writing it would run off its end
    cfg = llm.cfg
    narrow = KVCache(cfg.num_hidden_layers, 4, cfg.num_key_value_heads, 64, 8, torch.float32)
    narrow.allocate()
    view = narrow.step([0], 1)
    with torch.no_grad(), decode_kernels(1, torch.float32, "cpu"):
        x = llm.embed_tokens(torch.tensor([[4]]))
        assert fused.decode_layers(llm.layers, x, *llm.rotary(view.positions(), x.dtype), view) is None
    # a slot outside the cache (-1 would index from the end in torch, and before the buffer in layer.c)
    cache = prefilled(llm, torch.float32)
    view = cache.step([0], 1)
    view.slots = [-1]
    with torch.no_grad(), decode_kernels(1, torch.float32, "cpu"):
        x = llm.embed_tokens(torch.tensor([[4]]))
        assert fused.decode_layers(llm.layers, x, *llm.rotary(view.positions(), x.dtype), view) is None
    # no engine cache: a plain forward with the kernels on
    with torch.no_grad(), decode_kernels(1, torch.float32, "cpu"):
        x = llm.embed_tokens(torch.tensor([[4]]))
        assert fused.decode_layers(llm.layers, x, *llm.rotary(torch.zeros(1, 1, dtype=torch.long), x.dtype),
                                   None) is None


def test_follows_weights_changed_between_steps(monkeypatch):
    llm = make_llm("qwen3")
    both(llm, torch.float32, monkeypatch)  # plans built and cached
    with torch.no_grad():
        llm.layers[0].self_attn.q_proj.weight.mul_(1.5)  # in place: same pointer, new version
        llm.layers[1].mlp.down_proj.weight = torch.nn.Parameter(llm.layers[1].mlp.down_proj.weight * -1)
        llm.layers[1].self_attn.k_norm.weight.add_(0.25)
    ref, got, _, _ = both(llm, torch.float32, monkeypatch)
    torch.testing.assert_close(got, ref, rtol=2e-5, atol=2e-5)


def test_refuses_arguments_it_cannot_take():
    llm = make_llm("qwen2")
    x = torch.randn(9, 96)
    plan = fused._plan(llm.layers[0], x)
    cache = KVCache(2, 9, 2, 8, 16, torch.float32)
    cache.reserve(8)
    lib = build.library()
    trig = torch.ones(9, 16)

    def call(rows: int, positions: list[int]) -> int:
        ints = ctypes.c_int32 * max(rows, 1)
        return lib.iv_decode_layer(ctypes.byref(plan.layer), rows, x.data_ptr(), 0, ints(*range(max(rows, 1))),
                                   ints(*positions), trig.data_ptr(), trig.data_ptr(), cache.k[0].data_ptr(),
                                   cache.v[0].data_ptr(), cache.capacity, 1)

    before = x.clone()
    assert call(0, [0]) == -1
    assert call(9, [0] * 9) == -1  # more rows than a pass takes
    assert call(1, [cache.capacity]) == -1  # a position past the cache
    assert call(1, [-1]) == -1
    assert torch.equal(x, before) and not cache.k[0].any()  # nothing written
    assert call(1, [3]) == 0 and cache.k[0][0, :, 3].any()


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_other_instruction_sets_give_the_same_step(monkeypatch, isa):
    """The AVX2 and baseline builds (what other CPUs run), built and checked on this machine."""
    if not build.ISA_FLAGS[isa][0] <= build.cpu_flags():
        pytest.skip(f"this CPU cannot run the {isa} build")
    other = build.load(build.build(isa=isa))
    monkeypatch.setattr(fused, "library", lambda: other)
    llm = make_llm("qwen3")
    ref, got, ref_cache, cache = both(llm, torch.float32, monkeypatch)
    torch.testing.assert_close(got, ref, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(cache.k[1], ref_cache.k[1], rtol=2e-5, atol=2e-5)


def test_dense_rows_follow_the_build_and_amx(monkeypatch):
    """bf16 takes 8 rows only on the AVX512-BF16 build of a CPU without AMX (oneDNN's AMX products are faster)."""
    lib = build.library()
    monkeypatch.setattr(fused, "library", lambda: lib)
    native = lib.iv_isa() == b"avx512bf16"
    try:
        for flags, rows in (({"avx512_bf16"}, 8 if native else 1), ({"avx512_bf16", "amx_bf16"}, 1)):
            monkeypatch.setattr(fused, "cpu_flags", lambda flags=flags: flags)
            fused._has_amx.cache_clear()
            assert fused.max_rows(False, torch.bfloat16) == rows
            assert fused.max_rows(False, torch.float32) == 1 and fused.max_rows(True, torch.float32) == 8
    finally:
        fused._has_amx.cache_clear()
