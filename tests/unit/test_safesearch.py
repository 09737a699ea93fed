"""safesearch: the shipped table (Google ccTLDs, YouTube modes, Bing, DuckDuckGo, engines without a safe mode)."""

import pytest

from resolver.filtering import safesearch
from resolver.filtering.safesearch import YouTubeMode
from resolver.yamlfile import ConfigError

TABLE = safesearch.default_table()

# https://www.google.com/supported_domains (each is served as www.<domain> too).
# fmt: off
GOOGLE_DOMAINS = ["google.com", "google.ad", "google.ae", "google.com.af", "google.com.ag", "google.com.ai", "google.al", "google.am", "google.co.ao", "google.com.ar", "google.as", "google.at", "google.com.au", "google.az", "google.ba", "google.com.bd", "google.be", "google.bf", "google.bg", "google.com.bh", "google.bi", "google.bj", "google.com.bn", "google.com.bo", "google.com.br", "google.bs", "google.bt", "google.co.bw", "google.by", "google.com.bz", "google.ca", "google.cd", "google.cf", "google.cg", "google.ch", "google.ci", "google.co.ck", "google.cl", "google.cm", "google.cn", "google.com.co", "google.co.cr", "google.com.cu", "google.cv", "google.com.cy", "google.cz", "google.de", "google.dj", "google.dk", "google.dm", "google.com.do", "google.dz", "google.com.ec", "google.ee", "google.com.eg", "google.es", "google.com.et", "google.fi", "google.com.fj", "google.fm", "google.fr", "google.ga", "google.ge", "google.gg", "google.com.gh", "google.com.gi", "google.gl", "google.gm", "google.gp", "google.gr", "google.com.gt", "google.gy", "google.com.hk", "google.hn", "google.hr", "google.ht", "google.hu", "google.co.id", "google.ie", "google.co.il", "google.im", "google.co.in", "google.iq", "google.is", "google.it", "google.je", "google.com.jm", "google.jo", "google.co.jp", "google.co.ke", "google.com.kh", "google.ki", "google.kg", "google.co.kr", "google.com.kw", "google.kz", "google.la", "google.com.lb", "google.li", "google.lk", "google.co.ls", "google.lt", "google.lu", "google.lv", "google.com.ly", "google.co.ma", "google.md", "google.me", "google.mg", "google.mk", "google.ml", "google.com.mm", "google.mn", "google.ms", "google.com.mt", "google.mu", "google.mv", "google.mw", "google.com.mx", "google.com.my", "google.co.mz", "google.com.na", "google.com.nf", "google.com.ng", "google.com.ni", "google.ne", "google.nl", "google.no", "google.com.np", "google.nr", "google.nu", "google.co.nz", "google.com.om", "google.com.pa", "google.com.pe", "google.com.pg", "google.com.ph", "google.com.pk", "google.pl", "google.pn", "google.com.pr", "google.ps", "google.pt", "google.com.py", "google.com.qa", "google.ro", "google.ru", "google.rw", "google.com.sa", "google.com.sb", "google.sc", "google.se", "google.com.sg", "google.sh", "google.si", "google.sk", "google.com.sl", "google.sn", "google.so", "google.sm", "google.sr", "google.st", "google.com.sv", "google.td", "google.tg", "google.co.th", "google.com.tj", "google.tk", "google.tl", "google.tm", "google.tn", "google.to", "google.com.tr", "google.tt", "google.com.tw", "google.co.tz", "google.com.ua", "google.co.ug", "google.co.uk", "google.com.uy", "google.co.uz", "google.com.vc", "google.co.ve", "google.vg", "google.co.vi", "google.com.vn", "google.vu", "google.ws", "google.rs", "google.co.za", "google.co.zm", "google.co.zw", "google.cat"]  # noqa: E501
# fmt: on


@pytest.mark.parametrize("domain", GOOGLE_DOMAINS)
def test_every_google_search_domain_is_rewritten(domain):
    rewrites = TABLE.rewrites_for(YouTubeMode.MODERATE)
    assert rewrites[domain] == "forcesafesearch.google.com"
    assert rewrites[f"www.{domain}"] == "forcesafesearch.google.com"
    assert TABLE.engine_of(f"www.{domain}") == "google"


@pytest.mark.parametrize(
    "host",
    [
        "mail.google.com",
        "drive.google.com",
        "maps.google.com.vn",
        "forcesafesearch.google.com",
        "googleapis.com",
        "youtube.com",
        "bing.com",
        "images.google.com.vn",
    ],
)
def test_other_hosts_are_not_rewritten(host):
    for mode in YouTubeMode:
        assert host not in TABLE.rewrites_for(mode)


@pytest.mark.parametrize(
    ("host", "engine", "target"),
    [
        ("www.bing.com", "bing", "strict.bing.com"),
        ("edgeservices.bing.com", "bing", "strict.bing.com"),
        ("duckduckgo.com", "duckduckgo", "safe.duckduckgo.com"),
        ("www.duckduckgo.com", "duckduckgo", "safe.duckduckgo.com"),
        ("start.duckduckgo.com", "duckduckgo", "safe.duckduckgo.com"),
        ("search.brave.com", "brave", "forcesafe.search.brave.com"),
        ("www.ecosia.org", "ecosia", "strict-safe-search.ecosia.org"),
        ("pixabay.com", "pixabay", "safesearch.pixabay.com"),
    ],
)
def test_other_engines(host, engine, target):
    assert TABLE.engine_of(host) == engine
    for mode in YouTubeMode:
        assert TABLE.rewrites_for(mode)[host] == target


YOUTUBE_HOSTS = [
    "www.youtube.com",
    "m.youtube.com",
    "youtubei.googleapis.com",
    "youtube.googleapis.com",
    "www.youtube-nocookie.com",
]


@pytest.mark.parametrize(
    ("mode", "target"),
    [
        (YouTubeMode.MODERATE, "restrictmoderate.youtube.com"),
        (YouTubeMode.STRICT, "restrict.youtube.com"),
        (YouTubeMode.OFF, None),
    ],
)
def test_youtube_modes(mode, target):
    rewrites = TABLE.rewrites_for(mode)
    assert sorted(TABLE.youtube_hosts) == sorted(YOUTUBE_HOSTS)
    for host in YOUTUBE_HOSTS:
        assert rewrites.get(host) == target
        assert TABLE.engine_of(host) == "youtube"
    assert rewrites["www.google.com.vn"] == "forcesafesearch.google.com"  # other engines never depend on it


def test_rewrites_for_returns_a_fresh_dict():
    first = TABLE.rewrites_for(YouTubeMode.STRICT)
    first["www.google.com"] = "evil.example"
    assert TABLE.rewrites_for(YouTubeMode.STRICT)["www.google.com"] == "forcesafesearch.google.com"


@pytest.mark.parametrize(
    ("name", "engine", "subtree"),
    [
        ("search.yahoo.com", "yahoo", True),
        ("search.aol.com", "aol", True),
        ("qwant.com", "qwant", True),
        ("coccoc.com", "coccoc", False),
        ("www.coccoc.com", "coccoc", False),
    ],
)
def test_engines_without_a_safe_mode(name, engine, subtree):
    rows = {row.name: row for row in TABLE.no_safe_mode}
    assert (rows[name].engine, rows[name].subtree) == (engine, subtree)


def test_table_names_are_canonical_and_disjoint():
    names = [*TABLE.engines, *(row.name for row in TABLE.no_safe_mode)]
    assert len(names) == len(set(names))
    assert all(name == name.lower() and name.isascii() and not name.endswith(".") for name in names)
    assert set(TABLE.rewrites) | set(TABLE.youtube_hosts) == set(TABLE.engines)
    assert "yandex" not in {*TABLE.engines.values(), *(row.engine for row in TABLE.no_safe_mode)}


def test_default_table_is_parsed_once():
    assert safesearch.default_table() is TABLE


def test_load_table(tmp_path):
    path = tmp_path / "table.yaml"
    path.write_text(
        "engines:\n  e: {target: safe.example, hosts: [www.example]}\n"
        "youtube: {targets: {moderate: m.example, strict: s.example}, hosts: [yt.example]}\n"
        "block_when_safe_search:\n  - {engine: x, name: x.example}\n"
    )
    table = safesearch.load_table(path)
    assert table.rewrites_for(YouTubeMode.STRICT) == {"www.example": "safe.example", "yt.example": "s.example"}
    assert table.rewrites_for(YouTubeMode.OFF) == {"www.example": "safe.example"}
    assert table.no_safe_mode == (safesearch.NoSafeMode("x", "x.example", True),)  # subtree by default
    with pytest.raises(ConfigError, match="cannot read file"):
        safesearch.load_table(tmp_path / "missing.yaml")


GOOD_YOUTUBE = "youtube: {targets: {moderate: m.example, strict: s.example}, hosts: []}\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "engines:\n  e: {target: safe.example, hosts: [WWW.Example]}\n" + GOOD_YOUTUBE,
            "t.yaml:2: engines.e.hosts[0]: 'WWW.Example' is not a lower-case A-label host name",
        ),
        (
            "engines:\n  e: {target: safe.example., hosts: []}\n" + GOOD_YOUTUBE,
            "t.yaml:2: engines.e.target: 'safe.example.' is not a lower-case A-label host name",
        ),
        ("engines:\n  e: {hosts: [a.example]}\n" + GOOD_YOUTUBE, "t.yaml:2: engines.e: missing required key 'target'"),
        (
            "engines:\n  a: {target: t.example, hosts: [x.example]}\n  b: {target: t.example, hosts: [x.example]}\n"
            + GOOD_YOUTUBE,
            "t.yaml:3: engines.b.hosts[0]: host 'x.example' is already listed for engine 'a'",
        ),
        (
            "engines:\n  e: {target: t.example, hosts: [], extra: 1}\n" + GOOD_YOUTUBE,
            "t.yaml:2: engines.e.extra: unknown key 'extra'",
        ),
        (
            "youtube:\n  targets: {moderate: m.example}\n  hosts: []\n",
            "t.yaml:2: youtube.targets: missing required key 'strict'",
        ),
        (
            GOOD_YOUTUBE + "block_when_safe_search:\n  - {engine: x, name: x.example, match: prefix}\n",
            "t.yaml:3: block_when_safe_search[0].match: expected 'subtree' or 'exact', got 'prefix'",
        ),
        (
            GOOD_YOUTUBE
            + "block_when_safe_search:\n  - {engine: x, name: x.example}\n  - {engine: y, name: x.example}\n",
            "t.yaml:4: block_when_safe_search[1].name: 'x.example' is listed twice in the table",
        ),
        (
            GOOD_YOUTUBE + "block_when_safe_search:\n  - {name: x.example}\n",
            "t.yaml:3: block_when_safe_search[0]: missing required key 'engine'",
        ),
        (GOOD_YOUTUBE + "extra: 1\n", "t.yaml:2: extra: unknown key 'extra'"),
    ],
)
def test_table_errors(text, expected):
    with pytest.raises(ConfigError) as caught:
        safesearch.parse_table(text, "t.yaml")
    lines = [str(p) for p in caught.value.problems]
    assert any(line.startswith(expected) for line in lines), lines
