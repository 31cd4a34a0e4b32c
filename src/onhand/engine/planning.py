"""How a reservation line is spread over its candidate warehouses. Pure arithmetic.

The Lua ``reserve`` script implements exactly this; the in-memory engine calls it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["plan_line"]


def plan_line(
    qty: int, available: Sequence[int], allow_split: bool, allowance: int
) -> tuple[list[tuple[int, int]] | None, int]:
    """Plan one line. Returns ``(allocations, could_have)``.

    ``available`` holds each candidate's available units in preference order (negative
    values count as 0); ``allowance`` is how many units may still be promised beyond
    stock. ``allocations`` is a list of ``(candidate_index, units)`` or ``None`` when the
    line cannot be covered; ``could_have`` is then the most this line could get.

    Rules, in order: the first candidate covering the whole line; with ``allow_split``,
    the fewest candidates covering it (largest first, ties by preference), units taken
    in preference order; otherwise units beyond stock within ``allowance`` — with
    ``allow_split`` every candidate's stock plus the rest at the preferred candidate,
    without it the candidate with the most stock (ties by preference).
    """
    avail = [a if a > 0 else 0 for a in available]
    for i, a in enumerate(avail):
        if a >= qty:
            return [(i, qty)], qty
    if allow_split:
        total = sum(avail)
        if total >= qty:
            chosen: list[int] = []
            covered = 0
            for i in sorted(range(len(avail)), key=lambda j: (-avail[j], j)):
                chosen.append(i)
                covered += avail[i]
                if covered >= qty:
                    break
            allocations = []
            remaining = qty
            for i in sorted(chosen):
                take = min(avail[i], remaining)
                allocations.append((i, take))
                remaining -= take
            return allocations, qty
        need = qty - total
        if need > allowance:
            return None, total + allowance
        allocations = [(i, a) for i, a in enumerate(avail) if a > 0]
        if allocations and allocations[0][0] == 0:
            allocations[0] = (0, allocations[0][1] + need)
        else:
            allocations.insert(0, (0, need))
        return allocations, qty
    best = max(range(len(avail)), key=lambda j: (avail[j], -j))
    if qty - avail[best] > allowance:
        return None, avail[best] + allowance
    return [(best, qty)], qty
