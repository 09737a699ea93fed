"""listformats: name normalisation (case, trailing dot, IDN, limits) and the four list parsers."""

import io
import ipaddress
import time
from pathlib import Path

import idna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.filtering import listformats as lf
from resolver.filtering.listformats import ALLOW, BELOW, BLOCK, EXACT, SUBTREE, InvalidName, Tally

DATA = Path(__file__).resolve().parents[1] / "data"


def parse(fmt, text, **kwargs):
    """Parse `text` (one string, or a list of lines) -> (entries, tally)."""
    tally = Tally()
    lines = text.splitlines(keepends=True) if isinstance(text, str) else text
    if fmt == "rpz":
        entries = list(lf.parse_rpz(lines, tally, **kwargs))
    else:
        entries = list(lf.parse_list(fmt, lines, tally, **kwargs))
    return entries, tally


def parse_file(fmt, name):
    tally = Tally()
    with open(DATA / name, encoding="utf-8") as lines:
        entries = list(lf.parse_list(fmt, lines, tally))
    return entries, tally


# --- normalize_name ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("example.com", "example.com"),
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("WWW.Example.Com.", "www.example.com"),
        ("exa_mple.com", "exa_mple.com"),  # underscores occur in real DNS names
        ("r3---sn-x.googlevideo.com", "r3---sn-x.googlevideo.com"),  # '--' inside a label, as DNS allows
        ("a.b.c.d.example", "a.b.c.d.example"),
        ("example\u3002com", "example.com"),  # ideographic full stop, mapped by UTS-46
        ("xn--mnchen-3ya.de", "xn--mnchen-3ya.de"),  # a valid A-label is kept as is
        ("XN--MNCHEN-3YA.DE", "xn--mnchen-3ya.de"),
        ("münchen.de", "xn--mnchen-3ya.de"),
        ("faß.de", "xn--fa-hia.de"),  # non-transitional: ß is kept, not mapped to "ss"
    ],
)
def test_normalize_name(text, expected):
    assert lf.normalize_name(text) == expected


VIETNAMESE = ["bóng-đá.vn", "thể-thao.vn", "tin-tức.com.vn", "trò-chơi.vn", "Cá-Độ.VN"]


@pytest.mark.parametrize("name", VIETNAMESE)
def test_vietnamese_idn_normalises_to_its_a_label(name):
    expected = idna.encode(name, uts46=True, transitional=False).decode("ascii")
    assert expected.startswith("xn--") or ".xn--" in expected
    assert lf.normalize_name(name) == expected
    assert lf.normalize_name(name + ".") == expected
    assert lf.normalize_name(expected) == expected  # the A-label form is a fixed point


def test_vietnamese_idn_known_a_labels():
    # Hard-coded after checking against idna.encode(..., uts46=True).
    assert lf.normalize_name("bóng-đá.vn") == "xn--bng--8na8hpj.vn"
    assert lf.normalize_name("thể-thao.vn") == "xn--th-thao-2u4c.vn"
    assert lf.normalize_name("BÓNG-ĐÁ.VN.") == "xn--bng--8na8hpj.vn"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty name"),
        (".", "empty name"),
        ("a..b.com", "empty label"),
        (".example.com", "empty label"),
        ("example.com..", "empty label"),
        ("a" * 64 + ".com", "label too long"),
        (".".join(["a" * 63] * 4) + ".com", "name too long"),
        ("-a.com", "label starts or ends with hyphen"),
        ("a-.com", "label starts or ends with hyphen"),
        ("a b.com", "invalid character"),
        ("a$b.com", "invalid character"),
        ("a/b.com", "invalid character"),
        ("xn--abc.com", "invalid idn"),  # not decodable punycode
        ("xn--abc-.com", "invalid idn"),  # decodes to plain ASCII: not a real A-label
        ("com", "single label"),
        ("localhost", "single label"),
        ("example.123", "numeric tld"),
        ("192.0.2.1", "ip address"),
        ("2001:db8::1", "ip address"),
        ("::1", "ip address"),
    ],
)
def test_invalid_names_are_rejected_with_a_reason(text, reason):
    with pytest.raises(InvalidName) as caught:
        lf.normalize_name(text)
    assert caught.value.reason == reason
    assert isinstance(caught.value, ValueError)


def test_length_limits_are_inclusive():
    label63 = "a" * 63
    assert lf.normalize_name(label63 + ".com") == label63 + ".com"
    name253 = ".".join(["a" * 63] * 3 + ["b" * 61])  # 3*64 + 61 = 253 characters
    assert len(name253) == 253
    assert lf.normalize_name(name253) == name253
    with pytest.raises(InvalidName, match="name too long"):
        lf.normalize_name(name253 + "b")


# --- Tally ------------------------------------------------------------------------------------


def test_tally_counts_and_keeps_the_first_example_per_reason():
    _, tally = parse("domains", ["# header", "ok.example", "bad..example", "also..bad", "1.2.3.4", "", "# x"])
    assert (tally.skipped, tally.invalid) == (3, 2)  # 2 comments + 1 ip address; 2 empty labels
    assert tally.reasons == {"comment": 2, "empty label": 2, "ip address": 1}
    assert tally.examples["empty label"] == (3, "bad..example")
    assert tally.examples["ip address"] == (5, "1.2.3.4")
    assert "comment" not in tally.examples  # comments are counted, never shown


def test_tally_example_text_is_capped():
    _, tally = parse("adblock", ["example.com##" + "x" * 500])
    assert tally.reasons == {"cosmetic": 1}
    assert len(tally.examples["cosmetic"][1]) == 200


def test_parsers_work_without_a_tally():
    assert list(lf.parse_domains(["a.example", "#"])) == [("a.example", SUBTREE, BLOCK)]
    assert list(lf.parse_hosts(["0.0.0.0 a.example"])) == [("a.example", SUBTREE, BLOCK)]
    assert list(lf.parse_adblock(["||a.example^"])) == [("a.example", SUBTREE, BLOCK)]
    assert list(lf.parse_rpz(["a.example CNAME ."])) == [("a.example", EXACT, BLOCK)]


# --- domains ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, match, expected",
    [
        ("example.com", SUBTREE, [("example.com", SUBTREE, BLOCK)]),
        ("example.com", EXACT, [("example.com", EXACT, BLOCK)]),
        ("  Example.COM.  \n", EXACT, [("example.com", EXACT, BLOCK)]),
        ("example.com # trailing comment", EXACT, [("example.com", EXACT, BLOCK)]),
        ("*.example.com", EXACT, [("example.com", SUBTREE, BLOCK)]),  # `*.d` is always d's subtree
        ("bóng-đá.vn", SUBTREE, [("xn--bng--8na8hpj.vn", SUBTREE, BLOCK)]),
        ("xn--bng--8na8hpj.vn", EXACT, [("xn--bng--8na8hpj.vn", EXACT, BLOCK)]),
    ],
)
def test_domains_entries(line, match, expected):
    entries, tally = parse("domains", [line], match=match)
    assert entries == expected
    assert (tally.skipped, tally.invalid) == (0, 0)


@pytest.mark.parametrize(
    "line, reason, skipped",
    [
        ("# a comment", "comment", True),
        ("192.0.2.1", "ip address", True),
        ("a.example b.example", "more than one field", False),
        ("a*.example", "wildcard", False),
        ("bad..example", "empty label", False),
        ("com", "single label", False),
    ],
)
def test_domains_rejects(line, reason, skipped):
    entries, tally = parse("domains", [line])
    assert entries == []
    assert tally.reasons == {reason: 1}
    assert (tally.skipped, tally.invalid) == ((1, 0) if skipped else (0, 1))


def test_domains_default_match_is_subtree_and_blank_lines_are_not_counted():
    entries, tally = parse("domains", "\n\n  \na.example\n\t\n")
    assert entries == [("a.example", SUBTREE, BLOCK)]
    assert (tally.skipped, tally.invalid, tally.reasons) == (0, 0, {})


# --- hosts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, names",
    [
        ("0.0.0.0 ads.example", ["ads.example"]),
        ("127.0.0.1 ads.example", ["ads.example"]),
        ("::1 ads.example", ["ads.example"]),
        (":: ads.example", ["ads.example"]),
        ("0.0.0.0\tads.example", ["ads.example"]),
        ("192.0.2.7 ads.example", ["ads.example"]),  # any address: it is ignored
        ("0.0.0.0 a.example b.example  c.example", ["a.example", "b.example", "c.example"]),
        ("0.0.0.0 ads.example # comment", ["ads.example"]),
        ("0.0.0.0 ADS.Example.", ["ads.example"]),
        ("ads.example", ["ads.example"]),  # a lone name is a name
        ("0.0.0.0 thể-thao.vn", ["xn--th-thao-2u4c.vn"]),
        # real lines from eth-phishing-detect src/hosts.txt
        ("0.0.0.0 yearnson.finance", ["yearnson.finance"]),
        ("0.0.0.0 xn--myeterwalet-cm8eoi.com", ["xn--myeterwalet-cm8eoi.com"]),
    ],
)
def test_hosts_entries(line, names):
    entries, tally = parse("hosts", [line])
    assert entries == [(name, SUBTREE, BLOCK) for name in names]
    assert (tally.skipped, tally.invalid) == (0, 0)


def test_hosts_match_applies_to_every_name():
    entries, _ = parse("hosts", ["0.0.0.0 a.example b.example"], match=EXACT)
    assert entries == [("a.example", EXACT, BLOCK), ("b.example", EXACT, BLOCK)]


@pytest.mark.parametrize(
    "line, reasons, skipped, invalid",
    [
        ("127.0.0.1 localhost", {"local name": 1}, 1, 0),
        ("127.0.0.1 localhost.localdomain", {"local name": 1}, 1, 0),
        ("::1 ip6-localhost ip6-loopback", {"local name": 2}, 2, 0),
        ("255.255.255.255 broadcasthost", {"local name": 1}, 1, 0),
        ("0.0.0.0 0.0.0.0", {"local name": 1}, 1, 0),
        ("# comment", {"comment": 1}, 1, 0),
        ("0.0.0.0 192.0.2.1", {"ip address": 1}, 1, 0),
        ("0.0.0.0", {"address without name": 1}, 0, 1),
        ("blocked ads.example", {"first field is not an address": 1}, 0, 1),
        ("0.0.0.0 *.ads.example", {"wildcard": 1}, 0, 1),
        ("0.0.0.0 ads..example", {"empty label": 1}, 0, 1),
    ],
)
def test_hosts_rejects(line, reasons, skipped, invalid):
    entries, tally = parse("hosts", [line])
    assert entries == []
    assert tally.reasons == reasons
    assert (tally.skipped, tally.invalid) == (skipped, invalid)


def test_hosts_local_names_are_skipped_next_to_real_ones():
    entries, tally = parse("hosts", ["127.0.0.1 localhost ads.example"])
    assert entries == [("ads.example", SUBTREE, BLOCK)]
    assert tally.reasons == {"local name": 1}


# --- adblock ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, expected",
    [
        ("||ads.example^", ("ads.example", SUBTREE, BLOCK)),
        ("||ADS.Example^", ("ads.example", SUBTREE, BLOCK)),
        ("||ads.example^$important", ("ads.example", SUBTREE, BLOCK)),
        ("||ads.example^$doc", ("ads.example", SUBTREE, BLOCK)),
        ("||ads.example^$document,important", ("ads.example", SUBTREE, BLOCK)),
        ("||ads.example^$all", ("ads.example", SUBTREE, BLOCK)),
        ("||ads.example^|", ("ads.example", SUBTREE, BLOCK)),
        ("||*.ads.example^", ("ads.example", SUBTREE, BLOCK)),
        ("@@||ads.example^", ("ads.example", SUBTREE, ALLOW)),
        ("@@||ads.example^$important", ("ads.example", SUBTREE, ALLOW)),
        ("@@|ads.example^", ("ads.example", EXACT, ALLOW)),
        ("*.ads.example", ("ads.example", SUBTREE, BLOCK)),
        ("*.ads.example^", ("ads.example", SUBTREE, BLOCK)),
        ("|ads.example^", ("ads.example", EXACT, BLOCK)),
        ("ads.example", ("ads.example", EXACT, BLOCK)),  # bare host, as in urlhaus-filter
        ("ads.example^", ("ads.example", EXACT, BLOCK)),
        ("||bóng-đá.vn^", ("xn--bng--8na8hpj.vn", SUBTREE, BLOCK)),
        # real lines: urlhaus-filter-online.txt and ublock-badware.txt
        ("||wegrowcoaching.com^$all", ("wegrowcoaching.com", SUBTREE, BLOCK)),
        ("xn--90abegbttpjb3bzb2j.xn--p1ai", ("xn--90abegbttpjb3bzb2j.xn--p1ai", EXACT, BLOCK)),
        ("xworm0106.duckdns.org", ("xworm0106.duckdns.org", EXACT, BLOCK)),
        ("||vlc.de^$doc", ("vlc.de", SUBTREE, BLOCK)),
        ("||flexytalk.net^", ("flexytalk.net", SUBTREE, BLOCK)),
        ("||xn--4dkua4c8143c.jp^$doc", ("xn--4dkua4c8143c.jp", SUBTREE, BLOCK)),
    ],
)
def test_adblock_domain_rules(line, expected):
    entries, tally = parse("adblock", [line])
    assert entries == [expected]
    assert (tally.skipped, tally.invalid) == (0, 0)


@pytest.mark.parametrize(
    "line, reason",
    [
        ("! comment", "comment"),
        ("[Adblock Plus 2.0]", "comment"),
        ("# hash comment", "comment"),
        ("##.ad-banner", "cosmetic"),
        ("example.com##.ad", "cosmetic"),
        ("example.com#@#.ad", "cosmetic"),
        ("example.com#?#div:has(.ad)", "cosmetic"),
        ("example.com##+js(nobab)", "cosmetic"),
        ("example.com#$#body { color: red }", "cosmetic"),
        ("||ads.example/banner^", "path rule"),
        ("@@||ads.example/ok.js", "path rule"),
        ("/banner/ad.", "path rule"),
        ("/ads\\d+/", "regex"),
        ("||ads*.example^", "wildcard"),
        ("||ads.example:8080^", "url rule"),
        ("||ads.example^$third-party", "option $third-party"),
        ("||ads.example^$~third-party", "option $~third-party"),
        ("||ads.example^$script,domain=school.example", "option $script"),
        ("||ads.example^$important,badfilter", "option $badfilter"),
        ("||ads.example^$denyallow=cdn.example", "option $denyallow"),
        ("||ads.example^$made-up-option", "unknown option"),
        ("||ads.example^$", "unknown option"),
        ("||192.0.2.1^", "ip address"),
        ("||ads.", "url pattern"),
        # real lines from ublock-badware.txt (uBlock Origin uAssets, GPL-3.0-or-later)
        ("! 2015-03-11: https://blog.emsisoft.com/en/12678/mind-the-pup-top-download-portals-to-avoid/", "comment"),
        ("windowsreport.com##.code-block", "cosmetic"),
        ("||01net.com/telecharger/$doc", "path rule"),
        ("/?track=*&key=$all", "path rule"),
        ("||adserver*/?sdomain=$doc,popup", "path rule"),
        ("||discord*.gift^$all,domain=~discord.gift", "wildcard"),
        ("||s3blog.org^$3p", "option $3p"),
        ("||fitgirl-repacks-site.org^$doc,domain=~fitgirl-repacks.site", "option $domain"),
        ("||wetching.ru^$doc,frame", "option $frame"),
        ("||5.61.55.143^", "ip address"),
        ("@@||toss.onelink.me/*service.toss.im$doc,1p", "path rule"),
        # a narrowing option makes the whole rule skipped, even when its pattern alone is no name
        ("||com^$doc,ipaddress=206.82.7.123", "option $ipaddress"),
        ("||steamcommunity.^$doc,to=~steamcommunity.com", "option $to"),
        # real lines from urlhaus-filter-online.txt (CC0)
        ("1.1.104.12", "ip address"),
        ("||2024.sci-hub.se/2294/7a43bb4cf6c57229b02a9604a1f4614e/skidmore1966.pdf^$all", "path rule"),
    ],
)
def test_adblock_non_domain_rules_are_skipped_and_counted(line, reason):
    entries, tally = parse("adblock", [line])
    assert entries == []
    assert tally.reasons == {reason: 1}
    assert (tally.skipped, tally.invalid) == (1, 0)
    if reason != "comment":
        assert tally.examples[reason] == (1, line.strip()[:200])


@pytest.mark.parametrize(
    "line, reason",
    [
        ("||ads..example^", "empty label"),
        ("||-ads.example^", "label starts or ends with hyphen"),
        ("||com^", "single label"),
        ("||xn--abc.example^", "invalid idn"),
    ],
)
def test_adblock_broken_domain_rules_are_invalid(line, reason):
    entries, tally = parse("adblock", [line])
    assert entries == []
    assert tally.reasons == {reason: 1}
    assert (tally.skipped, tally.invalid) == (0, 1)


def test_adblock_rule_is_never_half_applied():
    # The block rule with a narrowing option is dropped whole: no entry for ads.example at all.
    entries, _ = parse("adblock", ["||ads.example^$third-party", "@@||ads.example^$domain=x.example"])
    assert entries == []


# --- rpz -------------------------------------------------------------------------------------

RPZ_ZONE = """\
$TTL 60
@ IN SOA localhost. root.localhost. ( 1 3600 ; serial, refresh
    600 86400 60 )
  IN NS localhost.
; policy records
bad.example CNAME .
*.worse.example CNAME .
good.example CNAME rpz-passthru.
*.better.example 300 IN CNAME rpz-passthru.
Upper.Example cname .
thể-thao.vn CNAME .
drop.example CNAME rpz-drop.
nodata.example CNAME *.
tcp.example CNAME rpz-tcp-only.
local.example A 192.0.2.1
redirect.example CNAME walled.garden.example.
32.1.2.0.192.rpz-ip CNAME .
ns.evil.example.rpz-nsdname CNAME .
24.0.2.0.192.rpz-client-ip CNAME rpz-passthru.
"""


def test_rpz_actions_and_triggers():
    entries, tally = parse("rpz", RPZ_ZONE)
    assert entries == [
        ("bad.example", EXACT, BLOCK),
        ("worse.example", BELOW, BLOCK),
        ("good.example", EXACT, ALLOW),
        ("better.example", BELOW, ALLOW),
        ("upper.example", EXACT, BLOCK),
        ("xn--th-thao-2u4c.vn", EXACT, BLOCK),
    ]
    assert tally.reasons == {
        "zone directive": 1,
        "zone record": 2,
        "comment": 1,
        "action rpz-drop": 1,
        "action nodata": 1,
        "action rpz-tcp-only": 1,
        "local data": 2,
        "unsupported trigger": 3,
    }
    assert (tally.skipped, tally.invalid) == (12, 0)
    assert tally.examples["local data"] == (15, "local.example A 192.0.2.1")


def test_rpz_origin_directive_sets_the_apex_and_relative_names():
    zone = """\
$ORIGIN rpz.school.example.
@ SOA ns.rpz.school.example. admin.rpz.school.example. 1 2 3 4 5
@ NS ns.rpz.school.example.
bad.example CNAME .
bad2.example.rpz.school.example. CNAME .
outside.example. CNAME .
$ORIGIN sub.rpz.school.example.
deep CNAME .
*.wild CNAME .
$ORIGIN elsewhere.example.
x CNAME .
"""
    entries, tally = parse("rpz", zone)
    # trigger names are relative to the zone apex, also after a later $ORIGIN below it
    assert entries == [
        ("bad.example", EXACT, BLOCK),
        ("bad2.example", EXACT, BLOCK),
        ("deep.sub", EXACT, BLOCK),
        ("wild.sub", BELOW, BLOCK),
    ]
    assert tally.reasons == {"zone directive": 3, "zone record": 2, "outside zone origin": 2}
    assert tally.invalid == 2
    assert tally.examples["outside zone origin"] == (6, "outside.example. CNAME .")


def test_rpz_apex_from_the_soa_owner():
    zone = "rpz.example. 3600 IN SOA ns. admin. 1 2 3 4 5\nbad.example.rpz.example. CNAME .\n"
    entries, _ = parse("rpz", zone)
    assert entries == [("bad.example", EXACT, BLOCK)]


@pytest.mark.parametrize("origin", ["rpz.example", "rpz.example.", "RPZ.Example."])
def test_rpz_origin_argument(origin):
    entries, _ = parse("rpz", "bad.example.rpz.example. CNAME .\nrel.example CNAME .\n", origin=origin)
    assert entries == [("bad.example", EXACT, BLOCK), ("rel.example", EXACT, BLOCK)]


def test_rpz_without_origin_relative_names_are_the_triggers():
    entries, _ = parse("rpz", ["bad.example CNAME .\n", "bad2.example. CNAME .\n"])
    assert entries == [("bad.example", EXACT, BLOCK), ("bad2.example", EXACT, BLOCK)]


def test_rpz_owner_carries_over_to_continuation_records():
    entries, tally = parse("rpz", "multi.example A 192.0.2.1\n  CNAME .\n")
    assert entries == [("multi.example", EXACT, BLOCK)]
    assert tally.reasons == {"local data": 1}


@pytest.mark.parametrize(
    "text, reason",
    [
        ("@ SOA ns. admin. ( 1 2 3\n", "unclosed parenthesis"),
        ("   CNAME .\n", "no owner name"),
        ("$INCLUDE other.zone\n", "unsupported directive"),
        ("bad..example CNAME .\n", "empty label"),
        ("ba*d.example CNAME .\n", "wildcard"),
        ("lonely\n", "no record type"),
        (")\n", "parentheses with no record"),
        ("(\n)\n", "parentheses with no record"),
    ],
)
def test_rpz_invalid_lines(text, reason):
    entries, tally = parse("rpz", text)
    assert entries == []
    assert tally.reasons == {reason: 1}
    assert tally.invalid == 1


# --- dispatch --------------------------------------------------------------------------------


def test_parse_list_dispatch_and_match():
    assert list(lf.parse_list("domains", ["a.example"])) == [("a.example", SUBTREE, BLOCK)]
    assert list(lf.parse_list("domains", ["a.example"], None, EXACT)) == [("a.example", EXACT, BLOCK)]
    assert list(lf.parse_list("hosts", ["0.0.0.0 a.example"], None, EXACT)) == [("a.example", EXACT, BLOCK)]
    assert list(lf.parse_list("adblock", ["||a.example^"])) == [("a.example", SUBTREE, BLOCK)]
    assert list(lf.parse_list("rpz", ["a.example CNAME ."])) == [("a.example", EXACT, BLOCK)]
    assert set(lf.FORMATS) == {"domains", "hosts", "adblock", "rpz"}
    assert {"domains", "hosts"} == lf.FORMATS_WITH_MATCH
    with pytest.raises(ValueError, match="unknown list format 'csv'"):
        lf.parse_list("csv", [])


# --- whole real files ------------------------------------------------------------------------


def _is_ip(text):
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def test_urlhaus_filter_whole_file():
    entries, tally = parse_file("adblock", "urlhaus-filter-online.txt")
    lines = (DATA / "urlhaus-filter-online.txt").read_text(encoding="utf-8").splitlines()
    bare = [line for line in lines if line and line[0] != "!" and not line.startswith("||")]
    bare_hosts = [line for line in bare if not _is_ip(line)]
    paths = [line for line in lines if line.startswith("||") and "/" in line]
    assert (len(lines), len(bare_hosts), len(bare) - len(bare_hosts), len(paths)) == (6260, 601, 2307, 3345)

    assert len(entries) == 602
    assert len({name for name, _, _ in entries}) == 602
    assert sorted(name for name, match, _ in entries if match == EXACT) == sorted(bare_hosts)
    assert [entry for entry in entries if entry[1] == SUBTREE] == [("wegrowcoaching.com", SUBTREE, BLOCK)]
    assert all(kind == BLOCK for _, _, kind in entries)
    assert (tally.skipped, tally.invalid) == (5658, 0)
    assert tally.reasons == {"comment": 6, "ip address": 2307, "path rule": 3345}
    assert tally.examples["ip address"] == (7, "1.1.104.12")
    assert len(entries) + tally.skipped + tally.invalid == len(lines)


def test_ublock_badware_whole_file():
    entries, tally = parse_file("adblock", "ublock-badware.txt")
    assert len(entries) == 2903
    assert len({name for name, _, _ in entries}) == 2885  # some names appear in several rules
    assert all(match == SUBTREE and kind == BLOCK for _, match, kind in entries)
    assert ("vlc.de", SUBTREE, BLOCK) in entries
    assert ("xn--4dkua4c8143c.jp", SUBTREE, BLOCK) in entries
    assert tally.invalid == 0  # a real, maintained list has no broken domain rules
    assert tally.skipped == 1553
    assert tally.reasons == {
        "comment": 203,
        "cosmetic": 67,
        "path rule": 773,
        "regex": 150,
        "wildcard": 194,
        "url pattern": 71,
        "url rule": 1,
        "ip address": 5,
        "option $3p": 3,
        "option $to": 46,
        "option $domain": 25,
        "option $xhr": 2,
        "option $from": 1,
        "option $frame": 2,
        "option $ipaddress": 9,
        "option $script": 1,
    }
    assert tally.examples["path rule"] == (17, "||01net.com/telecharger/$doc")
    assert tally.examples["cosmetic"][0] == 30
    lines = (DATA / "ublock-badware.txt").read_text(encoding="utf-8").splitlines()
    blank = sum(1 for line in lines if not line.strip())
    assert len(entries) + tally.skipped + tally.invalid + blank == len(lines)
    assert sum(1 for line in lines if line.startswith("!")) == tally.reasons["comment"]


def test_eth_phishing_detect_hosts_whole_file():
    entries, tally = parse_file("hosts", "eth-phishing-detect-hosts.txt")
    lines = (DATA / "eth-phishing-detect-hosts.txt").read_text(encoding="utf-8").splitlines()
    listed = [line.split()[1] for line in lines if line.startswith("0.0.0.0 ")]
    assert len(lines) == 1072
    assert len(entries) == len(listed) == 1071
    assert [name for name, _, _ in entries] == listed  # all already lower-case A-labels
    assert all(match == SUBTREE and kind == BLOCK for _, match, kind in entries)
    assert sum(1 for name in listed if "xn--" in name) == 219
    assert (tally.skipped, tally.invalid) == (1, 0)
    assert tally.reasons == {"local name": 1}
    assert tally.examples["local name"] == (1, "127.0.0.1 localhost")


# --- bulk parsing: the same entries and tally as line by line ----------------------------------

SHIPPED = Path(__file__).resolve().parents[2] / "blocklists"
REAL_LISTS = sorted(DATA.glob("*.txt")) + sorted(SHIPPED.rglob("*.txt"))


def tally_state(tally):
    return tally.skipped, tally.invalid, tally.reasons, tally.examples


def domains_both_ways(data, match):
    """(entries, tally) of `data` (file bytes) parsed line by line and in bulk, each read as a file is."""

    def text_file():
        return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace")

    line_tally, bulk_tally = Tally(), Tally()
    by_line = list(lf.parse_domains(text_file(), line_tally, match=match))
    runs = lf.parse_domains_text(text_file().read(), bulk_tally, match=match)
    in_bulk = [(name, run_match, kind) for (run_match, kind), names in runs.items() for name in names]
    return (sorted(by_line), line_tally), (sorted(in_bulk), bulk_tally)


@pytest.mark.parametrize("match", [SUBTREE, EXACT])
@pytest.mark.parametrize("path", REAL_LISTS, ids=lambda path: path.name)
def test_bulk_domains_parse_equals_line_by_line_on_real_lists(path, match):
    # Every real list, as if it were declared `format: domains`: most lines of the adblock and
    # hosts files are then rejected, which exercises the per-line rule and the tally.
    (by_line, line_tally), (in_bulk, bulk_tally) = domains_both_ways(path.read_bytes(), match)
    assert in_bulk == by_line  # the same entries, duplicates included (reports count them)
    assert tally_state(bulk_tally) == tally_state(line_tally)


def test_bulk_domains_parse_of_the_shipped_allow_list_takes_real_names():
    path = SHIPPED / "phishing" / "eth-phishing-detect-allow.txt"
    (by_line, _), (in_bulk, tally) = domains_both_ways(path.read_bytes(), EXACT)
    assert len(in_bulk) > 1000 and in_bulk == by_line
    assert tally.invalid == 0


MESSY_LINES = [
    "",
    "   ",
    "\t",
    "# comment",
    "#",
    "  # indented comment",
    "a.example",
    "A.Example.COM",
    "a.example.",
    "a.example # trailing",
    "a.example\t# tab then comment",
    "a.example#glued",
    "  a.example  ",
    "*.a.example",
    "*.A.example.",
    "*.*.a.example",
    "a*.example",
    "*.",
    "*",
    "xn--bcher-kva.example",
    "*.xn--bcher-kva.example",
    "XN--BCHER-KVA.example",
    "xn--abc.example",
    "xn--abc-.example",
    "bücher.example",
    "bóng-đá.vn",
    "Cá-Độ.VN",
    "tin-tức.com.vn",
    "a" * 63 + ".example",
    "a" * 64 + ".example",
    ".".join(["a" * 63] * 3 + ["b" * 61]),
    ".".join(["a" * 63] * 4) + ".com",
    "1.2.3.4",
    "::1",
    "[::1]",
    "2001:db8::1",
    "a.example b.example",
    "-a.example",
    "a-.example",
    "a_b.example",
    "r3---sn-x.googlevideo.com",
    "localhost",
    "com",
    "a.123",
    "a..example",
    ".a.example",
    "a.example\u00a0",
    "\ufeffa.example",
    "a.b.c.d.e.f.example",
    "0.0.0.0 a.example",
    "||a.example^",
    "a.example\x0b",
    "ab\u2028cd.example",
]
MESSY_PIECES = st.one_of(
    st.sampled_from(MESSY_LINES),
    st.text(alphabet="abx-n_.#* \t0ü:", max_size=12),
)


@settings(max_examples=300, deadline=None, database=None)
@given(
    lines=st.lists(st.tuples(MESSY_PIECES, st.sampled_from(["\n", "\r\n", "\r"])), max_size=40),
    last_newline=st.booleans(),
    broken_utf8=st.booleans(),
    match=st.sampled_from([SUBTREE, EXACT]),
)
def test_bulk_domains_parse_equals_line_by_line_on_messy_lines(lines, last_newline, broken_utf8, match):
    text = "".join(line + newline for line, newline in lines)
    if not last_newline:
        text = text.rstrip("\r\n")
    data = text.encode("utf-8")
    if broken_utf8:
        data = b"\xff\xfe" + data + b"\nok.\xc3example\n"  # decoded with errors="replace"
    (by_line, line_tally), (in_bulk, bulk_tally) = domains_both_ways(data, match)
    assert in_bulk == by_line
    assert tally_state(bulk_tally) == tally_state(line_tally)


def test_a_clean_list_with_comments_and_blank_lines_parses_in_bulk_like_line_by_line():
    # The usual shape of a published list: a comment header, blank lines, names, a "*." rule and
    # an IDN.
    lines = [
        "# Title: a list",
        "# License: CC0",
        "",
        "ads.example",
        "r3---sn-x.googlevideo.com",
        "a_b.example.vn",
        "  spaced.example  ",
        "",
        "*.tree.example",
        "xn--bcher-kva.example",
        "a" * 63 + ".example",
    ]
    (by_line, line_tally), (in_bulk, bulk_tally) = domains_both_ways("\n".join(lines).encode(), SUBTREE)
    assert in_bulk == by_line and len(in_bulk) == 7
    assert tally_state(bulk_tally) == tally_state(line_tally) and bulk_tally.reasons == {"comment": 2}


def test_domains_text_parse_of_odd_names_keeps_their_line_numbers_and_order():
    long_label = "a" * 64 + ".example"
    long_name = ".".join(["a" * 63] * 4) + ".com"
    text = (
        "\n".join(
            [
                "# list",
                "plain.example",
                "xn--bcher-kva.example",
                "xn--abc.example",
                "",
                long_label,
                long_name,
                "a" * 63 + ".example",
                "*.tree.example",
                "two names.example",
                "Upper.Example",
            ]
        )
        + "\n"
    )
    tally = Tally()
    runs = lf.parse_domains_text(text, tally, match=EXACT)
    assert runs == {
        (EXACT, BLOCK): ["plain.example", "xn--bcher-kva.example", "a" * 63 + ".example", "upper.example"],
        (SUBTREE, BLOCK): ["tree.example"],
    }
    assert tally.reasons == {
        "comment": 1,
        "invalid idn": 1,
        "label too long": 1,
        "name too long": 1,
        "more than one field": 1,
    }
    assert tally.examples == {
        "invalid idn": (4, "xn--abc.example"),
        "label too long": (6, long_label),
        "name too long": (7, long_name[:200]),
        "more than one field": (10, "two names.example"),
    }
    assert lf.parse_domains_text("", Tally()) == {(SUBTREE, BLOCK): []}


@pytest.mark.parametrize(
    "fmt, data, match",
    [
        ("adblock", (DATA / "urlhaus-filter-online.txt").read_bytes(), None),
        ("adblock", (DATA / "ublock-badware.txt").read_bytes(), None),
        ("hosts", (DATA / "eth-phishing-detect-hosts.txt").read_bytes(), EXACT),
        ("hosts", (DATA / "eth-phishing-detect-hosts.txt").read_bytes(), None),
        ("rpz", RPZ_ZONE.encode(), None),
        ("domains", (SHIPPED / "phishing" / "eth-phishing-detect-allow.txt").read_bytes(), EXACT),
        ("domains", b"a.example\n*.b.example\n# c\nbad..example\n", None),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_parse_list_runs_groups_what_parse_list_gives(fmt, data, match):
    def text_file():
        return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace")

    line_tally, run_tally = Tally(), Tally()
    expected: dict = {}
    for name, entry_match, kind in lf.parse_list(fmt, text_file(), line_tally, match):
        expected.setdefault((entry_match, kind), []).append(name)
    runs = lf.parse_list_runs(fmt, text_file(), run_tally, match)
    assert {key: sorted(names) for key, names in runs.items() if names} == {
        key: sorted(names) for key, names in expected.items()
    }
    assert tally_state(run_tally) == tally_state(line_tally)


def test_rpz_a_long_digit_run_before_the_type_is_read_at_once():
    started = time.perf_counter()
    entries, tally = parse("rpz", ["bad.example " + "5" * 40 + "CNAME .\n", "ok.example 1h30m IN CNAME .\n"])
    assert time.perf_counter() - started < 1
    assert entries == [("ok.example", EXACT, BLOCK)]
    assert tally.invalid + tally.skipped == 1
