"""RouteTable: host specificity first (exact > longest wildcard > `*`), then priority, then the
longest path prefix, then configuration order; `methods` and `headers` only narrow a route."""

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from loadweaver.routing.table import CompiledRoute, Headers, RouteTable


def route(
    name: str,
    host: str = "*",
    prefix: str = "/",
    *,
    methods: Sequence[str] = (),
    headers: Sequence[tuple[str, str]] = (),
    priority: int = 0,
    order: int = 0,
) -> CompiledRoute:
    return CompiledRoute(
        name=name,
        pool=f"pool-{name}",
        host=host,
        path_prefix=prefix,
        methods=frozenset(methods),
        headers=tuple((key.lower().encode(), value.encode()) for key, value in headers),
        priority=priority,
        order=order,
    )


def table(*routes: CompiledRoute) -> RouteTable:
    # Orders follow the argument order, as the compiler numbers routes by their config position.
    numbered = [
        CompiledRoute(
            r.name, r.pool, r.host, r.path_prefix, r.methods, r.headers, r.priority, index
        )
        for index, r in enumerate(routes)
    ]
    return RouteTable(numbered)


def matched(
    routes: RouteTable, host: str, path: str = "/", method: str = "GET", headers: Headers = ()
) -> str | None:
    found = routes.match(host, path, method, headers)
    return found.name if found is not None else None


# ---- hosts ----


def test_exact_host_beats_wildcard_beats_catch_all() -> None:
    routes = table(
        route("any", "*"), route("wild", "*.example.com"), route("exact", "a.example.com")
    )
    assert matched(routes, "a.example.com") == "exact"
    assert matched(routes, "b.example.com") == "wild"
    assert matched(routes, "other.test") == "any"


def test_host_specificity_beats_priority_and_prefix_length() -> None:
    routes = table(
        route("any", "*", "/api/v1/", priority=100),
        route("wild", "*.example.com", "/api/", priority=10),
        route("exact", "a.example.com", "/"),
    )
    assert matched(routes, "a.example.com", "/api/v1/x") == "exact"
    assert matched(routes, "b.example.com", "/api/v1/x") == "wild"


def test_wildcard_matches_any_depth_but_not_the_bare_domain() -> None:
    routes = table(route("wild", "*.example.com"))
    assert matched(routes, "a.example.com") == "wild"
    assert matched(routes, "a.b.example.com") == "wild"
    assert matched(routes, "example.com") is None
    assert matched(routes, "badexample.com") is None
    assert matched(routes, ".example.com") is None


def test_longest_wildcard_suffix_wins() -> None:
    routes = table(route("short", "*.example.com"), route("long", "*.b.example.com"))
    assert matched(routes, "a.b.example.com") == "long"
    assert matched(routes, "b.example.com") == "short"
    assert matched(routes, "a.c.example.com") == "short"


def test_falls_back_to_a_less_specific_host_when_the_specific_group_does_not_accept() -> None:
    routes = table(
        route("exact-api", "a.example.com", "/api/"),
        route("wild-post", "*.example.com", methods=["POST"]),
        route("any", "*"),
    )
    assert matched(routes, "a.example.com", "/api/x") == "exact-api"
    assert matched(routes, "a.example.com", "/other", "POST") == "wild-post"
    assert matched(routes, "a.example.com", "/other", "GET") == "any"


def test_no_catch_all_means_no_match_for_unknown_hosts() -> None:
    routes = table(route("exact", "a.test"))
    assert matched(routes, "a.test") == "exact"
    assert matched(routes, "b.test") is None


def test_empty_table_matches_nothing() -> None:
    assert matched(RouteTable([]), "a.test") is None


# ---- paths and priority ----


def test_longest_path_prefix_wins_regardless_of_order() -> None:
    routes = table(
        route("root", prefix="/"), route("api", prefix="/api/"), route("v1", prefix="/api/v1/")
    )
    assert matched(routes, "h", "/api/v1/users") == "v1"
    assert matched(routes, "h", "/api/v2/users") == "api"
    assert matched(routes, "h", "/static/x") == "root"


def test_priority_overrides_prefix_length() -> None:
    routes = table(route("v1", prefix="/api/v1/"), route("root", prefix="/", priority=5))
    assert matched(routes, "h", "/api/v1/users") == "root"


def test_configuration_order_breaks_ties() -> None:
    routes = table(route("first", prefix="/a"), route("second", prefix="/a"))
    assert matched(routes, "h", "/a") == "first"
    reversed_routes = table(route("second", prefix="/a"), route("first", prefix="/a"))
    assert matched(reversed_routes, "h", "/a") == "second"


def test_prefix_is_a_plain_string_prefix() -> None:
    routes = table(route("api", prefix="/api"))
    assert matched(routes, "h", "/api") == "api"
    assert matched(routes, "h", "/apix") == "api"
    assert matched(routes, "h", "/ap") is None


# ---- methods and headers ----


def test_methods_matcher() -> None:
    routes = table(route("writes", methods=["POST", "PUT"]), route("reads", "*", "/"))
    assert matched(routes, "h", "/", "POST") == "writes"
    assert matched(routes, "h", "/", "PUT") == "writes"
    assert matched(routes, "h", "/", "GET") == "reads"


def test_methods_matcher_without_fallback_gives_none() -> None:
    routes = table(route("writes", methods=["POST"]))
    assert matched(routes, "h", "/", "GET") is None


def test_headers_matcher_names_are_case_insensitive_values_exact() -> None:
    routes = table(route("canary", headers=[("X-Canary", "yes")]), route("main"))
    assert matched(routes, "h", "/", "GET", [(b"X-Canary", b"yes")]) == "canary"
    assert matched(routes, "h", "/", "GET", [(b"x-canary", b"yes")]) == "canary"
    assert matched(routes, "h", "/", "GET", [(b"X-CANARY", b"yes")]) == "canary"
    assert matched(routes, "h", "/", "GET", [(b"X-Canary", b"no")]) == "main"
    assert matched(routes, "h", "/", "GET", []) == "main"


def test_headers_matcher_needs_every_header_and_any_duplicate_may_match() -> None:
    routes = table(route("both", headers=[("A", "1"), ("B", "2")]), route("main"))
    assert matched(routes, "h", "/", "GET", [(b"A", b"1")]) == "main"
    assert matched(routes, "h", "/", "GET", [(b"A", b"1"), (b"B", b"2")]) == "both"
    assert matched(routes, "h", "/", "GET", [(b"A", b"0"), (b"A", b"1"), (b"B", b"2")]) == "both"


def test_matchers_apply_in_the_only_catch_all_fast_path() -> None:
    routes = table(
        route("post-api", "*", "/api/", methods=["POST"], priority=1),
        route("hdr", "*", "/", headers=[("X-T", "1")]),
        route("root", "*", "/"),
    )
    assert matched(routes, "h", "/api/x", "POST") == "post-api"
    assert matched(routes, "h", "/api/x", "GET") == "root"
    assert matched(routes, "h", "/api/x", "GET", [(b"x-t", b"1")]) == "hdr"


# ---- property: the table agrees with a brute-force reference ----

HOSTS = ["a.example.com", "b.example.com", "x.a.example.com", "example.com", "other.test"]
ROUTE_HOSTS = [
    "*",
    "*.example.com",
    "*.a.example.com",
    "a.example.com",
    "example.com",
    "other.test",
]
PREFIXES = ["/", "/a", "/a/", "/a/b", "/b"]
PATHS = ["/", "/a", "/a/", "/a/b", "/a/bc", "/b/x", "/c"]
METHODS = ["GET", "POST", "PUT"]


def reference(
    routes: Sequence[CompiledRoute], host: str, path: str, method: str, headers: Headers
) -> CompiledRoute | None:
    def host_rank(candidate: CompiledRoute) -> tuple[int, int] | None:
        if candidate.host == host:
            return (0, 0)
        if candidate.host.startswith("*."):
            suffix = candidate.host[1:]
            if host.endswith(suffix) and len(host) > len(suffix):
                return (1, -len(suffix))
            return None
        if candidate.host == "*":
            return (2, 0)
        return None

    best: tuple[tuple[int, int], tuple[int, int, int]] | None = None
    chosen = None
    for candidate in routes:
        rank = host_rank(candidate)
        if rank is None or not candidate.accepts(path, method, headers):
            continue
        key = (rank, candidate.sort_key)
        if best is None or key < best:
            best, chosen = key, candidate
    return chosen


route_strategy = st.builds(
    lambda host, prefix, methods, header, priority: (host, prefix, methods, header, priority),
    st.sampled_from(ROUTE_HOSTS),
    st.sampled_from(PREFIXES),
    st.lists(st.sampled_from(METHODS), max_size=2, unique=True),
    st.one_of(st.none(), st.sampled_from([("x-k", "1"), ("x-k", "2")])),
    st.integers(min_value=-2, max_value=2),
)


@settings(max_examples=300, deadline=None)
@given(
    specs=st.lists(route_strategy, max_size=8),
    host=st.sampled_from(HOSTS),
    path=st.sampled_from(PATHS),
    method=st.sampled_from(METHODS),
    header_value=st.sampled_from([None, "1", "2"]),
)
def test_table_agrees_with_brute_force_reference(
    specs: list[tuple[str, str, list[str], tuple[str, str] | None, int]],
    host: str,
    path: str,
    method: str,
    header_value: str | None,
) -> None:
    routes = [
        route(
            f"r{index}",
            route_host,
            prefix,
            methods=methods,
            headers=[header] if header else [],
            priority=priority,
            order=index,
        )
        for index, (route_host, prefix, methods, header, priority) in enumerate(specs)
    ]
    headers: Headers = [(b"X-K", header_value.encode())] if header_value else []
    expected = reference(routes, host, path, method, headers)
    found = RouteTable(routes).match(host, path, method, headers)
    assert found is expected


@settings(max_examples=200, deadline=None)
@given(st.permutations([("/", 0), ("/a", 0), ("/a/b", 0), ("/b", 3)]))
def test_result_does_not_depend_on_input_order_when_no_ties(
    specs: list[tuple[str, int]],
) -> None:
    routes = [
        route(f"{prefix}@{priority}", prefix=prefix, priority=priority, order=index)
        for index, (prefix, priority) in enumerate(specs)
    ]
    table_ = RouteTable(routes)
    assert matched(table_, "h", "/a/b/c") == "/a/b@0"
    assert matched(table_, "h", "/b/c") == "/b@3"
    assert matched(table_, "h", "/a") == "/a@0"
    assert matched(table_, "h", "/zzz") == "/@0"
