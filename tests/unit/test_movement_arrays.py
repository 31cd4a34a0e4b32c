"""The arrays ``LedgerStore.apply`` sends a batch's movements as match the table."""

from __future__ import annotations

from sqlalchemy.dialects import postgresql

from onhand.ledger.rows import MOVEMENT_COLUMNS
from onhand.ledger.store import MOVEMENT_TYPES
from onhand.ledger.tables import movements


def test_every_movement_column_is_sent_as_an_array_of_its_own_type() -> None:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    table = {
        c.name: c.type.compile(dialect=dialect).lower()
        for c in movements.columns
        if c.name != "recorded_at"  # the server's clock, not sent
    }
    assert tuple(MOVEMENT_TYPES) == MOVEMENT_COLUMNS
    assert table == MOVEMENT_TYPES
