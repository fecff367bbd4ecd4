"""The allow-list: every spelling of a forbidden address is refused, names are checked after their
one resolution, and the HTTP client connects only to the checked addresses.

No test depends on external DNS: names resolve through a resolver injected into the allow-list
(a dict), or through the machine's own ``localhost``.
"""

import asyncio
import socket

import pytest
from aiohttp import web

from activestorage.errors import RequestValidationError, StorageError
from activestorage.server.allowlist import AllowList, PinnedResolver, RefusedAddress
from activestorage.server.upstream import Target, Upstream, check_allowed

#: every spelling of 169.254.169.254 / 127.0.0.1 the C library (or IDNA) would turn into one
NON_CANONICAL = ["0xa9fea9fe", "0xa9.0xfe.0xa9.0xfe", "0251.0376.0251.0376", "169.254.43518",
                 "2852039166", "169.254.169.254 ", "0x7f000001", "0x7f.1", "127.1", "0177.0.0.1",
                 "127.000.000.001", "\uff11\uff12\uff17.\uff10.\uff10.\uff11",
                 "\uff11\uff16\uff19.\uff12\uff15\uff14.\uff11\uff16\uff19.\uff12\uff15\uff14"]


@pytest.mark.parametrize("host", NON_CANONICAL)
@pytest.mark.parametrize("allow", [("*",), ("*", "127.0.0.1", "169.254.169.254")])
def test_non_canonical_address_spellings_are_refused(host, allow):
    with pytest.raises((RequestValidationError, StorageError)) as e:
        check_allowed(f"http://{host}/latest/meta-data/", allow)
    assert getattr(e.value, "status", 400) in (400, 403)
    if isinstance(e.value, RequestValidationError):
        assert e.value.field == "url"


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/x", "http://[::ffff:169.254.169.254]/x", "http://[::ffff:a9fe:a9fe]/x",
    "http://[fe80::1]/x", "http://[fd00:ec2::254]/x", "http://100.100.100.200/x",
    "http://127.0.0.1/x", "http://[::1]/x", "http://[::ffff:127.0.0.1]/x", "http://10.0.0.1/x",
    "http://192.168.1.1/x", "http://172.16.0.1/x", "http://0.0.0.0/x", "http://[::]/x",
    "http://metadata.google.internal/x", "http://metadata.google.internal./x",
    "http://METADATA.Google.Internal/x"])
def test_wildcard_never_covers_special_addresses(url):
    with pytest.raises(StorageError) as e:
        check_allowed(url, ("*",))
    assert e.value.status == 403 and "allow-list" in str(e.value)


@pytest.mark.parametrize("url", ["http://169.254.169.254\\@127.0.0.1/", "http://a\\b/x",
                                 "http://user:pw@127.0.0.1/x", "http://127.0.0.1%2f@x/",
                                 "http://[fe80::1%25eth0]/x", "http://exa mple.org/x",
                                 "http://127.0.0.1:0/x", "http://\ud800/x", "http://h/\ud800"])
def test_ambiguous_urls_are_a_400_naming_the_field(url):
    with pytest.raises(RequestValidationError) as e:
        check_allowed(url, ("*", "127.0.0.1"), "source")
    assert e.value.field == "source"


def test_names_compare_case_insensitively_without_trailing_dot():
    for url in ("http://LOCALHOST./x", "http://localhost/x", "http://LocalHost:80/x"):
        check_allowed(url, ("localhost",))
    check_allowed("http://s3.example.org/x", ("S3.Example.Org.:80",))
    check_allowed("http://[0:0:0:0:0:0:0:1]/x", ("::1",))  # canonical ipaddress forms
    with pytest.raises(StorageError):
        check_allowed("http://localhost.evil.org/x", ("localhost",))


def fake_dns(table):
    async def resolve(host, port):
        if host not in table:
            raise socket.gaierror(f"no such name {host}")
        return table[host]
    return resolve


DNS = {"169.254.169.254.nip.io": ["169.254.169.254"], "public.test": ["93.184.216.34"],
       "mixed.test": ["93.184.216.34", "10.1.2.3"], "mapped.test": ["::ffff:169.254.169.254"],
       "loop.test": ["127.0.0.1"], "v6link.test": ["fe80::1%2"]}


@pytest.mark.parametrize("host,ok", [("169.254.169.254.nip.io", False), ("public.test", True),
                                     ("mixed.test", False), ("mapped.test", False),
                                     ("loop.test", False), ("v6link.test", False)])
def test_every_resolved_address_is_checked(host, ok):
    allow = AllowList(("*",), resolve=fake_dns(DNS))

    async def main():
        ep = allow.check_url(f"http://{host}/x")
        return await allow.addresses(ep)
    if ok:
        assert asyncio.run(main()) == DNS[host]
    else:
        with pytest.raises(StorageError) as e:
            asyncio.run(main())
        assert e.value.status == 403 and host in str(e.value)


def test_a_listed_name_or_address_may_be_special():
    async def main(entries, host):
        allow = AllowList(entries, resolve=fake_dns(DNS))
        return await allow.addresses(allow.check_url(f"http://{host}/x"))
    assert asyncio.run(main(("loop.test",), "loop.test")) == ["127.0.0.1"]
    assert asyncio.run(main(("*", "127.0.0.1"), "loop.test")) == ["127.0.0.1"]
    with pytest.raises(StorageError):
        asyncio.run(main(("*", "127.0.0.1:9000"), "loop.test"))  # listed for another port


def test_resolution_is_cached_with_its_checked_addresses():
    calls = []

    async def resolve(host, port):
        calls.append(host)
        return ["93.184.216.34"] if len(calls) == 1 else ["169.254.169.254"]  # rebinding

    async def main():
        allow = AllowList(("*",), resolve=resolve, ttl=60)
        ep = allow.check_url("http://rebind.test/x")
        first = await allow.addresses(ep)
        again = await PinnedResolver(allow).resolve("REBIND.test.", 80, socket.AF_UNSPEC)
        allow.ttl = 0
        allow._cache.clear()
        with pytest.raises(RefusedAddress):
            await PinnedResolver(allow).resolve("rebind.test", 80, socket.AF_UNSPEC)
        return first, again
    first, again = asyncio.run(main())
    assert first == ["93.184.216.34"] and [a["host"] for a in again] == first
    assert calls == ["rebind.test", "rebind.test"]


def test_the_client_connects_only_to_the_checked_address():
    """A name the allow-list maps to a loopback store is fetched from exactly that address; a
    name whose (one) resolution is refused is never connected to (403, not 502)."""
    async def main():
        hits = []

        async def h(request):
            hits.append(request.headers.get("host"))
            return web.Response(status=206, body=b"abcd",
                                headers={"content-range": "bytes 0-3/4"})
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", h)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        table = {"store.test": ["127.0.0.1"], "evil.test": ["169.254.169.254"]}
        up = Upstream(allow=AllowList(("store.test", "*"), resolve=fake_dns(table)))
        try:
            data = await up.read(Target("http", f"http://Store.Test.:{port}/o"), 0, 4,
                                 max_bytes=10)
            with pytest.raises(StorageError) as e:
                await up.read(Target("http", f"http://evil.test:{port}/o"), 0, 4, max_bytes=10)
            return data, hits, e.value
        finally:
            await up.aclose()
            await runner.cleanup()
    data, hits, err = asyncio.run(main())
    assert data == b"abcd" and len(hits) == 1
    assert err.status == 403 and "169.254.169.254" in str(err)


def test_pinned_resolver_answers_with_checked_addresses_only():
    """``localhost`` resolves through the system's hosts file; ``*`` alone refuses it."""
    out = asyncio.run(PinnedResolver(AllowList(("localhost",))).resolve("localhost", 80, 0))
    assert out and all(a["host"] in ("127.0.0.1", "::1") for a in out)
    with pytest.raises(RefusedAddress):
        asyncio.run(PinnedResolver(AllowList(("*",))).resolve("localhost", 80, 0))


def test_unencoded_keys_are_percent_encoded_once():
    """The API sends keys unencoded; the request line must not carry raw spaces or quotes, and a
    URL that is already encoded is left alone (so encoding twice changes nothing)."""
    from activestorage.server.allowlist import encode_url

    assert encode_url('http://h:1/b/a b[1],"q\'.nc') == "http://h:1/b/a%20b%5B1%5D,%22q'.nc"
    for url in ("http://h/a%20b", "http://[::1]:9/x?y=1", "http://h"):
        assert encode_url(url) == url
    assert encode_url(encode_url("http://h/é x")) == "http://h/%C3%A9%20x"
