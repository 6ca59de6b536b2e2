"""JMESPath applied within a budget of work, so no rule can take the process down.

A rule's expression is at most 1,000 characters, yet it can ask for work exponential in its
length: each ``join('', [@, @])`` doubles a string, and 45 of them asked for terabytes (it
took the worker's memory when the rule was saved). Values that share parts (``[@, @]`` nested)
cost their size written out, which doubles per level, when they are compared, serialized,
joined or rendered into a message.

So every step is paid for from one budget: each node the interpreter visits; the size written
out of every value a function is given or returns, of both sides of a comparison and of what
the expression finds; and, before it is made, what ``join`` makes (its separator once between
each two items). One budget serves every expression of a rule for one event (its Condition,
FromEvent and placeholders: :func:`one_budget`), or of a rule being saved; its size is
:data:`BASE_UNITS` plus :data:`PER_DOCUMENT_UNIT` per character of the event written as JSON
(non-ASCII text escaped, as ``to_string`` writes it), at most :data:`MOST_UNITS`, and at most
:data:`MOST_STEPS` steps. A value costs its length written as JSON (non-ASCII text escaped)
and a step per item; a flatten or a slice pays for the list it makes before making it.
Ordinary rules spend a small part of it; one that asks for more stops with :class:`OverBudget`,
having held no more than a few times the budget in memory, within a few seconds of CPU.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from jmespath.visitor import _TreeNode

__all__ = [
    "BASE_UNITS",
    "MOST_STEPS",
    "MOST_UNITS",
    "PER_DOCUMENT_UNIT",
    "OverBudget",
    "allowance",
    "one_budget",
    "search_within_budget",
]

BASE_UNITS = 500_000
PER_DOCUMENT_UNIT = 8
#: The most units (64 MB or so of text written out) ...
MOST_UNITS = 64_000_000
#: ... and the most steps, whatever the event: each node visited and each value whose size is
#: paid for is one (about a microsecond each: a few seconds of CPU at most).
MOST_STEPS = 3_000_000


class OverBudget(Exception):
    """The expression asked for more work than its budget."""


def allowance(document: Any) -> int:
    """The budget of the expressions applied to ``document`` (at most :data:`MOST_UNITS`)."""
    written = json.dumps(document, separators=(",", ":"), default=str)
    return min(MOST_UNITS, BASE_UNITS + PER_DOCUMENT_UNIT * len(written))


class _Budget:
    def __init__(self, units: int) -> None:
        self.left = units
        self.steps = MOST_STEPS

    def spend(self, units: int, steps: int = 1) -> None:
        self.left -= units
        self.steps -= steps
        if self.left < 0 or self.steps < 0:
            raise OverBudget

    def size(self, value: Any) -> None:
        """Pay for ``value`` written out as JSON (each shared part as often as it occurs)."""
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                units = 2 + len(item) if item.isascii() else len(json.dumps(item))  # "\u00e4"
            elif isinstance(item, dict):
                units = 2 + sum(4 + len(key) for key in item)
                stack.extend(item.values())
            elif isinstance(item, list):
                units = 2 + len(item)
                stack.extend(item)
            elif isinstance(item, int) and not isinstance(item, bool):
                units = 2 + item.bit_length() * 3 // 10  # its digits
            else:
                units = 25  # a float's digits, true, false, null
            self.spend(units)


_SHARED: ContextVar[_Budget | None] = ContextVar("expression_budget", default=None)


@contextmanager
def one_budget(units: int) -> Iterator[None]:
    """Within: every expression applied shares one budget of ``units`` (:func:`allowance`)."""
    token = _SHARED.set(_Budget(units))
    try:
        yield
    finally:
        _SHARED.reset(token)


def search_within_budget(compiled: Any, document: Any) -> Any:
    """``compiled`` (a :func:`jmespath.compile` result) applied to ``document``, paid for from
    the budget of :func:`one_budget` (else one of its own); raises :class:`OverBudget` when
    that runs out."""
    budget = _SHARED.get() or _Budget(allowance(document))
    found = _interpreter()(budget).visit(compiled.parsed, document)
    budget.size(found)  # what the caller reads (a placeholder writes it out)
    return found


@functools.cache
def _interpreter() -> Callable[[_Budget], Any]:
    """jmespath's interpreter, paying for each step (imported on first use)."""
    from jmespath import functions, visitor

    class Paid(functions.Functions):
        def __init__(self, budget: _Budget) -> None:
            self.budget = budget

        def call_function(self, function_name: str, resolved_args: Iterable[Any]) -> Any:
            arguments = list(resolved_args)
            for argument in arguments:
                self.budget.size(argument)
            if function_name == "join" and len(arguments) == 2:
                glue, items = arguments
                if isinstance(glue, str) and isinstance(items, list):  # else jmespath refuses
                    self.budget.spend(len(glue) * max(0, len(items) - 1))
            result = super().call_function(function_name, arguments)
            self.budget.size(result)
            return result

    class Interpreter(visitor.TreeInterpreter):
        def __init__(self, budget: _Budget) -> None:
            super().__init__(visitor.Options(custom_functions=Paid(budget)))
            self.budget = budget

        def visit(self, node: _TreeNode, *args: Any, **kwargs: Any) -> Any:
            self.budget.spend(1)
            return super().visit(node, *args, **kwargs)

        def visit_flatten(self, node: _TreeNode, value: Any) -> Any:
            """As jmespath flattens, paying for the list before it is made (100,000 items
            each a list of the same 100,000 made 10**10)."""
            base = self.visit(node["children"][0], value)
            if not isinstance(base, list):
                return None
            made = sum(len(item) if isinstance(item, list) else 1 for item in base)
            self.budget.spend(made, made)
            merged: list[Any] = []
            for item in base:
                if isinstance(item, list):
                    merged.extend(item)
                else:
                    merged.append(item)
            return merged

        def visit_slice(self, node: _TreeNode, value: Any) -> Any:
            if isinstance(value, list):
                self.budget.spend(len(value), len(value))  # (the copy it makes, at most)
            return super().visit_slice(node, value)

        def visit_comparator(self, node: _TreeNode, value: Any) -> Any:
            """Both sides, paid for by their size, then compared as jmespath compares them."""
            sides = [self.visit(child, value) for child in node["children"]]
            for side in sides:
                self.budget.size(side)
            known = [{"type": "literal", "value": v, "children": []} for v in sides]
            return super().visit_comparator(cast("_TreeNode", {**node, "children": known}), value)

    return Interpreter
