"""``stage_entries``: raw stream replies to COPY text, or ``None`` for the general path."""

from __future__ import annotations

from typing import Any

from onhand.ledger.rows import STAGE_COLUMNS, pairs, stage_entries

RESERVED = [b"id", b"s:A:W:2", b"t", b"reserved", b"ts", b"1700", b"sku", b"A", b"wh", b"W"]


def _row(flat: list[Any], partition: int = 3, stream_id: str = "1700-4") -> list[bytes] | None:
    staged = stage_entries([(partition, stream_id, flat)])
    if staged is None:
        return None
    assert staged.count == 1
    assert staged.payload.endswith(b"\n")
    return staged.payload[:-1].split(b"\t")


def test_a_row_has_the_stream_position_then_every_field_in_column_order() -> None:
    row = _row(list(RESERVED))
    assert row is not None
    values = dict(zip(STAGE_COLUMNS, row, strict=True))
    assert (values["partition"], values["stream_ms"], values["stream_seq"]) == (b"3", b"1700", b"4")
    assert values["event_id"] == b"s:A:W:2"
    assert values["type"] == b"reserved"
    assert values["warehouse"] == b"W"
    assert values["reservation_id"] == b""  # absent: NULL
    assert len(row) == len(STAGE_COLUMNS)


def test_the_later_of_two_values_of_one_field_wins_as_in_the_general_path() -> None:
    flat = [*RESERVED, b"wh", b"W2"]
    row = _row(flat)
    assert row is not None
    assert row[STAGE_COLUMNS.index("warehouse")] == pairs(flat)[b"wh"] == b"W2"


def test_tabs_newlines_and_backslashes_are_escaped() -> None:
    row = _row([*RESERVED, b"rsn", b"a\tb\nc\\d\re"])
    assert row is not None
    assert row[STAGE_COLUMNS.index("reason")] == b"a\\tb\\nc\\\\d\\re"


def test_the_same_shape_twice_reuses_its_getter_and_gives_the_same_rows() -> None:
    staged = stage_entries([(0, "1-0", list(RESERVED)), (1, "2-0", list(RESERVED))])
    assert staged is not None
    first, second, _ = staged.payload.split(b"\n")
    assert first.split(b"\t")[3:] == second.split(b"\t")[3:]
    assert staged.types == frozenset({b"reserved"})


def test_entries_the_fast_path_does_not_take_send_the_whole_batch_to_the_general_path() -> None:
    def without(name: bytes) -> list[bytes]:
        i = RESERVED.index(name)
        return RESERVED[:i] + RESERVED[i + 2 :]

    for flat in (
        None,  # trimmed while pending
        [],
        without(b"id"),
        without(b"ts"),
        without(b"t"),
        [*RESERVED, b"rsn", b""],  # an empty value (the general path tells it from absent)
        [*RESERVED, b"rsn"],  # odd length
        [b"t", b"policy_set", *without(b"t")],  # its policy is parsed by Python
        [b"t", b"nonsense", *without(b"t")],
        [name.decode() for name in RESERVED],  # a decoding client
    ):
        assert stage_entries([(0, "1-0", list(RESERVED)), (0, "2-0", flat)]) is None, flat
