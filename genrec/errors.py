"""Typed errors. Each names what was wrong so adapters can map it to a precise 4xx/KServe error."""

from __future__ import annotations


class GenrecError(ValueError):
    """Base class: bad input from a caller (maps to HTTP 400 / KServe INVALID_ARG)."""


class HistoryTooLongError(GenrecError):
    def __init__(self, length: int, cap: int) -> None:
        super().__init__(f"history has {length} events, over the cap of {cap}")
        self.length, self.cap = length, cap


class UnknownItemError(GenrecError):
    def __init__(self, item_ids: list[int], n_items: int) -> None:
        shown = ", ".join(str(i) for i in item_ids[:5])
        more = f" (and {len(item_ids) - 5} more)" if len(item_ids) > 5 else ""
        super().__init__(f"unknown item ids: {shown}{more}; the catalogue has ids 0..{n_items - 1}")
        self.item_ids = item_ids


class InvalidValueError(GenrecError):
    """NaN, infinity, an out-of-range code or a wrong dtype/shape in a named field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
