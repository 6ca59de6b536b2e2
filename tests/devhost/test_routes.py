"""Route templates match like the Functions host's (ASP.NET Core) routing."""

from __future__ import annotations

import pytest

from devhost._routes import RouteTable, RouteTemplateError, compile_route


def test_named_parameters_become_route_values() -> None:
    route = compile_route("groups/{customer}/{service}/contacts/{phone}", "x")
    assert route.match("groups/c1/s1/contacts/%2B358401234567") == {
        "customer": "c1",
        "service": "s1",
        "phone": "+358401234567",
    }


def test_literals_match_case_insensitively_and_trailing_slash_is_ignored() -> None:
    table: RouteTable[str] = RouteTable()
    table.add("Messages/{id}", "x")
    assert [values for _, values in table.find("messages/42/")] == [{"id": "42"}]


def test_optional_parameter_may_be_left_out() -> None:
    route = compile_route("contacts/{phone?}", "x")
    assert route.match("contacts/123") == {"phone": "123"}
    assert route.match("contacts") == {}


def test_default_value_fills_a_missing_parameter() -> None:
    assert compile_route("pages/{page=1}", "x").match("pages") == {"page": "1"}


@pytest.mark.parametrize(
    ("template", "good", "bad"),
    [
        ("items/{id:int}", "items/12", "items/abc"),
        ("items/{id:guid}", "items/1b4e28ba-2fa1-11d2-883f-0016d3cca427", "items/nope"),
        ("items/{id:alpha}", "items/abc", "items/a1"),
        ("items/{id:bool}", "items/true", "items/yes"),
        ("items/{id:minlength(3)}", "items/abc", "items/ab"),
        ("items/{id:range(1,5)}", "items/5", "items/6"),
        ("items/{id:regex(^a+$)}", "items/aaa", "items/ab"),
        ("items/{id:int:min(10)}", "items/10", "items/9"),
    ],
)
def test_constraints_filter_values(template: str, good: str, bad: str) -> None:
    route = compile_route(template, "x")
    assert route.match(good) is not None
    assert route.match(bad) is None


def test_catch_all_takes_the_rest_of_the_path() -> None:
    assert compile_route("files/{*path}", "x").match("files/a/b/c.txt") == {"path": "a/b/c.txt"}


def test_literal_routes_win_over_parameter_routes() -> None:
    table: RouteTable[str] = RouteTable()
    table.add("messages/{id}", "by-id")
    table.add("messages/{id:int}", "by-int")
    table.add("messages/status", "status")
    table.add("{*any}", "catch-all")
    assert next(route.target for route, _ in table.find("messages/status")) == "status"
    assert next(route.target for route, _ in table.find("messages/7")) == "by-int"
    assert next(route.target for route, _ in table.find("messages/x")) == "by-id"
    assert [route.target for route, _ in table.find("other")] == ["catch-all"]


def test_mixed_segment_splits_literals_and_parameters() -> None:
    assert compile_route("files/{name}.{ext}", "x").match("files/report.pdf") == {
        "name": "report",
        "ext": "pdf",
    }


def test_unknown_constraint_is_refused_at_start_up() -> None:
    with pytest.raises(RouteTemplateError):
        compile_route("items/{id:wat}", "x")


def test_a_path_looked_up_again_matches_the_same_and_a_route_added_later_counts() -> None:
    table: RouteTable[str] = RouteTable()
    table.add("callbacks/inbound/{service}", "webhook")
    first = table.find("callbacks/inbound/s-1")
    again = table.find("callbacks/inbound/s-1")
    assert [(r.target, dict(v)) for r, v in again] == [("webhook", {"service": "s-1"})]
    assert [(r.target, dict(v)) for r, v in first] == [(r.target, dict(v)) for r, v in again]
    with pytest.raises(TypeError):
        again[0][1]["service"] = "changed"  # type: ignore[index]  # shared: read-only
    table.add("callbacks/inbound/s-1", "literal")  # more specific, added after the lookup
    assert [r.target for r, _ in table.find("callbacks/inbound/s-1")] == ["literal", "webhook"]


def test_many_distinct_paths_keep_matching() -> None:
    from devhost._routes import FOUND_KEPT

    table: RouteTable[str] = RouteTable()
    table.add("messages/{id}", "by-id")
    for n in range(FOUND_KEPT * 2 + 3):
        assert [dict(v) for _, v in table.find(f"messages/{n}")] == [{"id": str(n)}]
    assert len(table._found) <= FOUND_KEPT
