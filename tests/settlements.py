"""Settlements for tests that drive the gate directly: built as the proxy builds them."""

from __future__ import annotations

from typing import Any

from ledger.gate import Ticket
from ledger.pricing import Cost
from ledger.settlement import Settlement
from ledger.usage import Usage


def settlement(ticket: Ticket, micros: int, input_tokens: int = 100, output_tokens: int = 50,
               **details: Any) -> Settlement:
    """`ticket`'s request settled at `micros`, having used these tokens; `details` as
    Settlement.of takes them (a misspelt one is a TypeError)."""
    usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    return Settlement.of(ticket, usage, Cost(micros, row="", known=True, version=""),
                         **details)
