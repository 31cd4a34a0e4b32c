"""The fast path's query-string parser against the one Starlette uses."""

from __future__ import annotations

from urllib.parse import parse_qsl

from hypothesis import given
from hypothesis import strategies as st

from onhand.api.fastpath import query_values

pieces = st.sampled_from(["sku", "=", "&", "A", "b-1", "%41", "%", "+", " ", "skus", ";", "é"])


@given(st.lists(pieces, max_size=24).map("".join))
def test_values_are_what_starlettes_parse_qsl_gives_for_any_query_string(text: str) -> None:
    raw = text.encode("latin-1", "replace")
    for name in ("sku", "skus"):
        starlette = [v for k, v in parse_qsl(raw.decode("latin-1"), True) if k == name]
        assert query_values(raw, name) == starlette


def test_a_plain_bulk_query_splits_without_unquoting() -> None:
    assert query_values(b"sku=A&sku=&x=1&sku&&sku=b.c", "sku") == ["A", "", "", "b.c"]
    assert query_values(b"sku=A%2DB&sku=C+D", "sku") == ["A-B", "C D"]
