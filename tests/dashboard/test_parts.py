"""The small parts: the session codec, number formats, the SVG charts."""

from __future__ import annotations

import pytest

from tokenstile.admin import dashboard_session as s
from tokenstile.admin.dashboard_charts import (
    Column,
    columns_chart,
    compact,
    meter,
    money,
    nice_ceiling,
)

KEY = "adm-0123456789abcdef"


def test_a_session_round_trips_and_refuses_tampering_other_keys_and_age() -> None:
    session = s.new_session("project", 1000.0, key_id="key_1", organization="o", project="p")
    cookie = s.encode(KEY, session)
    assert s.decode(KEY, cookie, 1001.0) == session
    assert s.decode(KEY, cookie, 1000.0 + s.SESSION_S) is None  # expired
    assert s.decode("another-key", cookie, 1001.0) is None
    payload, signature = cookie.split(".")
    assert s.decode(KEY, payload + "." + signature[:-2] + "AA", 1001.0) is None
    forged = s.encode("another-key", s.new_session("admin", 1000.0))
    assert s.decode(KEY, forged.split(".")[0] + "." + signature, 1001.0) is None
    for junk in ("", "x", "a.b.c", "....", "e30.e30"):
        assert s.decode(KEY, junk, 1001.0) is None
    assert "key_1" not in s.csrf_token(KEY, session)
    assert s.csrf_ok(KEY, session, s.csrf_token(KEY, session))
    assert not s.csrf_ok(KEY, session, s.csrf_token(KEY, s.new_session("admin", 1000.0)))
    assert not s.csrf_ok(KEY, session, None) and not s.csrf_ok(KEY, session, "")
    nonce = s.new_login_nonce()
    assert s.login_ok(KEY, nonce, s.login_token(KEY, nonce))
    assert not s.login_ok(KEY, None, s.login_token(KEY, nonce))
    assert not s.login_ok(KEY, s.new_login_nonce(), s.login_token(KEY, nonce))


@pytest.mark.parametrize(("value", "text"), [
    (0, "$0.00"), (0.000123, "$0.000123"), (0.0456, "$0.0456"), (1.5, "$1.50"),
    (1234.56, "$1,235"), (-2.5, "-$2.50")])
def test_money(value: float, text: str) -> None:
    assert money(value) == text


def test_compact_and_nice_ceiling() -> None:
    assert [compact(v) for v in (950, 12_345, 4_560_000, 1.2e9)] == ["950", "12.3k", "4.56M",
                                                                     "1.2B"]
    assert [nice_ceiling(v) for v in (0, 0.3, 7, 11, 24, 2600)] == [1.0, 0.5, 10, 20, 25, 5000]


def test_charts_escape_what_they_draw_and_describe_themselves() -> None:
    evil = '<script>alert("x")</script>'
    svg = str(columns_chart([Column(label=evil, tick=evil, values=(1.0, 2.0), projected=0.5)],
                            title="Spend & more", description=evil, series=(evil, "b")))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert 'role="img"' in svg and "<title id=" in svg and "<desc id=" in svg
    assert svg.count('class="bar ') == 3  # two series and the forecast
    bar = str(meter(1.7, "critical", [0.5, 0.9], label="over"))
    assert 'width="100.00"' in bar and bar.count('class="mark"') == 2
