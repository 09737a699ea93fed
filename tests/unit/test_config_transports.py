"""config.yaml's dot, doh, proxy_protocol and tls:// upstreams: what they read as, and each problem as one line."""

from __future__ import annotations

import ipaddress

import pytest

from resolver.control import config
from resolver.dataplane.upstream import UpstreamAddress
from resolver.yamlfile import ConfigError
from tests.support.testca import make_ca

UPSTREAMS = 'upstreams: ["192.0.2.1:53"]\n'


def load(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return config.load_config(path)


def problems(tmp_path, text):
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, text)
    return (
        str(raised.value)
        .replace(str(tmp_path / "config.yaml"), "config.yaml")
        .replace(str(tmp_path), "DIR")
        .splitlines()
    )


@pytest.fixture
def certificate(tmp_path):
    make_ca(tmp_path / "tls").issue()
    return "cert_file: tls/server.pem, key_file: tls/server.key"


def test_encrypted_listeners_read_with_their_default_ports_and_absolute_files(tmp_path, certificate):
    cfg = load(
        tmp_path,
        UPSTREAMS + f'dot: {{listen: ["127.0.0.1", "[::1]:8853"], {certificate}}}\n'
        f'doh: {{listen: ["0.0.0.0"], {certificate}}}\n',
    )
    assert cfg.dot == config.TlsListenConfig(
        (UpstreamAddress("127.0.0.1", 853), UpstreamAddress("::1", 8853)),
        tmp_path / "tls" / "server.pem",
        tmp_path / "tls" / "server.key",
    )
    assert cfg.doh is not None and cfg.doh.listen == (UpstreamAddress("0.0.0.0", 443),)
    assert load(tmp_path, UPSTREAMS).dot is None and load(tmp_path, UPSTREAMS).proxy_protocol is None


def test_encrypted_listener_problems_name_their_key(tmp_path, certificate):
    (tmp_path / "tls" / "other.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    assert problems(
        tmp_path,
        UPSTREAMS
        + "dot:\n  cert_file: tls/server.pem\n  port: 853\n"
        + 'doh:\n  listen: ["127.0.0.1:99999"]\n  cert_file: tls/missing.pem\n  key_file: tls/server.key\n',
    ) == [
        "config.yaml:2: dot.listen: missing required key",
        "config.yaml:2: dot: missing required key 'key_file'",
        "config.yaml:4: dot.port: unknown key 'port' (known keys: cert_file, key_file, listen)",
        "config.yaml:6: doh.listen[0]: bad address '127.0.0.1:99999': port must be 0-65535",
        "config.yaml:7: doh.cert_file: cannot read DIR/tls/missing.pem: No such file or directory",
    ]
    assert problems(
        tmp_path, UPSTREAMS + 'dot: {listen: ["127.0.0.1"], cert_file: tls/server.pem, key_file: tls/server.pem}\n'
    ) == ["config.yaml:2: dot.key_file: DIR/tls/server.pem holds no PEM private key"]
    assert problems(
        tmp_path, UPSTREAMS + 'dot: {listen: ["127.0.0.1"], cert_file: tls/other.pem, key_file: tls/server.key}\n'
    ) == ["config.yaml:2: dot.cert_file: cannot load DIR/tls/other.pem with DIR/tls/server.key: not valid PEM"]


def test_a_key_of_another_certificate_is_named_as_such(tmp_path, certificate):
    make_ca(tmp_path / "tls2").issue()
    text = UPSTREAMS + 'doh: {listen: ["127.0.0.1"], cert_file: tls/server.pem, key_file: tls2/server.key}\n'
    assert problems(tmp_path, text) == [
        "config.yaml:2: doh.key_file: the key DIR/tls2/server.key does not belong to the certificate DIR/tls/server.pem"
    ]


def test_trusted_front_ends_are_networks(tmp_path):
    cfg = load(tmp_path, UPSTREAMS + 'proxy_protocol: {trusted: ["10.0.0.0/8", "2001:db8::1/128", "192.0.2.7"]}\n')
    assert cfg.proxy_protocol == config.ProxyProtocolConfig(
        (
            ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_network("2001:db8::1/128"),
            ipaddress.ip_network("192.0.2.7/32"),
        )
    )
    assert problems(tmp_path, UPSTREAMS + 'proxy_protocol: {trusted: ["10.0.0.1/8", "dnsdist"], via: x}\n') == [
        "config.yaml:2: proxy_protocol.trusted[0]: expected a network such as 192.0.2.0/24 or 2001:db8::/32: "
        "10.0.0.1/8 has host bits set",
        "config.yaml:2: proxy_protocol.trusted[1]: expected a network such as 192.0.2.0/24 or 2001:db8::/32: "
        "'dnsdist' does not appear to be an IPv4 or IPv6 network",
        "config.yaml:2: proxy_protocol.via: unknown key 'via' (known keys: trusted)",
    ]
    assert problems(tmp_path, UPSTREAMS + "proxy_protocol: {trusted: []}\n") == [
        "config.yaml:2: proxy_protocol.trusted: at least one network is needed"
    ]
    assert problems(tmp_path, UPSTREAMS + "proxy_protocol: {}\n") == [
        "config.yaml:2: proxy_protocol.trusted: missing required key: the networks of the load balancers or "
        "resolvers to believe"
    ]


def test_tls_upstreams_carry_the_name_to_verify(tmp_path):
    cfg = load(
        tmp_path,
        'upstreams: ["tls://1.1.1.1:853#cloudflare-dns.com", "tls://[2620:fe::fe]#DNS.Quad9.net", "tls://9.9.9.9", '
        '"8.8.8.8"]\n',
    )
    assert cfg.upstreams == (
        UpstreamAddress("1.1.1.1", 853, "cloudflare-dns.com"),
        UpstreamAddress("2620:fe::fe", 853, "dns.quad9.net"),
        UpstreamAddress("9.9.9.9", 853, "9.9.9.9"),
        UpstreamAddress("8.8.8.8", 53),
    )
    assert [str(u) for u in cfg.upstreams] == [
        "tls://1.1.1.1:853#cloudflare-dns.com",
        "tls://[2620:fe::fe]:853#dns.quad9.net",
        "tls://9.9.9.9:853",
        "8.8.8.8:53",
    ]
    assert problems(tmp_path, 'upstreams: ["tls://1.1.1.1#not a name", "tls://dns.google", "tls://1.1.1.1:0"]\n') == [
        "config.yaml:1: upstreams[0]: bad upstream 'tls://1.1.1.1#not a name': 'not a name' is not a host name "
        "(expected tls://address:port#name)",
        "config.yaml:1: upstreams[1]: bad address 'dns.google': 'dns.google' is not an IP address",
        "config.yaml:1: upstreams[2]: 'tls://1.1.1.1:0': port 0 is not a server's port",
    ]
    assert problems(tmp_path, UPSTREAMS + 'listen: ["tls://127.0.0.1"]\n')[0].startswith(
        "config.yaml:2: listen[0]: bad address"
    )
