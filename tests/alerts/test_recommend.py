"""Recommendations from aggregates, with savings that are money only when they are."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tokenstile.alerts.recommend import (
    CacheStats,
    FeatureCap,
    ModelUsage,
    TrimStats,
    cheaper_models,
    enable_cache,
    lower_caps,
    recommend,
)
from tokenstile.prices import ModelPrice, Pricer
from tokenstile.types import Usage, usd_to_nano

PRICER = Pricer({"big-model": ModelPrice(Decimal(10), Decimal(30)),
                 "small-model": ModelPrice(Decimal("0.5"), Decimal("1.5"))})


def test_lower_cap_is_headroom_not_money() -> None:
    features: list[FeatureCap] = [
        {"feature": "faq", "requests": 1000, "output_tokens": 120_000, "max_tokens": 1000},
        {"feature": "essay", "requests": 1000, "output_tokens": 800_000, "max_tokens": 1000},
        {"feature": "rare", "requests": 3, "output_tokens": 30, "max_tokens": 1000},
    ]
    [rec] = lower_caps(features)
    assert rec.saving_usd_per_month == 0.0
    assert "answers average 120 of 1,000 max tokens" in rec.detail.lower()
    assert "does not lower the bill" in rec.detail
    assert rec.data["suggested_max_tokens"] == 300  # 2 × average × 1.25
    with_p95: list[FeatureCap] = [{**features[0], "p95_output_tokens": 400}]
    assert lower_caps(with_p95)[0].data["suggested_max_tokens"] == 500


def test_cheaper_model_saving_is_priced_with_the_pricer() -> None:
    requests, avg_in, avg_out = 10_000, 500, 100
    per_request_big = PRICER.cost_nano("big-model", Usage(avg_in, avg_out))
    assert per_request_big is not None
    cost = per_request_big * requests
    models: list[ModelUsage] = [{
        "model": "big-model", "requests": requests, "input_tokens": avg_in * requests,
        "output_tokens": avg_out * requests, "cost_nano": cost, "days": 10.0,
        "feature": "faq"}]
    [rec] = cheaper_models(models, PRICER, {"big-model": "small-model"})
    small = PRICER.cost_nano("small-model", Usage(avg_in, avg_out))
    assert small is not None
    expected = (cost - small * requests) / 1e9 / 10 * 30.4
    assert rec.saving_usd_per_month == pytest.approx(expected, abs=0.01)
    assert rec.title == ("Serve short answers for feature 'faq' with small-model instead of "
                         "big-model")
    long_answers: list[ModelUsage] = [{**models[0], "output_tokens": 2000 * requests}]
    assert cheaper_models(long_answers, PRICER, {"big-model": "small-model"}) == []
    assert cheaper_models(models, PRICER, {}) == []


def test_default_alternatives_with_real_prices() -> None:
    pricer = Pricer()
    usage = Usage(400, 80)
    per_request = pricer.cost_nano("gpt-4o", usage)
    assert per_request is not None
    models: list[ModelUsage] = [{"model": "gpt-4o-2024-08-06", "requests": 30_000,
                                 "input_tokens": 400 * 30_000, "output_tokens": 80 * 30_000,
                                 "cost_nano": per_request * 30_000, "days": 30.4}]
    [rec] = cheaper_models(models, pricer)
    assert rec.data["alternative"] == "gpt-4o-mini"
    assert rec.saving_usd_per_month > 40  # $54 at gpt-4o vs ~$3 at gpt-4o-mini


def test_trims_and_cache() -> None:
    trims: list[TrimStats] = [{"scope": "feature chat", "requests": 500, "trimmed": 150},
                              {"scope": "feature faq", "requests": 500, "trimmed": 5}]
    [trim] = recommend(trims=trims)
    assert trim.title == "feature chat: 30% of requests are trimmed to fit max_input"
    caches: list[CacheStats] = [
        {"scope": "project docs", "requests": 10_000, "cost_nano": usd_to_nano(300),
         "days": 30.4, "cache_enabled": False, "repeats": 2500},
        {"scope": "project chat", "requests": 10_000, "cost_nano": usd_to_nano(300),
         "days": 30.4, "cache_enabled": True, "repeats": 2500},
    ]
    [cache] = enable_cache(caches)
    assert cache.saving_usd_per_month == pytest.approx(75.0)
    assert "25% of its 10,000 requests repeated" in cache.detail


def test_recommend_sorts_by_saving() -> None:
    recs = recommend(
        features=[{"feature": "faq", "requests": 1000, "output_tokens": 1000,
                   "max_tokens": 4000}],
        caches=[{"scope": "project docs", "requests": 1000, "cost_nano": usd_to_nano(100),
                 "days": 30.4, "cache_enabled": False, "repeats": 500,
                 "repeat_cost_nano": usd_to_nano(40)}],
    )
    assert [r.data["kind"] for r in recs] == ["enable_cache", "lower_cap"]
    assert recs[0].saving_usd_per_month == pytest.approx(40.0)
    assert recs[0].to_dict()["saving_usd_per_month"] == pytest.approx(40.0)
