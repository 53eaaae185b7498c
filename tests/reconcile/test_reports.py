"""The providers' report buckets summed per day × model, with the configuration's project,
workspace and API key ids leaving out the usage and cost the gateway did not serve."""

from __future__ import annotations

from typing import Any

from tokenstile.config import ReconcileProviderConfig
from tokenstile.reconcile.reports import anthropic_days, openai_days

DAY = 20_000  # days since the epoch
START = DAY * 86400


def _openai_usage(project: str, key: str, tokens: int) -> dict[str, Any]:
    return {"project_id": project, "api_key_id": key, "model": "gpt-4o-2024-08-06",
            "num_model_requests": 1, "input_tokens": tokens, "output_tokens": 1}


def test_openai_days_keep_only_the_configured_projects_and_keys() -> None:
    usage = [{"start_time": START, "results": [
        _openai_usage("proj_a", "key_a", 10), _openai_usage("proj_b", "key_a", 100),
        _openai_usage("proj_a", "key_b", 1000)]},
        {"start_time": "not a time", "results": [_openai_usage("proj_a", "key_a", 7)]}]
    costs = [{"start_time": START, "results": [
        {"project_id": "proj_a", "line_item": "gpt-4o, input",
         "amount": {"value": "0.5", "currency": "usd"}},
        {"project_id": "proj_b", "line_item": "gpt-4o, input",
         "amount": {"value": "9", "currency": "usd"}}]}]
    cfg = ReconcileProviderConfig(project_ids=["proj_a"], api_key_ids=["key_a"])
    [day] = openai_days(usage, costs, cfg)
    assert (day.day, day.model, day.requests, day.input_tokens) == (DAY, "gpt-4o", 1, 10)
    assert day.cost_nano == 500_000_000
    everything = openai_days(usage, costs)
    assert [(d.requests, d.input_tokens, d.cost_nano) for d in everything] == \
        [(3, 1110, 9_500_000_000)]


def test_anthropic_days_keep_only_the_configured_workspaces_and_keys() -> None:
    def row(workspace: str, key: str, tokens: int) -> dict[str, Any]:
        return {"workspace_id": workspace, "api_key_id": key, "model": "claude-3-5-haiku-20241022",
                "uncached_input_tokens": tokens, "cache_read_input_tokens": 0,
                "output_tokens": 2}

    usage = [{"starting_at": "2024-10-04T00:00:00Z", "results": [
        row("ws_a", "key_a", 10), row("ws_b", "key_a", 100), row("ws_a", "key_b", 1000)]}]
    costs = [{"starting_at": "2024-10-04T00:00:00Z", "results": [
        {"workspace_id": "ws_a", "model": "claude-3-5-haiku", "amount": "25", "currency": "USD"},
        {"workspace_id": "ws_b", "model": "claude-3-5-haiku", "amount": "75", "currency": "USD"}]}]
    cfg = ReconcileProviderConfig(workspace_ids=["ws_a"], api_key_ids=["key_a"])
    [day] = anthropic_days(usage, costs, cfg)
    assert (day.model, day.input_tokens, day.output_tokens) == ("claude-3-5-haiku", 10, 2)
    assert day.cost_nano == 250_000_000
    assert [(d.input_tokens, d.cost_nano) for d in anthropic_days(usage, costs)] == \
        [(1110, 1_000_000_000)]
