"""JMESPath applied within a budget of work, so no rule can take the process down.

A rule's expression is at most 1,000 characters, yet it can ask for work exponential in its
length: each ``join('', [@, @])`` doubles a string, and 45 of them asked for terabytes (it
took the worker's memory when the rule was saved). Comparing, serializing or joining values
that share parts (``[@, @]`` nested) costs their size written out, which doubles per level.

So every step of the evaluation is paid for from one budget: each node the interpreter visits,
and the size written out of every value a function is given or returns and of both sides of a
comparison. The budget is :data:`BASE_UNITS` plus :data:`PER_DOCUMENT_UNIT` per unit of the
document (a value counts one unit, a text its length more): ordinary rules on ordinary events
spend a small part of it; one that asks for more stops with :class:`OverBudget`, having held
at most about the budget in memory.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from jmespath.visitor import _TreeNode

__all__ = ["BASE_UNITS", "PER_DOCUMENT_UNIT", "OverBudget", "search_within_budget"]

BASE_UNITS = 200_000
PER_DOCUMENT_UNIT = 4


class OverBudget(Exception):
    """The expression asked for more work than its budget."""


class _Budget:
    def __init__(self, units: int) -> None:
        self.left = units

    def spend(self, units: int) -> None:
        self.left -= units
        if self.left < 0:
            raise OverBudget

    def size(self, value: Any, *, limit: int | None = None) -> int:
        """The size of ``value`` written out, paid for (or, with ``limit``, free, stopping
        there)."""
        seen, stack = 0, [value]
        while stack:
            item = stack.pop()
            units = 1 + (len(item) if isinstance(item, str) else 0)
            if isinstance(item, dict):
                units += sum(len(key) for key in item)
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
            seen += units
            if limit is None:
                self.spend(units)
            elif seen > limit:
                break
        return seen


def search_within_budget(compiled: Any, document: Any) -> Any:
    """``compiled`` (a :func:`jmespath.compile` result) applied to ``document``; raises
    :class:`OverBudget` when it asks for more than the budget of ``document``."""
    budget = _Budget(0)
    budget.left = BASE_UNITS + PER_DOCUMENT_UNIT * budget.size(document, limit=2**40)
    return _interpreter()(budget).visit(compiled.parsed, document)


@functools.cache
def _interpreter() -> Callable[[_Budget], Any]:
    """jmespath's interpreter, paying for each step (imported on first use)."""
    from jmespath import functions, visitor

    class Paid(functions.Functions):
        def __init__(self, budget: _Budget) -> None:
            self.budget = budget

        def call_function(self, function_name: str, resolved_args: Iterable[Any]) -> Any:
            for argument in resolved_args:
                self.budget.size(argument)
            result = super().call_function(function_name, resolved_args)
            self.budget.size(result)
            return result

    class Interpreter(visitor.TreeInterpreter):
        def __init__(self, budget: _Budget) -> None:
            super().__init__(visitor.Options(custom_functions=Paid(budget)))
            self.budget = budget

        def visit(self, node: _TreeNode, *args: Any, **kwargs: Any) -> Any:
            self.budget.spend(1)
            return super().visit(node, *args, **kwargs)

        def visit_comparator(self, node: _TreeNode, value: Any) -> Any:
            """Both sides, paid for by their size, then compared as jmespath compares them."""
            sides = [self.visit(child, value) for child in node["children"]]
            for side in sides:
                self.budget.size(side)
            known = [{"type": "literal", "value": v, "children": []} for v in sides]
            return super().visit_comparator(cast("_TreeNode", {**node, "children": known}), value)

    return Interpreter
