"""policy: decide() precedence, schedules and time zones, IDN entries, explain, names."""

import ast
import datetime
import zoneinfo
from pathlib import Path

import pytest

from resolver.filtering import policy, policyfile
from resolver.filtering.policy import ALLOW, Action, Authority, Block, Rewrite
from resolver.yamlfile import ConfigError

CATEGORIES = ("adult", "gambling", "violence", "drugs", "malware", "phishing", "csam", "games", "social", "bypass")

PROVINCE = """\
mandatory: [csam, malware, phishing]
timezone: {tz}
info_url: "http://blocked.example.vn/"
profiles:
  primary:          {{block: [adult, gambling, violence, drugs, games, social, bypass]}}
  lower_secondary:  {{block: [adult, gambling, violence, drugs, bypass]}}
  upper_secondary:  {{block: [adult, gambling, drugs, bypass]}}
"""

HCM = "Asia/Ho_Chi_Minh"


def province(tz=HCM, extra=""):
    return policyfile.parse_province(PROVINCE.format(tz=tz) + extra, "province.yaml", CATEGORIES)


def school(body="", tz=HCM, level="upper_secondary", prov=None):
    text = f"id: s1\nlevel: {level}\nnetworks: [203.0.113.0/28]\n{body}"
    return policyfile.parse_school(text, "s1.yaml", CATEGORIES, prov or province(tz))


def at(text, tz=HCM):
    """Epoch seconds of a local wall-clock time, 'YYYY-MM-DD HH:MM' (2024-06-03 is a Monday)."""
    return datetime.datetime.fromisoformat(text).replace(tzinfo=zoneinfo.ZoneInfo(tz)).timestamp()


def mask(*names):
    return policy.category_mask(names, CATEGORIES)


MONDAY_0800 = at("2024-06-03 08:00")
MONDAY_1200 = at("2024-06-03 12:00")

CLASS_HOURS = (
    "schedules:\n  - {name: class-hours, days: [mon, tue, wed, thu, fri], "
    'from: "07:00", to: "11:30", block: [social, games]}\n'
)


def block(category, authority, action=Action.NXDOMAIN):
    return ("block", category, authority, action)


def summary(decision):
    if isinstance(decision, Block):
        return ("block", decision.category, decision.authority, decision.action)
    if isinstance(decision, Rewrite):
        return ("rewrite", decision.target)
    assert decision is ALLOW
    return "allow"


# (school body, queried name, listed categories, time, expected)
PRECEDENCE = {
    "unlisted name is forwarded": ("", "www.example.com", (), MONDAY_0800, "allow"),
    "profile category blocks": ("", "porn.example", ("adult",), MONDAY_0800, block("adult", Authority.SCHOOL)),
    "category outside the profile is allowed": ("", "game.example", ("games",), MONDAY_0800, "allow"),
    "mandatory blocks": ("", "bad.example", ("malware",), MONDAY_0800, block("malware", Authority.PROVINCE)),
    "mandatory beats allow": (
        "allow: [bad.example]\n",
        "x.bad.example",
        ("phishing",),
        MONDAY_0800,
        block("phishing", Authority.PROVINCE),
    ),
    "mandatory beats allow (csam)": (
        "allow: [bad.example]\n",
        "bad.example",
        ("csam", "adult"),
        MONDAY_0800,
        block("csam", Authority.PROVINCE),
    ),
    "mandatory beats deny": (
        "deny: [bad.example]\n",
        "bad.example",
        ("malware",),
        MONDAY_0800,
        block("malware", Authority.PROVINCE),
    ),
    "mandatory in school block list stays province": (
        "block: [malware]\n",
        "bad.example",
        ("malware",),
        MONDAY_0800,
        block("malware", Authority.PROVINCE),
    ),
    "mandatory: first category in list order": (
        "",
        "bad.example",
        ("phishing", "malware", "adult"),
        MONDAY_0800,
        block("malware", Authority.PROVINCE),
    ),
    "allow beats a profile category": (
        "allow: [khanacademy.org]\n",
        "www.khanacademy.org",
        ("adult",),
        MONDAY_0800,
        "allow",
    ),
    "allow beats a block-list category": (
        "block: [games]\nallow: [khanacademy.org]\n",
        "khanacademy.org",
        ("games",),
        MONDAY_0800,
        "allow",
    ),
    "allow beats a schedule category": (
        "allow: [facebook.com]\n" + CLASS_HOURS,
        "facebook.com",
        ("social",),
        MONDAY_0800,
        "allow",
    ),
    "allow is a subtree, not a suffix": (
        "allow: [khanacademy.org]\n",
        "notkhanacademy.org",
        ("adult",),
        MONDAY_0800,
        block("adult", Authority.SCHOOL),
    ),
    "allow beats deny on the same entry": (
        "allow: [example.com]\ndeny: [example.com]\n",
        "www.example.com",
        ("adult",),
        MONDAY_0800,
        "allow",
    ),
    "deny blocks a subtree": (
        "deny: [game.example.com]\n",
        "a.game.example.com",
        (),
        MONDAY_0800,
        block("deny", Authority.DENY),
    ),
    "deny does not block the parent": ("deny: [game.example.com]\n", "example.com", (), MONDAY_0800, "allow"),
    "deny beats a school category (EDE 15, not 17)": (
        "deny: [porn.example]\n",
        "porn.example",
        ("adult",),
        MONDAY_0800,
        block("deny", Authority.DENY),
    ),
    "more specific deny beats allow": (
        "allow: [example.com]\ndeny: [ads.example.com]\n",
        "x.ads.example.com",
        (),
        MONDAY_0800,
        block("deny", Authority.DENY),
    ),
    "allow still covers the rest of its subtree": (
        "allow: [example.com]\ndeny: [ads.example.com]\n",
        "www.example.com",
        ("adult",),
        MONDAY_0800,
        "allow",
    ),
    "more specific allow beats deny": (
        "allow: [docs.example.com]\ndeny: [example.com]\n",
        "a.docs.example.com",
        (),
        MONDAY_0800,
        "allow",
    ),
    "deny still covers the rest of its subtree": (
        "allow: [docs.example.com]\ndeny: [example.com]\n",
        "www.example.com",
        (),
        MONDAY_0800,
        block("deny", Authority.DENY),
    ),
    "more specific allow beats deny and categories": (
        "allow: [docs.example.com]\ndeny: [example.com]\n",
        "docs.example.com",
        ("adult",),
        MONDAY_0800,
        "allow",
    ),
    "unblock removes a profile category": ("unblock: [adult]\n", "porn.example", ("adult",), MONDAY_0800, "allow"),
    "unblock leaves the other categories": (
        "unblock: [adult]\n",
        "bet.example",
        ("adult", "gambling"),
        MONDAY_0800,
        block("gambling", Authority.SCHOOL),
    ),
    "unblock of the bypass category": ("unblock: [bypass]\n", "vpn.example", ("bypass",), MONDAY_0800, "allow"),
    "block adds a category": (
        "block: [games]\n",
        "game.example",
        ("games",),
        MONDAY_0800,
        block("games", Authority.SCHOOL),
    ),
    "first blocked category in list order": (
        "block: [games]\n",
        "x.example",
        ("games", "drugs"),
        MONDAY_0800,
        block("drugs", Authority.SCHOOL),
    ),
    "schedule blocks inside its window": (
        CLASS_HOURS,
        "facebook.com",
        ("social",),
        MONDAY_0800,
        block("social", Authority.SCHOOL),
    ),
    "schedule does not block outside its window": (CLASS_HOURS, "facebook.com", ("social",), MONDAY_1200, "allow"),
    "schedule re-blocks an unblocked category in its window": (
        'unblock: [adult]\nschedules:\n  - {days: [mon], from: "07:00", to: "09:00", block: [adult]}\n',
        "porn.example",
        ("adult",),
        MONDAY_0800,
        block("adult", Authority.SCHOOL),
    ),
    "schedule cannot unblock mandatory": (
        CLASS_HOURS,
        "bad.example",
        ("malware",),
        MONDAY_1200,
        block("malware", Authority.PROVINCE),
    ),
    "school action applies to category blocks": (
        "action: null_ip\n",
        "porn.example",
        ("adult",),
        MONDAY_0800,
        block("adult", Authority.SCHOOL, Action.NULL_IP),
    ),
    "school action applies to mandatory blocks": (
        "action: refused\n",
        "bad.example",
        ("csam",),
        MONDAY_0800,
        block("csam", Authority.PROVINCE, Action.REFUSED),
    ),
    "school action applies to deny": (
        "action: null_ip\ndeny: [x.example]\n",
        "x.example",
        (),
        MONDAY_0800,
        block("deny", Authority.DENY, Action.NULL_IP),
    ),
    # safe search
    "safe search rewrites google.com.vn": (
        "",
        "www.google.com.vn",
        (),
        MONDAY_0800,
        ("rewrite", "forcesafesearch.google.com"),
    ),
    "safe search rewrites even an allowed name": (
        "allow: [google.com.vn]\n",
        "www.google.com.vn",
        (),
        MONDAY_0800,
        ("rewrite", "forcesafesearch.google.com"),
    ),
    "safe search hosts are exact": ("", "mail.google.com", (), MONDAY_0800, "allow"),
    "safe search off: no rewrite": ("safe_search: false\n", "www.google.com", (), MONDAY_0800, "allow"),
    "deny beats safe search": (
        "deny: [google.com]\n",
        "www.google.com",
        (),
        MONDAY_0800,
        block("deny", Authority.DENY),
    ),
    "category beats safe search": ("", "www.google.com", ("adult",), MONDAY_0800, block("adult", Authority.SCHOOL)),
    "youtube moderate by default": (
        "",
        "www.youtube.com",
        (),
        MONDAY_0800,
        ("rewrite", "restrictmoderate.youtube.com"),
    ),
    "youtube strict": (
        "safe_search_youtube: strict\n",
        "m.youtube.com",
        (),
        MONDAY_0800,
        ("rewrite", "restrict.youtube.com"),
    ),
    "youtube off, google still rewritten": (
        "safe_search_youtube: off\n",
        "www.google.com",
        (),
        MONDAY_0800,
        ("rewrite", "forcesafesearch.google.com"),
    ),
    "youtube off": ("safe_search_youtube: off\n", "www.youtube.com", (), MONDAY_0800, "allow"),
    "youtube off, quoted": ('safe_search_youtube: "off"\n', "youtubei.googleapis.com", (), MONDAY_0800, "allow"),
    "bing": ("", "www.bing.com", (), MONDAY_0800, ("rewrite", "strict.bing.com")),
    "duckduckgo": ("", "duckduckgo.com", (), MONDAY_0800, ("rewrite", "safe.duckduckgo.com")),
    "engine without safe mode blocked": (
        "",
        "search.yahoo.com",
        (),
        MONDAY_0800,
        block("safe_search", Authority.SCHOOL),
    ),
    "engine without safe mode blocked (subtree)": (
        "",
        "vn.search.yahoo.com",
        (),
        MONDAY_0800,
        block("safe_search", Authority.SCHOOL),
    ),
    "engine without safe mode blocked (exact row)": (
        "",
        "coccoc.com",
        (),
        MONDAY_0800,
        block("safe_search", Authority.SCHOOL),
    ),
    "exact row leaves other names": ("", "static.coccoc.com", (), MONDAY_0800, "allow"),
    "engine without safe mode, allowed": ("allow: [yahoo.com]\n", "search.yahoo.com", (), MONDAY_0800, "allow"),
    "engine without safe mode, safe search off": ("safe_search: false\n", "search.yahoo.com", (), MONDAY_0800, "allow"),
    "engine without safe mode uses the school action": (
        "action: null_ip\n",
        "www.coccoc.com",
        (),
        MONDAY_0800,
        block("safe_search", Authority.SCHOOL, Action.NULL_IP),
    ),
    # bypass prevention
    "firefox canary": ("", "use-application-dns.net", (), MONDAY_0800, block("bypass", Authority.PROVINCE)),
    "firefox canary beats allow": (
        "allow: [use-application-dns.net]\n",
        "use-application-dns.net",
        (),
        MONDAY_0800,
        block("bypass", Authority.PROVINCE),
    ),
    "bypass names ignore the school action": (
        "action: null_ip\n",
        "mask.icloud.com",
        (),
        MONDAY_0800,
        block("bypass", Authority.PROVINCE),
    ),
    "private relay mask-h2": ("", "mask-h2.icloud.com", (), MONDAY_0800, block("bypass", Authority.PROVINCE)),
    "private relay canary": ("", "mask-canary.icloud.com", (), MONDAY_0800, block("bypass", Authority.PROVINCE)),
    "icloud itself is fine": ("", "www.icloud.com", (), MONDAY_0800, "allow"),
    "ddr _dns.resolver.arpa": (
        "",
        "_dns.resolver.arpa",
        (),
        MONDAY_0800,
        block("bypass", Authority.PROVINCE, Action.NODATA),
    ),
    "ddr resolver.arpa": ("", "resolver.arpa", (), MONDAY_0800, block("bypass", Authority.PROVINCE, Action.NODATA)),
    "bypass list category": ("", "dns.google", ("bypass",), MONDAY_0800, block("bypass", Authority.SCHOOL)),
}


@pytest.mark.parametrize(("body", "name", "listed", "now", "expected"), PRECEDENCE.values(), ids=PRECEDENCE.keys())
def test_precedence(body, name, listed, now, expected):
    decision = policy.decide(school(body), name, mask(*listed), now)
    assert summary(decision) == expected
    assert summary(policy.explain(school(body), name, mask(*listed), now).decision) == expected


def test_bypass_prevention_can_be_turned_off():
    s = school(prov=province(extra="bypass_prevention: false\n"))
    for name in policy.BYPASS_NAMES:
        assert policy.decide(s, name, 0, MONDAY_0800) is ALLOW
    assert "bypass prevention is off" in policy.explain(s, "use-application-dns.net", 0, MONDAY_0800).rule


@pytest.mark.parametrize("category", ["csam", "malware", "phishing"])
def test_unblock_of_a_mandatory_category_is_an_error(category):
    with pytest.raises(ConfigError) as caught:
        school(f"unblock: [{category}]\n")
    assert str(caught.value) == (
        f"s1.yaml:4: unblock[0]: category '{category}' is mandatory in province.yaml and cannot be unblocked"
    )


def test_mandatory_in_school_and_schedule_lists_is_not_school_authority():
    s = school('block: [csam]\nschedules:\n  - {from: "00:00", to: "24:00", block: [malware, games]}\n')
    assert s.base_mask & s.mandatory_mask == 0
    assert s.blocked_mask_at(MONDAY_0800) & s.mandatory_mask == 0
    assert s.blocked_mask_at(MONDAY_0800) & mask("games")


@pytest.mark.parametrize(
    ("level", "listed", "expected"),
    [
        ("primary", "games", "games"),
        ("primary", "social", "social"),
        ("primary", "violence", "violence"),
        ("lower_secondary", "violence", "violence"),
        ("lower_secondary", "games", None),
        ("upper_secondary", "violence", None),
        ("upper_secondary", "bypass", "bypass"),
    ],
)
def test_profiles(level, listed, expected):
    decision = policy.decide(school(level=level), "x.example", mask(listed), MONDAY_1200)
    assert (decision.category if isinstance(decision, Block) else None) == expected


def test_profile_defaults_are_inherited_and_overridden():
    prov = policyfile.parse_province(
        "mandatory: [csam]\nblockpage: {ipv4: 192.0.2.80}\nprofiles:\n"
        "  primary: {block: [adult], action: blockpage, safe_search_youtube: strict}\n"
        "  teachers: {block: [], safe_search: false}\n",
        "province.yaml",
        CATEGORIES,
    )
    primary = school(level="primary", prov=prov)
    assert (primary.action, primary.safe_search, primary.safe_search_youtube) == ("blockpage", True, "strict")
    own = school("action: nxdomain\nsafe_search_youtube: moderate\n", level="primary", prov=prov)
    assert (own.action, own.safe_search_youtube) == ("nxdomain", "moderate")
    teachers = school(level="teachers", prov=prov)
    assert teachers.safe_search is False
    assert policy.decide(teachers, "www.google.com", 0, 0) is ALLOW
    assert school("safe_search: true\n", level="teachers", prov=prov).safe_search is True


def test_every_table_host_is_rewritten_and_every_listed_engine_blocked():
    s = school()
    table = s.province.safe_search_table
    for host, target in table.rewrites_for(s.safe_search_youtube).items():
        assert policy.decide(s, host, 0, MONDAY_0800) == Rewrite(target)
    for row in table.no_safe_mode:
        assert summary(policy.decide(s, row.name, 0, MONDAY_0800))[:2] == ("block", "safe_search")


def test_explicitly_allowed():
    s = school("allow: [example.com]\ndeny: [ads.example.com]\n")
    assert policy.is_explicitly_allowed(s, "www.example.com")
    assert policy.is_explicitly_allowed(s, "example.com")
    assert not policy.is_explicitly_allowed(s, "x.ads.example.com")
    assert not policy.is_explicitly_allowed(s, "other.com")
    assert not policy.is_explicitly_allowed(school(), "example.com")


# ---------------------------------------------------------------------------------------------
# Schedules


BOARDING = (
    "schedules:\n  - {name: boarding-night, days: [sun, mon, tue, wed, thu], "
    'from: "21:30", to: "06:00", block: [social]}\n'
)


@pytest.mark.parametrize(
    ("body", "local", "blocked"),
    [
        # class hours, Monday to Friday 07:00-11:30: from inclusive, to exclusive
        (CLASS_HOURS, "2024-06-03 06:59", False),
        (CLASS_HOURS, "2024-06-03 07:00", True),
        (CLASS_HOURS, "2024-06-03 11:29", True),
        (CLASS_HOURS, "2024-06-03 11:30", False),
        (CLASS_HOURS, "2024-06-07 11:29", True),  # Friday
        (CLASS_HOURS, "2024-06-08 08:00", False),  # Saturday
        (CLASS_HOURS, "2024-06-09 08:00", False),  # Sunday
        # overnight 21:30-06:00, starting Sunday to Thursday
        (BOARDING, "2024-06-09 21:29", False),  # Sunday
        (BOARDING, "2024-06-09 21:30", True),
        (BOARDING, "2024-06-09 23:59", True),
        (BOARDING, "2024-06-10 00:00", True),  # Monday 00:00: Sunday's window across the week wrap
        (BOARDING, "2024-06-03 05:59", True),  # Monday morning, also the start of the week
        (BOARDING, "2024-06-03 06:00", False),
        (BOARDING, "2024-06-06 23:00", True),  # Thursday night
        (BOARDING, "2024-06-07 05:59", True),  # Friday morning: Thursday's window
        (BOARDING, "2024-06-07 21:30", False),  # Friday night: not a start day
        (BOARDING, "2024-06-08 05:00", False),  # Saturday morning
        (BOARDING, "2024-06-08 22:00", False),  # Saturday night
        # whole days and to: "24:00"
        ('schedules:\n  - {days: [sat, sun], from: "00:00", to: "24:00", block: [social]}\n', "2024-06-08 00:00", True),
        ('schedules:\n  - {days: [sat, sun], from: "00:00", to: "24:00", block: [social]}\n', "2024-06-09 23:59", True),
        (
            'schedules:\n  - {days: [sat, sun], from: "00:00", to: "24:00", block: [social]}\n',
            "2024-06-10 00:00",
            False,
        ),
        (
            'schedules:\n  - {days: [sat, sun], from: "00:00", to: "24:00", block: [social]}\n',
            "2024-06-07 23:59",
            False,
        ),
        ('schedules:\n  - {days: [sun], from: "22:00", to: "24:00", block: [social]}\n', "2024-06-09 23:59", True),
        ('schedules:\n  - {days: [sun], from: "22:00", to: "24:00", block: [social]}\n', "2024-06-10 00:00", False),
        # days left out: every day; full day names accepted
        ('schedules:\n  - {from: "12:00", to: "13:00", block: [social]}\n', "2024-06-08 12:30", True),
        ('schedules:\n  - {days: [Monday], from: "12:00", to: "13:00", block: [social]}\n', "2024-06-03 12:59", True),
        ('schedules:\n  - {days: [monday], from: "12:00", to: "13:00", block: [social]}\n', "2024-06-04 12:30", False),
        # an unquoted-looking single-digit hour
        ('schedules:\n  - {days: [mon], from: "7:05", to: "7:10", block: [social]}\n', "2024-06-03 07:05", True),
    ],
)
def test_schedule_windows(body, local, blocked):
    s = school(body)
    now = at(local)
    assert bool(s.blocked_mask_at(now) & mask("social")) is blocked
    decision = policy.decide(s, "facebook.com", mask("social"), now)
    assert summary(decision) == (block("social", Authority.SCHOOL) if blocked else "allow")
    assert bool(s.active_schedules(now)) is blocked


def test_active_schedules_and_blocked_mask():
    s = school(
        CLASS_HOURS
        + '  - {name: lunch, days: [mon], from: "11:00", to: "13:00", block: [gambling, violence]}\n'
        + '  - {name: evening, days: [mon], from: "20:00", to: "21:00", block: [adult]}\n'
    )
    base = mask("adult", "gambling", "drugs", "bypass")
    assert s.base_mask == base
    assert s.active_schedules(at("2024-06-03 06:00")) == ()
    assert s.blocked_mask_at(at("2024-06-03 06:00")) == base
    assert s.active_schedules(at("2024-06-03 08:00")) == ("class-hours",)
    assert s.blocked_mask_at(at("2024-06-03 08:00")) == base | mask("social", "games")
    assert s.active_schedules(at("2024-06-03 11:15")) == ("class-hours", "lunch")
    assert s.blocked_mask_at(at("2024-06-03 11:15")) == base | mask("social", "games", "violence")
    assert s.active_schedules(at("2024-06-03 12:00")) == ("lunch",)
    assert s.blocked_mask_at(at("2024-06-03 12:00")) == base | mask("violence")
    # a schedule that blocks only what the base already blocks is still reported as active
    assert s.active_schedules(at("2024-06-03 20:30")) == ("evening",)
    assert s.blocked_mask_at(at("2024-06-03 20:30")) == base


def test_schedule_block_reason_names_the_schedule():
    decision = policy.decide(school(CLASS_HOURS), "game.example", mask("games"), MONDAY_0800)
    assert decision.reason == "category 'games' is blocked by schedule 'class-hours' (mon,tue,wed,thu,fri 07:00-11:30)"


def test_decision_depends_on_the_minute_only():
    s = school(CLASS_HOURS)
    start = at("2024-06-03 07:00")
    assert all(
        policy.decide(s, "fb.example", mask("social"), start + second)
        == policy.decide(s, "fb.example", mask("social"), start)
        for second in (0, 0.5, 30, 59.999)
    )
    assert policy.decide(s, "fb.example", mask("social"), start - 0.001) is ALLOW


@pytest.mark.parametrize(
    ("tz", "blocked"),
    [
        ("Asia/Ho_Chi_Minh", True),  # 01:00 UTC is 08:00 on Monday in Vietnam
        ("Europe/London", False),  # but 02:00 in London
        ("America/Los_Angeles", False),  # and Sunday 18:00 in Los Angeles
        ("Asia/Tokyo", True),  # 10:00 in Tokyo
        ("UTC", False),
    ],
)
def test_schedules_use_the_province_timezone(tz, blocked):
    instant = datetime.datetime(2024, 6, 3, 1, 0, tzinfo=datetime.UTC).timestamp()
    s = school(CLASS_HOURS, tz=tz)
    assert bool(s.blocked_mask_at(instant) & mask("social")) is blocked
    assert s.province.timezone == tz


def test_schedules_follow_daylight_saving_wall_clock():
    # Europe/Berlin: 07:00 local is 05:00 UTC in summer and 06:00 UTC in winter.
    s = school(CLASS_HOURS, tz="Europe/Berlin")
    summer = datetime.datetime(2024, 6, 3, 5, 0, tzinfo=datetime.UTC).timestamp()
    winter = datetime.datetime(2024, 1, 8, 5, 0, tzinfo=datetime.UTC).timestamp()
    assert s.active_schedules(summer) == ("class-hours",)
    assert s.active_schedules(winter) == ()
    assert s.active_schedules(winter + 3600) == ("class-hours",)


def test_default_timezone():
    prov = policyfile.parse_province("profiles: {p: {block: []}}\n", "province.yaml", CATEGORIES)
    assert prov.timezone == "Asia/Ho_Chi_Minh"
    assert prov.mandatory == ()


# ---------------------------------------------------------------------------------------------
# IDN


@pytest.mark.parametrize(
    ("entry", "query"),
    [
        ("bóng-đá.vn", "xn--bng--8na8hpj.vn"),
        ("Bóng-Đá.VN.", "www.xn--bng--8na8hpj.vn"),
        ("xn--bng--8na8hpj.vn", "xn--bng--8na8hpj.vn"),
        ("trường.edu.vn", "xn--trng-rib8295b.edu.vn"),
        ("học.trường.edu.vn", "a.xn--hc-68s.xn--trng-rib8295b.edu.vn"),
    ],
)
@pytest.mark.parametrize("key", ["allow", "deny"])
def test_idn_entries_match_the_a_label(entry, query, key):
    s = school(f'{key}: ["{entry}"]\n')
    expected = "allow" if key == "allow" else block("deny", Authority.DENY)
    listed = mask("adult")
    assert summary(policy.decide(s, query, listed, MONDAY_0800)) == expected
    assert all(e.isascii() and e == e.lower() for e in getattr(s, key))


def test_idn_entry_does_not_match_the_plain_ascii_look_alike():
    s = school('deny: ["bóng-đá.vn"]\n')
    assert policy.decide(s, "bong-da.vn", 0, MONDAY_0800) is ALLOW


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Example.COM.", "example.com"),
        ("  www.example.com ", "www.example.com"),
        ("bóng-đá.vn", "xn--bng--8na8hpj.vn"),
        ("ĐẠI-HỌC.vn", "xn--i-hc-zua2256b5ia.vn"),
        ("_dns.resolver.arpa", "_dns.resolver.arpa"),
    ],
)
def test_normalize_name(text, expected):
    assert policy.normalize_name(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty name"),
        (".", "empty name"),
        ("https://example.com/page", "is a URL"),
        ("example.com/page", "is a URL"),
        ("*.example.com", "write 'example.com'"),
        ("192.0.2.1", "is an IP address"),
        ("exa mple.com", "not a valid domain name"),
        ("-bad.example.com", "not a valid domain name"),
        ("a..example.com", "not a valid domain name"),
        ("xn--zz.example.com", "invalid A-label"),
        ("a" * 64 + ".com", "not a valid domain name"),
        (".".join(["a" * 63] * 4) + ".com", "longer than 253"),
    ],
)
def test_normalize_name_rejects(text, message):
    with pytest.raises(ValueError, match=message.replace("*", r"\*")):
        policy.normalize_name(text)


# ---------------------------------------------------------------------------------------------
# explain and helpers


def test_explain_lines_for_an_allow_override():
    s = school("allow: [khanacademy.org]\n" + CLASS_HOURS)
    lines = policy.explain(s, "www.khanacademy.org", mask("adult", "social"), MONDAY_0800).lines()
    assert lines == [
        "school: s1",
        "name: www.khanacademy.org",
        "time: 2024-06-03 08:00 mon (Asia/Ho_Chi_Minh)",
        "decision: allow",
        "rule: allow entry 'khanacademy.org' (overrides adult, social)",
        "listed in: adult, social",
        "blocked now: adult, gambling, drugs, malware, phishing, csam, games, social, bypass",
        "active schedules: class-hours",
        "allow/deny entry: khanacademy.org",
    ]


@pytest.mark.parametrize(
    ("body", "name", "listed", "decision_line", "rule"),
    [
        (
            "",
            "bad.example",
            ("malware",),
            "decision: block (nxdomain, category malware, authority province)",
            "rule: category 'malware' is mandatory for every school",
        ),
        (
            "",
            "porn.example",
            ("adult",),
            "decision: block (nxdomain, category adult, authority school)",
            "rule: category 'adult' is blocked by profile 'upper_secondary'",
        ),
        (
            "block: [games]\n",
            "g.example",
            ("games",),
            "decision: block (nxdomain, category games, authority school)",
            "rule: category 'games' is blocked by this school's block list",
        ),
        (
            "deny: [x.example]\n",
            "a.x.example",
            (),
            "decision: block (nxdomain, category deny, authority deny)",
            "rule: deny entry 'x.example'",
        ),
        (
            "",
            "www.google.com.vn",
            (),
            "decision: rewrite (CNAME forcesafesearch.google.com)",
            "rule: safe search (google): www.google.com.vn -> forcesafesearch.google.com",
        ),
        (
            "",
            "search.yahoo.com",
            (),
            "decision: block (nxdomain, category safe_search, authority school)",
            "rule: yahoo has no safe search mode (search.yahoo.com)",
        ),
        (
            "",
            "fb.example",
            ("social",),
            "decision: allow",
            "rule: listed, but none of its categories is blocked for this school now",
        ),
        ("", "www.example.com", (), "decision: allow", "rule: no rule matched"),
        (
            "",
            "use-application-dns.net",
            (),
            "decision: block (nxdomain, category bypass, authority province)",
            "rule: Firefox DNS-over-HTTPS canary",
        ),
    ],
)
def test_explain_rule(body, name, listed, decision_line, rule):
    lines = policy.explain(school(body), name, mask(*listed), MONDAY_1200).lines()
    assert lines[3] == decision_line
    assert lines[4] == rule


def test_category_mask():
    assert mask() == 0
    assert mask("adult") == 1
    assert mask("bypass", "adult") == 1 | 1 << 9
    with pytest.raises(KeyError):
        mask("nope")


def test_policies_networks_and_lookup_by_id(tmp_path):
    (tmp_path / "province.yaml").write_text(PROVINCE.format(tz=HCM))
    (tmp_path / "a.yaml").write_text('id: a\nlevel: primary\nnetworks: [10.0.0.0/24, "2001:db8::/48"]\n')
    (tmp_path / "b.yaml").write_text("id: b\nlevel: primary\nnetworks: [10.0.1.0/24]\n")
    loaded = policyfile.load_policies(tmp_path, CATEGORIES)
    assert [s.id for s in loaded.schools] == ["a", "b"]
    assert loaded.school("b").name == "b"
    assert loaded.school("c") is None
    assert [(str(n), s.id) for n, s in loaded.networks()] == [
        ("10.0.0.0/24", "a"),
        ("2001:db8::/48", "a"),
        ("10.0.1.0/24", "b"),
    ]


def test_the_model_does_not_import_the_file_reader():
    # policyfile builds policy values, so it imports policy; the reverse, even inside a function,
    # would make the two import each other.
    tree = ast.parse(Path(policy.__file__).with_name("policy.py").read_text())  # the source, also when compiled
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {name for name in imported if "policyfile" in name or "yamlfile" in name}
