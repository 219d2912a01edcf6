"""The engine: cache equivalence, greedy parity with the plain loop and transformers, ragged batches,
seeds, limits, stop strings and streaming."""

from __future__ import annotations

import pytest
import torch

from internvl.checkpoint.loader import load_model
from internvl.engine.engine import Engine
from internvl.engine.kv_cache import KVCache
from internvl.engine.sampling import SamplingParams
from internvl.errors import ContextTooLongError
from internvl.generation import SamplingConfig, generate
from internvl.models.internvl import InternVL
from internvl.presets import PRESETS
from internvl.processing.tokenizer import byte_tokenizer

IMG, PER_TILE = 7, 16


def prompt(n_text: int, tiles: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, 160, (n_text,), generator=g).tolist() + [IMG] * (PER_TILE * tiles) + [20, 21]


@pytest.fixture(scope="module")
def model(hf_checkpoint):
    return load_model(hf_checkpoint[2])[0]


def test_prefill_plus_decode_equals_full_recompute(model):
    """Logits through the slot cache (prefill, then one token at a time) equal one full forward pass."""
    ids = prompt(6, 1, 0) + [30, 31, 32, 33]
    pix = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full = model(torch.tensor([ids]), pix).logits[0]
        cache = KVCache(len(model.language_model.layers), 2, model.config.llm.num_key_value_heads, 128,
                        model.config.llm.dim_per_head, torch.float32)
        cache.allocate()
        slot = cache.allocate()  # use the second slot: rows are independent
        n = len(ids) - 4
        view = cache.step([slot], n)
        emb = model.embed(torch.tensor([ids[:n]]), pix)
        h = model.language_model(emb, view.positions(), view.mask(), view)
        got = [model.language_model.logits(h)[0]]
        for t in ids[n:]:
            view = cache.step([slot], 1)
            e = model.language_model.embed_tokens(torch.tensor([[t]]))
            got.append(model.language_model.logits(model.language_model(e, view.positions(), view.mask(), view))[0])
    torch.testing.assert_close(torch.cat(got), full, atol=1e-4, rtol=1e-4)


def test_greedy_equals_plain_loop_and_transformers(model, hf_checkpoint):
    _, hf, _ = hf_checkpoint
    ids = prompt(8, 2, 1)
    pix = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    (seq,) = Engine(model, max_batch=2).generate([(ids, pix, SamplingParams(max_new_tokens=20))])
    plain = generate(model, torch.tensor([ids]), pixel_values=pix, cfg=SamplingConfig(max_new_tokens=20))
    with torch.no_grad():
        want = hf.generate(input_ids=torch.tensor([ids]), pixel_values=pix, max_new_tokens=20, do_sample=False,
                           min_new_tokens=20, eos_token_id=None, pad_token_id=0)[0, len(ids):]
    assert seq.output_ids == plain[0].tolist() == want.tolist()


def test_ragged_batch_equals_one_at_a_time(model):
    """Different prompt lengths and image counts decode together with the same tokens as alone."""
    g = torch.Generator().manual_seed(3)
    reqs = [(prompt(3, 1, 4), torch.randn(1, 3, 64, 64, generator=g)),
            (prompt(17, 0, 5), None),
            (prompt(5, 3, 6), torch.randn(3, 3, 64, 64, generator=g))]
    alone = [Engine(model, max_batch=1).generate([(i, p, SamplingParams(max_new_tokens=12))])[0].output_ids
             for i, p in reqs]
    engine = Engine(model, max_batch=2)  # 3 requests, 2 slots: the third joins when a slot frees
    together = engine.generate([(i, p, SamplingParams(max_new_tokens=12 - 4 * k)) for k, (i, p) in enumerate(reqs)])
    for k, seq in enumerate(together):
        assert seq.output_ids == alone[k][:12 - 4 * k]


def test_ragged_prefill_logits_equal_single_prefills(model):
    """Prompts of different lengths prefilled together, right-padded, give each prompt's own last logits,
    and the padding never leaks into the following (ragged) decode step."""
    g = torch.Generator().manual_seed(8)
    reqs = [(prompt(4, 1, 9), torch.randn(1, 3, 64, 64, generator=g)), (prompt(25, 0, 10), None),
            (prompt(2, 2, 11), torch.randn(2, 3, 64, 64, generator=g))]
    engine = Engine(model, max_batch=3)
    captured = []
    sample = engine._sample
    engine._sample = lambda seqs, logits: (captured.append(logits.clone()), sample(seqs, logits))[1]
    seqs = [engine.submit(ids, pix, SamplingParams(max_new_tokens=2)) for ids, pix in reqs]
    engine.step()  # one prefill of all three
    engine.step()  # one decode of all three
    assert [c.shape[0] for c in captured] == [3, 3]
    for k, (ids, pix) in enumerate(reqs):
        with torch.no_grad():
            want = model(torch.tensor([ids + seqs[k].output_ids[:1]]), pix).logits[0, -2:]
        torch.testing.assert_close(captured[0][k], want[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(captured[1][k], want[1], atol=1e-4, rtol=1e-4)


def test_prefill_budget_splits_admission_and_cache_grows(model):
    long_ids = prompt(300, 0, 12)  # past the cache's initial capacity of 256
    engine = Engine(model, max_batch=4, prefill_budget=320)
    seqs = [engine.submit(long_ids, None, SamplingParams(max_new_tokens=3)) for _ in range(2)]
    first = engine.step()
    assert first == [seqs[0]] and engine.waiting  # 2 x 300 padded tokens exceed the budget
    assert engine.cache.capacity >= 301
    while engine.has_work():
        engine.step()
    alone = Engine(model, max_batch=1).generate([(long_ids, None, SamplingParams(max_new_tokens=3))])[0]
    assert seqs[0].output_ids == seqs[1].output_ids == alone.output_ids
    small = Engine(model, max_batch=8)
    small.generate([(prompt(5, 0, 1), None, SamplingParams(max_new_tokens=2))])
    assert small.cache.capacity == 256  # memory follows use, not max_len x slots


def test_seed_and_limits(model):
    ids = prompt(5, 0, 7)
    engine = Engine(model, max_batch=4)
    p = dict(max_new_tokens=15, temperature=1.0, top_p=0.9, top_k=50)
    a, b, c = engine.generate([(ids, None, SamplingParams(seed=1, **p)), (ids, None, SamplingParams(seed=1, **p)),
                               (ids, None, SamplingParams(seed=2, **p))])
    assert a.output_ids == b.output_ids != c.output_ids
    assert len(a.output_ids) == 15 and a.finish_reason == "length"
    (z,) = engine.generate([(ids, None, SamplingParams(max_new_tokens=0))])
    assert z.output_ids == [] and z.finish_reason == "length"
    with pytest.raises(ContextTooLongError, match="exceeds the context"):
        Engine(model, max_len=64).submit(list(range(10, 70)), None, SamplingParams(max_new_tokens=10))


@pytest.fixture(scope="module")
def text_engine():
    """A tiny random model with a byte-level tokenizer, so outputs are text with multi-byte characters."""
    torch.manual_seed(0)
    tok = byte_tokenizer()
    model = InternVL(PRESETS["tiny-random"].config).eval()
    model.init_weights(std=0.5)
    return Engine(model, decode=tok.decode, max_batch=4), tok


def test_stop_strings_cut_exactly(text_engine):
    engine, tok = text_engine
    ids = tok.encode("hello")
    (free,) = engine.generate([(ids, None, SamplingParams(max_new_tokens=40, temperature=1.0, seed=3))])
    text = free.text
    assert len(text) > 6
    stop = text[3:5]
    (cut,) = engine.generate([(ids, None, SamplingParams(max_new_tokens=40, temperature=1.0, seed=3, stop=[stop]))])
    assert cut.text == text[:text.find(stop)] and cut.finish_reason == "stop"
    eos = free.output_ids[4]
    engine.eos = {eos}
    try:
        (ended,) = engine.generate([(ids, None, SamplingParams(max_new_tokens=40, temperature=1.0, seed=3))])
    finally:
        engine.eos = set()
    assert ended.output_ids == free.output_ids[:free.output_ids.index(eos)] and ended.finish_reason == "stop"


def test_streaming_joins_to_the_full_text_with_multibyte_characters(text_engine):
    engine, tok = text_engine
    ids = tok.encode("数")
    params = dict(max_new_tokens=60, temperature=1.0, seed=11)
    (whole,) = engine.generate([(ids, None, SamplingParams(**params))])
    chunks = list(engine.stream(ids, None, SamplingParams(**params)))
    assert "".join(chunks) == whole.text
    assert any(ord(ch) > 127 for ch in whole.text)  # the test really saw multi-byte characters
    assert len(chunks) > 5


def test_incremental_text_never_splits_a_character_or_leaks_a_stop_prefix():
    """Byte tokens of '数字 END!' arrive one by one: deltas are whole characters, the stop string never shows."""
    from internvl.engine.sequence import Sequence
    tok = byte_tokenizer()
    ids = tok.encode("数字 END!")
    assert len(ids) == 11  # 3 + 3 bytes of CJK, then ASCII
    seq = Sequence([1], SamplingParams(max_new_tokens=50, stop=["END"]))
    deltas = []
    for t in ids:
        seq.append(t, tok.decode, set())
        deltas.append(seq.take_delta())
        if seq.finished:
            break
    assert [d for d in deltas if d] == ["数", "字", " "]
    assert seq.text == "数字 " and seq.finish_reason == "stop"
