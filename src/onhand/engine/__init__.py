"""Stock engines: the port (:class:`StockEngine`) and its two implementations."""

from onhand.engine.base import ManualClock, StockEngine
from onhand.engine.memory import MemoryEngine

__all__ = ["ManualClock", "MemoryEngine", "StockEngine"]
