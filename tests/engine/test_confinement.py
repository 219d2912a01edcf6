"""A bad request never fails the requests batched beside it: sampling parameters are checked where they enter
(`SamplingParams`), a row that cannot be sampled ends only its own request, and a batched forward that raises
is retried request by request with the cache rolled back, so the others finish with exactly the tokens they
would have had alone."""

from __future__ import annotations

import math

import pytest
import torch

from internvl.engine.engine import Engine
from internvl.engine.sampling import SamplingParams, nonfinite_rows, sample
from internvl.errors import ConfigError, GenerationError, ImageSizeError
from internvl.models.internvl import InternVL
from internvl.presets import PRESETS

IMG = 7


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = InternVL(PRESETS["tiny-random"].config.replace(image_token_id=IMG)).eval()
    m.init_weights(std=0.5)
    return m


def prompt(seed: int, n: int = 12) -> list[int]:
    return torch.randint(10, 200, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


GOOD = [(prompt(i), None, SamplingParams(max_new_tokens=10, **kw))
        for i, kw in enumerate([{}, {"temperature": 0.8, "seed": 5}, {"top_k": 5, "temperature": 1.0, "seed": 6},
                                {"repetition_penalty": 1.3}])]


def alone(model, req) -> list[int]:
    return Engine(model, max_batch=1).generate([req])[0].output_ids


@pytest.mark.parametrize("field, value", [
    ("temperature", -1.0), ("temperature", math.nan), ("temperature", math.inf), ("temperature", "0.5"),
    ("top_p", 0.0), ("top_p", 1.5), ("top_p", math.nan), ("top_k", -1), ("top_k", 2.5), ("top_k", True),
    ("repetition_penalty", 0.0), ("repetition_penalty", 1e-300), ("repetition_penalty", 1e300),
    ("repetition_penalty", math.nan), ("max_new_tokens", -5), ("max_new_tokens", True), ("max_new_tokens", 3.0),
    ("seed", 2**64), ("seed", "7"), ("stop", "x"), ("stop", [""]), ("stop_token_ids", [-1]),
])
def test_bad_sampling_values_are_refused_by_name(field, value):
    with pytest.raises(ConfigError, match=field.rstrip("s") if field == "stop_token_ids" else field):
        SamplingParams(**{field: value})


def test_generation_config_values_are_not_coerced():
    with pytest.raises(ConfigError, match="temperature"):
        SamplingParams.from_generation_config({"do_sample": True, "temperature": "hot"})
    with pytest.raises(ConfigError, match="beam search"):
        SamplingParams.from_generation_config({"num_beams": 4})


def test_a_vanishing_temperature_decodes_greedily(model):
    """1e-300 is 0 in float32: dividing logits by it gave NaN probabilities and failed the whole batch."""
    ids = prompt(3)
    greedy = alone(model, (ids, None, SamplingParams(max_new_tokens=8)))
    for t in (1e-300, 1e-6):
        assert alone(model, (ids, None, SamplingParams(max_new_tokens=8, temperature=t, seed=1))) == greedy


def test_extreme_but_valid_penalties_sample_finite_tokens(model):
    for p in (0.01, 100.0):
        (seq,) = Engine(model, max_batch=1).generate([(prompt(4), None, SamplingParams(
            max_new_tokens=6, temperature=1.0, seed=2, repetition_penalty=p))])
        assert len(seq.output_ids) == 6 and seq.error is None


def test_nonfinite_rows_finds_nan_and_both_infinities_but_not_an_overflowing_sum():
    logits = torch.zeros(5, 40)
    logits[1, 3], logits[2, 39], logits[4, 0] = float("nan"), float("inf"), float("-inf")
    logits[3] = 3e38  # every value finite; their sum overflows, which must not count as an error
    assert nonfinite_rows(logits) == [1, 2, 4]
    assert nonfinite_rows(torch.randn(2, 151936)) == []
    both = torch.zeros(1, 10)
    both[0, 1], both[0, 2] = float("inf"), float("-inf")  # sum NaN
    assert nonfinite_rows(both) == [0]


def test_a_row_with_nan_logits_fails_alone_and_draws_no_randomness():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    logits[1, 7] = float("nan")
    params = [SamplingParams(temperature=1.0, seed=1)] * 3
    gens = [torch.Generator().manual_seed(1) for _ in range(3)]
    tokens, errors = sample(logits, params, gens, [torch.empty(0, dtype=torch.long)] * 3)
    assert set(errors) == {1} and "non-finite" in errors[1]
    clean = logits.clone()
    clean[1] = 0
    ref = [torch.Generator().manual_seed(1) for _ in range(3)]
    want, _ = sample(clean, params, ref, [torch.empty(0, dtype=torch.long)] * 3)
    assert [tokens[0], tokens[2]] == [want[0], want[2]]  # the neighbours' draws did not move


def test_poisoned_request_among_running_ones(model):
    """Four requests decode together; a fifth joins with NaN image tiles: it ends with an error, the four
    finish with exactly the tokens they get alone."""
    expected = [alone(model, r) for r in GOOD]
    engine = Engine(model, max_batch=8)
    seqs = [engine.submit(*r) for r in GOOD]
    engine.step()
    engine.step()
    size = model.config.image_size
    poison = engine.submit([11, 12] + [IMG] * model.num_image_token + [13], torch.full((1, 3, size, size), math.nan),
                           SamplingParams(max_new_tokens=10))
    while engine.has_work():
        engine.step()
    assert poison.finish_reason == "error" and "non-finite" in poison.error
    assert [s.output_ids for s in seqs] == expected
    assert all(s.error is None for s in seqs)
    assert not engine.running and len(engine.cache.free) == 8  # every slot came back


def test_a_failing_batched_forward_is_retried_one_by_one(model, monkeypatch):
    """A forward that raises whenever one request is in it: that request fails, the cache is rolled back, the
    others are stepped alone and finish exactly as they would have."""
    expected = [alone(model, r) for r in GOOD]
    engine = Engine(model, max_batch=8)
    seqs = [engine.submit(*r) for r in GOOD]
    engine.step()
    bad = engine.submit(prompt(99, 5), None, SamplingParams(max_new_tokens=10))
    engine.step()  # prefilled
    decoder = model.language_model
    original = type(decoder).forward

    def flaky(self, embeds, positions, mask=None, cache=None):
        if cache is not None and bad.slot in cache.slot_index.tolist():
            raise RuntimeError("simulated kernel failure")
        return original(self, embeds, positions, mask, cache)
    monkeypatch.setattr(type(decoder), "forward", flaky)
    while engine.has_work():
        engine.step()
    assert bad.finish_reason == "error" and "simulated kernel failure" in bad.error
    assert [s.output_ids for s in seqs] == expected


def test_generate_and_stream_raise_a_failed_request(model):
    size = model.config.image_size
    nan = torch.full((1, 3, size, size), math.nan)
    ids = [11] + [IMG] * model.num_image_token + [12]
    with pytest.raises(GenerationError, match="request 1 of 2 failed"):
        Engine(model, max_batch=2).generate([GOOD[0], (ids, nan, SamplingParams(max_new_tokens=3))])
    with pytest.raises(GenerationError, match="non-finite"):
        list(Engine(model, max_batch=1).stream(ids, nan, SamplingParams(max_new_tokens=3)))


def test_tiles_of_the_wrong_size_name_the_expected_one(model):
    with pytest.raises(ImageSizeError, match=r"tile size \(config.image_size\) is 112px.*input_size=112"):
        Engine(model).submit([1, 2, 3], torch.zeros(1, 3, 448, 448), SamplingParams())
