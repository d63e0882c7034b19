"""The config schema and loader: field paths in errors, cross-references, env and file overlays."""

from pathlib import Path
from typing import Any

import pytest

from loadweaver.config import Config, ConfigError, load_config, load_default_config
from loadweaver.config.loader import build_config
from tests.support.nodes import write_config

pytestmark = pytest.mark.usefixtures("clean_environment")


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        build_config(data, "test.yaml")
    return caught.value.problems


def one_problem(data: dict[str, Any]) -> str:
    problems = problems_of(data)
    assert len(problems) == 1, problems
    return problems[0]


def pool_with(*backends: dict[str, Any], **pool: Any) -> dict[str, Any]:
    return {"pools": {"app": {"backends": list(backends), **pool}}}


BASE: dict[str, Any] = {
    "listeners": [{"name": "web", "bind": "127.0.0.1:8000"}],
    "pools": {"app": {"backends": [{"name": "a", "url": "http://127.0.0.1:9001"}]}},
    "routes": [{"name": "default", "pool": "app"}],
    "admin": {"bind": "127.0.0.1:9000"},
    "limits": {"max_header_bytes": "16KiB", "max_url_bytes": "4KiB"},
    "cluster": {"name": "blue", "redis_url": "redis://yaml.invalid:6379/0"},
}


@pytest.fixture
def base_file(tmp_path: Path) -> Path:
    """`BASE` as `config.yaml` in the (working) test directory."""
    return write_config(tmp_path / "config.yaml", BASE)


# ---- a valid config ----


def test_a_complete_config_is_parsed_with_units() -> None:
    config = build_config(
        {
            **BASE,
            "node": {"id": "n1", "shutdown_grace": "2m"},
            "listeners": [
                {
                    "name": "web",
                    "bind": "127.0.0.1:8000",
                    "timeouts": {"request_header": "500ms", "idle": 30, "tunnel_idle": "1h"},
                }
            ],
            "security": {"trusted_proxies": ["10.0.0.0/8", "192.168.1.1", "::1", "fd00::/8"]},
            "logging": {"level": "WARNING", "format": "json"},
        },
        "test.yaml",
    )
    assert isinstance(config, Config)
    assert config.node.shutdown_grace == 120.0
    timeouts = config.listeners[0].timeouts
    assert (timeouts.request_header, timeouts.idle, timeouts.tunnel_idle) == (0.5, 30.0, 3600.0)
    assert config.limits.max_header_bytes == 16 * 1024
    assert config.limits.max_url_bytes == 4 * 1024
    assert config.logging.level == "warning"
    assert config.pools["app"].backends[0].weight == 1
    assert config.routes[0].match.host == "*"
    assert config.routes[0].match.path_prefix == "/"


def test_config_is_frozen() -> None:
    config = build_config(BASE, "test.yaml")
    with pytest.raises(ValueError, match="frozen"):
        config.admin.bind = "127.0.0.1:1"


# ---- field paths in errors ----


def test_bad_backend_url_names_its_field_path() -> None:
    problem = one_problem(pool_with({"name": "a", "url": "ftp://127.0.0.1:21"}))
    assert problem.startswith("pools.app.backends.0.url:")
    assert "http://" in problem


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9001/path",
        "http://user:pw@127.0.0.1:9001",
        "http://:9001",
        "127.0.0.1:9001",
        "http://127.0.0.1:99999",
    ],
)
def test_invalid_backend_urls(url: str) -> None:
    problem = one_problem(
        pool_with({"name": "a", "url": "http://127.0.0.1:1"}, {"name": "b", "url": url})
    )
    assert problem.startswith("pools.app.backends.1.url:")


def test_missing_required_field_names_its_path() -> None:
    problem = one_problem(pool_with({"name": "a"}))
    assert problem == "pools.app.backends.0.url: this field is required"


def test_out_of_range_weight_names_its_path() -> None:
    problem = one_problem(pool_with({"name": "a", "url": "http://127.0.0.1:1", "weight": 300}))
    assert problem.startswith("pools.app.backends.0.weight:")


def test_bad_duration_names_its_path() -> None:
    problem = one_problem(
        {"listeners": [{"name": "web", "bind": "127.0.0.1:8000", "timeouts": {"idle": "soon"}}]}
    )
    assert problem.startswith("listeners.0.timeouts.idle:")
    assert "soon" in problem


def test_unknown_algorithm_names_its_path() -> None:
    problem = one_problem(pool_with(algorithm="least_magic"))
    assert problem.startswith("pools.app.algorithm:")
    assert "round_robin" in problem


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(
        {
            "listeners": [{"name": "web", "bind": "nowhere"}],
            "pools": {
                "app": {
                    "backends": [
                        {"name": "a", "url": "gopher://x:70"},
                        {"name": "b", "url": "http://x:1", "weight": -1},
                    ]
                }
            },
            "limits": {"max_header_bytes": "a lot"},
        }
    )
    locations = sorted(problem.split(":", 1)[0] for problem in problems)
    assert locations == [
        "limits.max_header_bytes",
        "listeners.0.bind",
        "pools.app.backends.0.url",
        "pools.app.backends.1.weight",
    ]


def test_config_error_text_names_the_source_and_counts_problems() -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(pool_with({"name": "a"}, {"name": "b"}), "/etc/lw.yaml")
    text = str(caught.value)
    lines = text.splitlines()
    assert lines[0] == "/etc/lw.yaml: invalid configuration (2 problem(s))"
    assert lines[1:] == [
        "  /etc/lw.yaml: pools.app.backends.0.url: this field is required",
        "  /etc/lw.yaml: pools.app.backends.1.url: this field is required",
    ]


# ---- unknown keys ----


@pytest.mark.parametrize(
    ("data", "location", "allowed"),
    [
        (
            {"poolz": {}},
            "poolz",
            "admin, alerts, cluster, limits, listeners, logging, metrics, node, pools, "
            "rate_limits, request_id, routes, security, traffic_patterns",
        ),
        (
            pool_with(backendz=[]),
            "pools.app.backendz",
            "algorithm, backends, circuit_breaker, connection_pool, health, panic_threshold, "
            "passive, retries, sticky, timeouts, tls",
        ),
        (
            pool_with({"name": "a", "url": "http://x:1", "wieght": 2}),
            "pools.app.backends.0.wieght",
            "backup, max_connections, name, slow_start, state, url, weight",
        ),
        (
            pool_with(tls={"verfy": False}),
            "pools.app.tls.verfy",
            "ca_file, server_name, verify",
        ),
        (
            {"listeners": [{"name": "w", "bind": "127.0.0.1:1", "timeouts": {"idel": 1}}]},
            "listeners.0.timeouts.idel",
            "idle, request_header, tunnel_idle",
        ),
        (
            {
                "listeners": [
                    {
                        "name": "w",
                        "bind": "127.0.0.1:1",
                        "tls": {"certificates": [{"cert_file": "c", "key_file": "k"}], "min": 1},
                    }
                ]
            },
            "listeners.0.tls.min",
            "certificates, min_version",
        ),
        (
            {
                "listeners": [
                    {
                        "name": "w",
                        "bind": "127.0.0.1:1",
                        "tls": {"certificates": [{"cert_file": "c", "key_file": "k", "ca": "x"}]},
                    }
                ]
            },
            "listeners.0.tls.certificates.0.ca",
            "cert_file, key_file",
        ),
        (
            {"routes": [{"name": "r", "pool": "app", "match": {"hosts": "a"}}], **pool_with()},
            "routes.0.match.hosts",
            "headers, host, methods, path_prefix",
        ),
    ],
)
def test_unknown_keys_list_the_allowed_keys(
    data: dict[str, Any], location: str, allowed: str
) -> None:
    problem = one_problem(data)
    assert problem == f"{location}: unknown key; allowed keys here: {allowed}"


# ---- uniqueness and cross references ----


def test_duplicate_backend_names_in_a_pool() -> None:
    problem = one_problem(
        pool_with({"name": "a", "url": "http://x:1"}, {"name": "a", "url": "http://x:2"})
    )
    assert problem.startswith("pools.app.backends")
    assert "'a'" in problem
    assert "twice" in problem


def test_same_backend_name_in_two_pools_is_fine() -> None:
    backend = {"name": "a", "url": "http://x:1"}
    config = build_config(
        {"pools": {"p1": {"backends": [backend]}, "p2": {"backends": [backend]}}}, "t"
    )
    assert set(config.pools) == {"p1", "p2"}


@pytest.mark.parametrize(
    ("listeners", "location", "named"),
    [
        (
            [{"name": "web", "bind": "127.0.0.1:8000"}, {"name": "web", "bind": "127.0.0.1:8001"}],
            "listeners.1.name:",
            "'web'",
        ),
        (
            [{"name": "a", "bind": "127.0.0.1:8000"}, {"name": "b", "bind": "127.0.0.1:8000"}],
            "listeners.1.bind:",
            "127.0.0.1:8000",
        ),
    ],
    ids=["names", "binds"],
)
def test_duplicate_listener(listeners: list[dict[str, str]], location: str, named: str) -> None:
    """The second listener with a name or a bind already taken is the one reported."""
    problem = one_problem({"listeners": listeners})
    assert problem.startswith(location)
    assert named in problem


def test_duplicate_route_names() -> None:
    problem = one_problem(
        {**pool_with(), "routes": [{"name": "r", "pool": "app"}, {"name": "r", "pool": "app"}]}
    )
    assert problem.startswith("routes.1.name:")


def test_route_to_unknown_pool() -> None:
    problem = one_problem(
        {
            "pools": {"app": {}, "api": {}},
            "routes": [{"name": "ok", "pool": "app"}, {"name": "bad", "pool": "nowhere"}],
        }
    )
    assert problem.startswith("routes.1.pool:")
    assert "'nowhere'" in problem
    assert "api, app" in problem


def test_route_without_any_pool_defined() -> None:
    problem = one_problem({"routes": [{"name": "r", "pool": "app"}]})
    assert problem.startswith("routes.0.pool:")
    assert "none defined" in problem


@pytest.mark.parametrize(
    "bind", ["nowhere", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "example.com:80", ":8080"]
)
def test_invalid_listener_binds(bind: str) -> None:
    problem = one_problem({"listeners": [{"name": "web", "bind": bind}]})
    assert problem.startswith("listeners.0.bind:")


@pytest.mark.parametrize("bind", ["127.0.0.1:8080", "[::1]:8080", "0.0.0.0:80", "localhost:8080"])
def test_valid_listener_binds(bind: str) -> None:
    config = build_config({"listeners": [{"name": "web", "bind": bind}]}, "t")
    assert config.listeners[0].bind == bind


def test_invalid_admin_bind() -> None:
    problem = one_problem({"admin": {"bind": "9090"}})
    assert problem.startswith("admin.bind:")


# ---- route hosts ----


@pytest.mark.parametrize(
    ("host", "stored"),
    [
        ("*", "*"),
        ("*.example.com", "*.example.com"),
        ("API.Example.COM", "api.example.com"),
        ("*.Example.com", "*.example.com"),
    ],
)
def test_valid_route_hosts(host: str, stored: str) -> None:
    config = build_config(
        {**pool_with(), "routes": [{"name": "r", "pool": "app", "match": {"host": host}}]}, "t"
    )
    assert config.routes[0].match.host == stored


@pytest.mark.parametrize("host", ["api.*.com", "*example.com", "*.*.com", "example.*", "**", "a*"])
def test_invalid_wildcard_hosts(host: str) -> None:
    problem = one_problem(
        {**pool_with(), "routes": [{"name": "r", "pool": "app", "match": {"host": host}}]}
    )
    assert problem.startswith("routes.0.match.host:")
    assert "*.example.com" in problem


def test_path_prefix_must_start_with_slash() -> None:
    problem = one_problem(
        {**pool_with(), "routes": [{"name": "r", "pool": "app", "match": {"path_prefix": "api"}}]}
    )
    assert problem.startswith("routes.0.match.path_prefix:")


def test_unknown_method_in_route() -> None:
    problem = one_problem(
        {**pool_with(), "routes": [{"name": "r", "pool": "app", "match": {"methods": ["FETCH"]}}]}
    )
    assert problem.startswith("routes.0.match.methods.0:")


# ---- trusted proxies ----


def test_valid_trusted_proxies() -> None:
    values = ["10.0.0.0/8", "192.168.1.1", "::1", "fd00::/8", "172.16.0.1/12"]
    config = build_config({"security": {"trusted_proxies": values}}, "t")
    assert config.security.trusted_proxies == values


@pytest.mark.parametrize("value", ["300.1.1.1", "10.0.0.0/33", "nope", "10.0.0.0/8/8", ""])
def test_invalid_trusted_proxies(value: str) -> None:
    problem = one_problem({"security": {"trusted_proxies": ["10.0.0.0/8", value]}})
    assert problem.startswith("security.trusted_proxies")
    assert repr(value) in problem
    assert "CIDR" in problem


# ---- environment overrides ----


def test_environment_overrides_yaml_values(
    monkeypatch: pytest.MonkeyPatch, base_file: Path
) -> None:
    monkeypatch.setenv("LOADWEAVER_CLUSTER__REDIS_URL", "redis://env.invalid:6380/1")
    monkeypatch.setenv("LOADWEAVER_LIMITS__MAX_HEADER_BYTES", "64KiB")
    monkeypatch.setenv("LOADWEAVER_ADMIN__BIND", "127.0.0.1:9191")
    config = load_config(base_file)
    assert config.cluster.redis_url == "redis://env.invalid:6380/1"
    assert config.limits.max_header_bytes == 64 * 1024
    assert config.admin.bind == "127.0.0.1:9191"
    # Siblings the environment does not name keep their YAML values.
    assert config.cluster.name == "blue"
    assert config.limits.max_url_bytes == 4 * 1024
    assert config.pools["app"].backends[0].name == "a"


def test_environment_fills_values_the_yaml_leaves_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write_config(tmp_path / "config.yaml", {"pools": {"app": {}}})
    monkeypatch.setenv("LOADWEAVER_NODE__SHUTDOWN_GRACE", "2s")
    monkeypatch.setenv("LOADWEAVER_LOGGING__LEVEL", "debug")
    config = load_config(path)
    assert config.node.shutdown_grace == 2.0
    assert config.logging.level == "debug"


def test_invalid_environment_value_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, base_file: Path
) -> None:
    monkeypatch.setenv("LOADWEAVER_LIMITS__MAX_HEADER_BYTES", "lots")
    with pytest.raises(ConfigError) as caught:
        load_config(base_file)
    assert any(p.startswith("limits.max_header_bytes:") for p in caught.value.problems)


def test_dotenv_file_in_the_working_directory_is_read(tmp_path: Path, base_file: Path) -> None:
    (tmp_path / ".env").write_text(
        "LOADWEAVER_ADMIN__BIND=127.0.0.1:9292\nLOADWEAVER_LIMITS__MAX_URL_BYTES=2KiB\n"
    )
    config = load_config(base_file)
    assert config.admin.bind == "127.0.0.1:9292"
    assert config.limits.max_url_bytes == 2 * 1024
    assert config.limits.max_header_bytes == 16 * 1024


def test_process_environment_wins_over_dotenv(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, base_file: Path
) -> None:
    (tmp_path / ".env").write_text("LOADWEAVER_ADMIN__BIND=127.0.0.1:9292\n")
    monkeypatch.setenv("LOADWEAVER_ADMIN__BIND", "127.0.0.1:9393")
    assert load_config(base_file).admin.bind == "127.0.0.1:9393"


def test_dotenv_variables_for_other_programs_are_ignored(tmp_path: Path, base_file: Path) -> None:
    """A `.env` is shared with other tools (docker compose, the app): their keys are not ours."""
    (tmp_path / ".env").write_text(
        "POSTGRES_PASSWORD=secret\nLOADWEAVER_ADMIN__BIND=127.0.0.1:9292\nDEBUG=1\n"
    )
    config = load_config(base_file)
    assert config.admin.bind == "127.0.0.1:9292"


def test_environment_layer_file_is_merged_over_the_base(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, base_file: Path
) -> None:
    write_config(
        tmp_path / "config.production.yaml",
        {
            "limits": {"max_url_bytes": "2KiB"},
            "pools": {"app": {"backends": [{"name": "p", "url": "http://127.0.0.1:9101"}]}},
        },
    )
    write_config(tmp_path / "config.staging.yaml", {"admin": {"bind": "127.0.0.1:1"}})
    monkeypatch.setenv("LOADWEAVER_ENV", "production")
    config = load_config(base_file)
    assert config.limits.max_url_bytes == 2 * 1024
    assert config.limits.max_header_bytes == 16 * 1024  # deep merge keeps siblings
    assert [b.name for b in config.pools["app"].backends] == ["p"]  # lists are replaced
    assert config.admin.bind == "127.0.0.1:9000"  # the staging layer is not read
    assert config.cluster.name == "blue"


def test_environment_layer_is_optional(monkeypatch: pytest.MonkeyPatch, base_file: Path) -> None:
    monkeypatch.setenv("LOADWEAVER_ENV", "production")
    assert load_config(base_file).limits.max_url_bytes == 4 * 1024


def test_environment_variables_win_over_the_layer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, base_file: Path
) -> None:
    write_config(tmp_path / "config.production.yaml", {"admin": {"bind": "127.0.0.1:9494"}})
    monkeypatch.setenv("LOADWEAVER_ENV", "production")
    monkeypatch.setenv("LOADWEAVER_ADMIN__BIND", "127.0.0.1:9595")
    assert load_config(base_file).admin.bind == "127.0.0.1:9595"


def test_layer_errors_are_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, base_file: Path
) -> None:
    (tmp_path / "config.production.yaml").write_text("limits: [\n")
    monkeypatch.setenv("LOADWEAVER_ENV", "production")
    with pytest.raises(ConfigError) as caught:
        load_config(base_file)
    assert caught.value.source.endswith("config.production.yaml")


def test_environ_argument_selects_the_layer(tmp_path: Path, base_file: Path) -> None:
    write_config(tmp_path / "config.production.yaml", {"limits": {"max_url_bytes": 512}})
    assert load_config(base_file, {"LOADWEAVER_ENV": "production"}).limits.max_url_bytes == 512
    assert load_config(base_file, {}).limits.max_url_bytes == 4 * 1024


# ---- file problems ----


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.yaml")
    assert caught.value.source.endswith("absent.yaml")
    assert caught.value.problems == ["the file does not exist"]


def test_yaml_syntax_error_has_a_line_number(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("pools:\n  app:\n    backends: [\n      {name: a\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    assert "line " in problem
    assert "not valid YAML" in problem


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "mapping" in caught.value.problems[0]


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("# nothing yet\n")
    config = load_config(path)
    assert config.listeners == []
    assert config.pools == {}
    assert config.admin.bind == "127.0.0.1:9090"


# ---- the built-in default ----


def test_default_config_shape() -> None:
    config = load_default_config()
    assert [(listener.name, listener.bind) for listener in config.listeners] == [
        ("web", "127.0.0.1:8080")
    ]
    assert config.listeners[0].tls is None
    assert config.admin.bind == "127.0.0.1:9090"
    assert config.admin.enabled is True
    assert list(config.pools) == ["default"]
    assert config.pools["default"].backends == []
    assert [
        (route.name, route.pool, route.match.host, route.match.path_prefix)
        for route in config.routes
    ] == [("default", "default", "*", "/")]
    assert config.cluster.redis_url is None
    assert config.node.shutdown_grace == 30.0
    assert config.limits.max_header_bytes == 32 * 1024
