"""The Host allowlist (issue 33, DNS rebinding): a key-less server on loopback answers only to loopback names by
default (`clipforge serve`), any Host elsewhere unless told; a foreign Host is a 400 in the JSON error shape,
before the API key is even looked at."""
import pytest
import uvicorn
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from clipforge.cli import main
from clipforge.errors import UsageError
from clipforge.serve.app import create_app
from clipforge.serve.hosts import LOOPBACK_HOSTS, HostAllowlist, allowed_host_names, default_allowed_hosts
from clipforge.serve.transport import GuardedProtocol


async def _ok(request):
    return JSONResponse({"ok": True})


def _client(allowed) -> TestClient:
    return TestClient(HostAllowlist(Starlette(routes=[Route("/", _ok)]), allowed))


def _status(client, host) -> int:
    return client.get("/", headers={"Host": host}).status_code


@pytest.mark.parametrize("bind, expected", [
    ("127.0.0.1", LOOPBACK_HOSTS), ("localhost", LOOPBACK_HOSTS), ("::1", LOOPBACK_HOSTS),
    ("[::1]", LOOPBACK_HOSTS), ("127.0.0.2", LOOPBACK_HOSTS + ("127.0.0.2",)),
    ("0.0.0.0", None), ("::", None), ("192.168.1.20", None), ("search.example.org", None)])
def test_default_allowlist_is_the_loopback_names_for_loopback_binds_only(bind, expected):
    assert default_allowed_hosts(bind) == expected


def test_loopback_names_with_any_port_pass_and_others_get_400():
    c = _client(default_allowed_hosts("127.0.0.1"))
    for host in ("localhost", "localhost:8000", "LocalHost.:8000", "127.0.0.1", "127.0.0.1:1", "[::1]:8000",
                 "[::1]"):
        assert _status(c, host) == 200, host
    for host in ("attacker.example", "attacker.example:8000", "localhost.attacker.example", "127.0.0.2:8000",
                 "localhost:80:80", "localhost:http", "[::1", "", "user@localhost"):
        r = c.get("/", headers={"Host": host})
        assert r.status_code == 400, host
        assert r.json()["error"]["status"] == 400 and "localhost" in r.json()["error"]["message"]


def test_wildcards_and_explicit_names():
    c = _client(["search.example.org", "*.corp.example"])
    assert [_status(c, h) for h in ("search.example.org", "SEARCH.example.org:443", "a.corp.example",
                                     "a.b.corp.example:8443")] == [200] * 4
    assert [_status(c, h) for h in ("example.org", "corp.example", "evilcorp.example", "localhost")] == [400] * 4
    assert _status(_client(["*"]), "anything.at.all:1") == 200


@pytest.mark.parametrize("bad", ["localhost:8000", "", "a b", "http://x", [], "localhost", [None]])
def test_bad_allowlists_are_refused_naming_the_parameter(bad):
    with pytest.raises(UsageError, match="allowed_hosts"):
        allowed_host_names(bad)


def test_the_app_refuses_a_foreign_host_before_the_api_key(photos_index):
    app = create_app(photos_index, api_key="k", allowed_hosts=["localhost", "127.0.0.1"], reload_interval=None)
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    assert c.get("/healthz").status_code == 200
    assert c.post("/search", json={"text": "a cat"}).status_code == 401  # an allowed Host: the key is next
    for path, method in (("/healthz", "get"), ("/search", "post"), ("/", "get"), ("/openapi.json", "get")):
        r = getattr(c, method)(path, headers={"Host": "rebound.attacker.example"})
        assert r.status_code == 400 and r.json()["error"]["status"] == 400, path
    with pytest.raises(UsageError, match="allowed_hosts"):
        create_app(photos_index, allowed_hosts=["localhost:8000"], reload_interval=None)


@pytest.fixture
def served(monkeypatch):
    """`clipforge serve ARGS` without a server: what it would hand to uvicorn.run (the app and its options)."""
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: calls.append((target, kw)))

    def serve(*args):
        assert main(["serve", *map(str, args), "--reload-interval", "0"]) == 0
        return calls[-1]
    return serve


def test_cli_default_is_on_for_loopback_and_off_elsewhere(served, photos_index):
    app, kw = served(photos_index)
    c = TestClient(app, base_url="http://localhost:8000")
    assert c.get("/healthz").status_code == 200
    assert c.get("/healthz", headers={"Host": "rebound.attacker.example:8000"}).status_code == 400
    app, _ = served(photos_index, "--host", "0.0.0.0", "--api-key", "k")
    assert TestClient(app).get("/healthz", headers={"Host": "search.example.org"}).status_code == 200
    app, _ = served(photos_index, "--host", "0.0.0.0", "--api-key", "k", "--allowed-hosts", "search.example.org")
    c = TestClient(app)
    assert c.get("/healthz", headers={"Host": "search.example.org:443"}).status_code == 200
    assert c.get("/healthz", headers={"Host": "10.0.0.5"}).status_code == 400
    app, _ = served(photos_index, "--allowed-hosts", "*")
    assert TestClient(app).get("/healthz", headers={"Host": "anything"}).status_code == 200


def test_cli_hands_uvicorn_the_transport_guard(served, photos_index):
    _, kw = served(photos_index, "--head-timeout", "3", "--body-timeout", "4.5", "--max-connections-per-ip", "0",
                   "--http", "h11")
    assert kw["http"] == GuardedProtocol(head_timeout_s=3.0, body_timeout_s=4.5, max_connections_per_ip=0)
    _, kw = served(photos_index)  # loopback: every client shares one address, so no per-address cap
    assert kw["http"] == GuardedProtocol(max_connections_per_ip=0)
    _, kw = served(photos_index, "--host", "0.0.0.0", "--api-key", "k")
    assert kw["http"] == GuardedProtocol()  # the defaults: 10 s, 10 s, 16 per address


@pytest.mark.parametrize("args", [["--allowed-hosts", "localhost:8000"], ["--allowed-hosts", ","]])
def test_cli_refuses_a_bad_allowlist_in_one_line(photos_index, capsys, args):
    assert main(["serve", str(photos_index), *args]) == 2
    err = capsys.readouterr().err
    assert "--allowed-hosts" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("args", [["--head-timeout", "0"], ["--body-timeout", "inf"],
                                  ["--max-connections-per-ip", "-1"], ["--max-concurrent-decodes", "0"]])
def test_cli_refuses_bad_transport_options(photos_index, capsys, args):
    with pytest.raises(SystemExit):
        main(["serve", str(photos_index), *args])
    assert args[0] in capsys.readouterr().err
