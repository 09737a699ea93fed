"""policyfile: province.yaml and school files; every problem as file:line: key.path: message, all at once."""

import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver import yamlfile
from resolver.filtering import policy, policyfile
from resolver.filtering.policy import Action
from resolver.filtering.safesearch import YouTubeMode
from resolver.filtering.schools import SchoolDirectory
from resolver.yamlfile import ConfigError

CATEGORIES = ("adult", "gambling", "violence", "drugs", "malware", "phishing", "csam", "games", "social", "bypass")
SHIPPED = Path(__file__).resolve().parents[2] / "policies"

PROVINCE = """\
mandatory: [csam, malware, phishing]
timezone: Asia/Ho_Chi_Minh
info_url: "http://blocked.example.vn/"
profiles:
  primary:          {block: [adult, gambling, violence, drugs, games, social, bypass]}
  lower_secondary:  {block: [adult, gambling, violence, drugs, bypass]}
  upper_secondary:  {block: [adult, gambling, drugs, bypass]}
"""

# The school file of docs/policy.md, verbatim.
NGUYEN_DU = """\
id: thpt-nguyen-du
name: "THPT Nguyễn Du"
level: upper_secondary
networks: [203.0.113.0/28, "2001:db8:12::/48"]
block: [games]                 # added to the profile's categories
unblock: [social]              # removed from the profile (never a mandatory one)
allow: [khanacademy.org]       # subtree; beats school-chosen categories and deny
deny: [game.example.com]       # subtree
safe_search: true
schedules:
  - {name: class-hours, days: [mon, tue, wed, thu, fri], from: "07:00", to: "11:30", block: [social, games]}
action: nxdomain               # nxdomain | null_ip | blockpage | refused
"""


def province(text=PROVINCE):
    return policyfile.parse_province(text, "province.yaml", CATEGORIES)


def problems(exc_info):
    return [str(p) for p in exc_info.value.problems]


def test_documented_examples_parse():
    prov = province()
    assert prov.mandatory == ("csam", "malware", "phishing")
    assert prov.timezone == "Asia/Ho_Chi_Minh"
    assert prov.info_url == "http://blocked.example.vn/"
    assert list(prov.profiles) == ["primary", "lower_secondary", "upper_secondary"]
    assert prov.profiles["upper_secondary"].block == ("adult", "gambling", "drugs", "bypass")
    # defaults for the optional keys
    assert prov.blocked_ttl_seconds == 60.0
    assert prov.action is Action.NXDOMAIN
    assert prov.safe_search is True
    assert prov.safe_search_youtube is YouTubeMode.MODERATE
    assert prov.bypass_prevention is True
    assert prov.blockpage is None

    school = policyfile.parse_school(NGUYEN_DU, "policies/thpt-nguyen-du.yaml", CATEGORIES, prov)
    assert (school.id, school.name, school.level) == ("thpt-nguyen-du", "THPT Nguyễn Du", "upper_secondary")
    assert [str(n) for n in school.networks] == ["203.0.113.0/28", "2001:db8:12::/48"]
    assert (school.block, school.unblock) == (("games",), ("social",))
    assert (school.allow, school.deny) == (("khanacademy.org",), ("game.example.com",))
    assert school.safe_search is True and school.action is Action.NXDOMAIN
    [schedule] = school.schedules
    assert (schedule.name, schedule.days, schedule.from_minute, schedule.to_minute, schedule.block) == (
        "class-hours",
        (0, 1, 2, 3, 4),
        420,
        690,
        ("social", "games"),
    )
    assert school.base_mask == policy.category_mask(["adult", "gambling", "drugs", "bypass", "games"], CATEGORIES)


def test_optional_province_keys():
    prov = province(
        PROVINCE + "blocked_ttl_seconds: 30.5\naction: blockpage\n"
        'blockpage: {ipv4: 192.0.2.80, ipv6: "2001:DB8::80"}\n'
        "safe_search: false\nsafe_search_youtube: strict\nbypass_prevention: false\n"
    )
    assert prov.blocked_ttl_seconds == 30.5
    assert prov.action is Action.BLOCKPAGE
    assert (prov.blockpage.ipv4, prov.blockpage.ipv6) == ("192.0.2.80", "2001:db8::80")
    assert prov.blockpage_ipv4 == bytes([192, 0, 2, 80])
    assert (prov.safe_search, prov.safe_search_youtube, prov.bypass_prevention) == (False, "strict", False)
    school = policyfile.parse_school("id: s\nlevel: primary\n", "s.yaml", CATEGORIES, prov)
    assert (school.action, school.safe_search, school.safe_search_youtube) == ("blockpage", False, "strict")
    assert school.networks == () and school.name == "s"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("id: s\nlevel: primary\nblok: [games]\n", "s.yaml:3: blok: unknown key 'blok' (known keys: "),
        (
            "id: s\nlevel: primary\nblock: [games, gamez]\n",
            "s.yaml:3: block[1]: unknown category 'gamez' (did you mean 'games'?)",
        ),
        (
            "id: s\nlevel: primary\nunblock:\n  - social\n  - csam\n",
            "s.yaml:5: unblock[1]: category 'csam' is mandatory in province.yaml and cannot be unblocked",
        ),
        (
            "id: s\nlevel: primary\nblock: [games]\nunblock: [games]\n",
            "s.yaml:4: unblock[0]: category 'games' is in both block and unblock",
        ),
        (
            "id: s\nlevel: primary\naction: drop\n",
            "s.yaml:3: action: unknown action 'drop' (expected one of nxdomain, null_ip, blockpage, refused)",
        ),
        ("id: s\nlevel: primary\naction: nodata\n", "s.yaml:3: action: unknown action 'nodata'"),
        (
            "id: s\nlevel: primary\naction: blockpage\n",
            "s.yaml:3: action: action 'blockpage' needs `blockpage: {ipv4: ..., ipv6: ...}` in province.yaml",
        ),
        (
            "id: s\nlevel: primary\nnetworks: [10.0.0.0/24, 10.0.0.300/24]\n",
            "s.yaml:3: networks[1]: '10.0.0.300/24' is not an IPv4 or IPv6 network",
        ),
        (
            "id: s\nlevel: primary\nnetworks:\n  - 10.0.0.1/24\n",
            "s.yaml:4: networks[0]: '10.0.0.1/24' has host bits set: did you mean 10.0.0.0/24?",
        ),
        (
            'id: s\nlevel: primary\nnetworks: ["::ffff:203.0.113.0/120"]\n',
            "s.yaml:3: networks[0]: '::ffff:203.0.113.0/120' is an IPv4-mapped network: write 203.0.113.0/24",
        ),
        (
            "id: s\nlevel: primary\nnetworks:\n  - 10.0.5.0/24\n  - 10.0.5.0/24\n",
            "s.yaml:5: networks[1]: 10.0.5.0/24 is already a network of the same school (s.yaml:4); "
            "a network belongs to one school",
        ),
        ("id: s\nlevel: primary\nnetworks: 10.0.0.0/24\n", "s.yaml:3: networks: expected a list, got a string"),
        ("id: other\nlevel: primary\n", "s.yaml:1: id: id 'other' does not match the file name 's.yaml'"),
        ("id: S_1\nlevel: primary\n", "s.yaml:1: id: id 'S_1' must be lower-case letters"),
        ("level: primary\n", "s.yaml:1: missing required key 'id'"),
        ("id: s\n", "s.yaml:1: missing required key 'level'"),
        (
            "id: s\nlevel: college\n",
            "s.yaml:2: level: unknown level 'college' (profiles in province.yaml: primary, lower_secondary, "
            "upper_secondary)",
        ),
        ("id: s\nlevel: primry\n", "s.yaml:2: level: unknown level 'primry' (did you mean 'primary'?)"),
        (
            'id: s\nlevel: primary\nallow: ["https://khanacademy.org/"]\n',
            "s.yaml:3: allow[0]: 'https://khanacademy.org/' is a URL; write only the domain name",
        ),
        (
            'id: s\nlevel: primary\ndeny:\n  - ok.example\n  - "*.game.example"\n',
            "s.yaml:5: deny[1]: write 'game.example' instead of '*.game.example'",
        ),
        ("id: s\nlevel: primary\ndeny: [203.0.113.9]\n", "s.yaml:3: deny[0]: '203.0.113.9' is an IP address"),
        ("id: s\nlevel: primary\nallow: [42]\n", "s.yaml:3: allow[0]: expected a string, got an integer"),
        ("id: s\nlevel: primary\nsafe_search: maybe\n", "s.yaml:3: safe_search: expected a boolean, got a string"),
        (
            "id: s\nlevel: primary\nsafe_search_youtube: medium\n",
            "s.yaml:3: safe_search_youtube: unknown YouTube mode 'medium' (expected one of moderate, strict, off)",
        ),
        ("id: s\nlevel: primary\nlevel: upper_secondary\n", "s.yaml:3: level: duplicate key"),
        ("id: s\nlevel: primary\nblock: [games\n", "s.yaml:4: invalid YAML"),
        ("- id: s\n", "s.yaml:1: expected a mapping, got a list"),
        # schedules
        (
            'id: s\nlevel: primary\nschedules:\n  - {from: "07:00", to: 11:30, block: [games]}\n',
            's.yaml:4: schedules[0].to: write the time in quotes, like "07:00" (YAML read the unquoted value as the '
            "number 690)",
        ),
        (
            'id: s\nlevel: primary\nschedules:\n  - {from: "25:00", to: "08:00", block: [games]}\n',
            "s.yaml:4: schedules[0].from: expected a time \"HH:MM\" from 00:00 to 23:59, got '25:00'",
        ),
        (
            'id: s\nlevel: primary\nschedules:\n  - {from: "24:00", to: "08:00", block: [games]}\n',
            "s.yaml:4: schedules[0].from: expected a time \"HH:MM\" from 00:00 to 23:59, got '24:00'",
        ),
        (
            'id: s\nlevel: primary\nschedules:\n  - {from: "07:00", to: "24:01", block: [games]}\n',
            "s.yaml:4: schedules[0].to: expected a time \"HH:MM\" from 00:00 to 24:00, got '24:01'",
        ),
        (
            'id: s\nlevel: primary\nschedules:\n  - {from: "07:00", to: "07:00", block: [games]}\n',
            "s.yaml:4: schedules[0].to: 'to' equals 'from' (07:00): the window is empty",
        ),
        (
            'id: s\nlevel: primary\nschedules:\n  - {from: "00:00", to: "00:00", block: [games]}\n',
            "s.yaml:4: schedules[0].to: 'to' equals 'from' (00:00)",
        ),
        (
            'id: s\nlevel: primary\nschedules:\n  - {to: "08:00", block: [games]}\n',
            "s.yaml:4: schedules[0]: missing required key 'from'",
        ),
        (
            'id: s\nlevel: primary\nschedules:\n  - {from: "07:00", to: "08:00"}\n',
            "s.yaml:4: schedules[0]: missing required key 'block'",
        ),
        (
            'id: s\nlevel: primary\nschedules:\n  - {from: "07:00", to: "08:00", block: []}\n',
            "s.yaml:4: schedules[0].block: a schedule must block at least one category",
        ),
        (
            'id: s\nlevel: primary\nschedules:\n  - name: x\n    from: "07:00"\n    to: "08:00"\n'
            "    block: [games, poker]\n",
            "s.yaml:7: schedules[0].block[1]: unknown category 'poker'",
        ),
        (
            "id: s\nlevel: primary\nschedules:\n"
            '  - {days: [mon, funday], from: "07:00", to: "08:00", block: [games]}\n',
            "s.yaml:4: schedules[0].days[1]: unknown day 'funday' (expected mon, tue, wed, thu, fri, sat, sun)",
        ),
        (
            'id: s\nlevel: primary\nschedules:\n  - {days: [], from: "07:00", to: "08:00", block: [games]}\n',
            "s.yaml:4: schedules[0].days: give at least one day",
        ),
        (
            'id: s\nlevel: primary\nschedules:\n  - {from: "07:00", to: "08:00", block: [games], unblock: [social]}\n',
            "s.yaml:4: schedules[0].unblock: unknown key 'unblock'",
        ),
        (
            'id: s\nlevel: primary\nschedules:\n  - {name: a, from: "07:00", to: "08:00", block: [games]}\n'
            '  - {name: a, from: "09:00", to: "10:00", block: [games]}\n',
            "s.yaml:5: schedules[1].name: schedule name 'a' is used twice",
        ),
        ('id: s\nlevel: primary\nschedules: {from: "07:00"}\n', "s.yaml:3: schedules: expected a list, got a mapping"),
        (
            "id: s\nlevel: primary\nschedules:\n  - class-hours\n",
            "s.yaml:4: schedules[0]: expected a schedule (a mapping with from, to and block), got a string",
        ),
        (
            'id: s\nlevel: primary\nschedules:\n  - {days: mon, from: "07:00", to: "08:00", block: [games]}\n',
            "s.yaml:4: schedules[0].days: expected a list, got a string",
        ),
        (
            'id: s\nlevel: primary\nschedules:\n  - {days: [1], from: "07:00", to: "08:00", block: [games]}\n',
            "s.yaml:4: schedules[0].days[0]: expected a string, got an integer",
        ),
        ("", "s.yaml:1: missing required key 'id'"),
        ("id: s\nlevel: primary\nname: 5\n", "s.yaml:3: name: expected a string, got an integer"),
        ("id: s\nlevel: [primary]\n", "s.yaml:2: level: expected a string, got a list"),
        ("id: s\nlevel: primary\nblock: games\n", "s.yaml:3: block: expected a list, got a string"),
        ("id: s\nlevel: primary\nnetworks: [42]\n", "s.yaml:3: networks[0]: expected a string, got an integer"),
        ("id: s\nlevel: primary\nallow: ['']\n", "s.yaml:3: allow[0]: '' is not a valid domain name (empty name)"),
    ],
)
def test_school_errors(text, expected):
    with pytest.raises(ConfigError) as caught:
        policyfile.parse_school(text, "s.yaml", CATEGORIES, province())
    assert any(line.startswith(expected) for line in problems(caught)), problems(caught)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("blocked_ttl_seconds: -1\n", "province.yaml:8: blocked_ttl_seconds: expected 0 to 86400 seconds, got -1"),
        ("blocked_ttl_seconds: 90000\n", "province.yaml:8: blocked_ttl_seconds: expected 0 to 86400 seconds"),
        (
            "blocked_ttl_seconds: true\n",
            "province.yaml:8: blocked_ttl_seconds: expected an integer or a number, got a boolean",
        ),
        ("action: blockpage\n", "province.yaml:8: action: action 'blockpage' needs `blockpage"),
        ("action: sinkhole\n", "province.yaml:8: action: unknown action 'sinkhole'"),
        ('blockpage: {ipv4: "2001:db8::1"}\n', "province.yaml:8: blockpage.ipv4: '2001:db8::1' is not an IPv4 address"),
        ("blockpage: {ipv6: 192.0.2.1}\n", "province.yaml:8: blockpage.ipv6: '192.0.2.1' is not an IPv6 address"),
        ("blockpage: {}\n", "province.yaml:8: blockpage: give the block page's ipv4, ipv6 or both"),
        ("blockpage: {ipv4: 192.0.2.1, url: x}\n", "province.yaml:8: blockpage.url: unknown key 'url'"),
        ("safe_search_youtube: loose\n", "province.yaml:8: safe_search_youtube: unknown YouTube mode 'loose'"),
        ("bypass_prevention: sometimes\n", "province.yaml:8: bypass_prevention: expected a boolean, got a string"),
        ("schedules: []\n", "province.yaml:8: schedules: unknown key 'schedules' (known keys: "),
        ("blocked_ttl_seconds: .nan\n", "province.yaml:8: blocked_ttl_seconds: expected 0 to 86400 seconds, got nan"),
    ],
)
def test_province_optional_key_errors(extra, expected):
    with pytest.raises(ConfigError) as caught:
        province(PROVINCE + extra)
    assert any(line.startswith(expected) for line in problems(caught)), problems(caught)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "mandatory: [csam, malwares]\nprofiles: {p: {block: []}}\n",
            "province.yaml:1: mandatory[1]: unknown category 'malwares' (did you mean 'malware'?)",
        ),
        (
            "timezone: Asia/Saigonn\nprofiles: {p: {block: []}}\n",
            "province.yaml:1: timezone: unknown time zone 'Asia/Saigonn'",
        ),
        (
            "info_url: blocked.example.vn\nprofiles: {p: {block: []}}\n",
            "province.yaml:1: info_url: 'blocked.example.vn' is not an http:// or https:// URL",
        ),
        ("mandatory: [csam]\n", "province.yaml:1: missing required key 'profiles'"),
        (
            "profiles:\n  primary:\n    block: [adult, porn]\n",
            "province.yaml:3: profiles.primary.block[1]: unknown category 'porn'",
        ),
        (
            "profiles:\n  primary: {block: [adult], blok: [x]}\n",
            "province.yaml:2: profiles.primary.blok: unknown key 'blok'",
        ),
        (
            "profiles:\n  Primary School: {block: [adult]}\n",
            "province.yaml:2: profiles.Primary School: profile name 'Primary School' must be lower-case",
        ),
        (
            "profiles:\n  primary: {block: [adult], action: blockpage}\n",
            "province.yaml:2: profiles.primary.action: action 'blockpage' needs `blockpage",
        ),
        (
            "profiles:\n  primary: {safe_search: 1}\n",
            "province.yaml:2: profiles.primary.safe_search: expected a boolean, got an integer",
        ),
        ("profiles: [primary]\n", "province.yaml:1: profiles: expected a mapping, got a list"),
        ("profiles:\n", "province.yaml:1: profiles: give at least one profile: every school's level names one"),
        ("mandatory: [csam]\nprofiles: {}\n", "province.yaml:2: profiles: give at least one profile"),
        ("mandatory: csam\nprofiles: {p: {}}\n", "province.yaml:1: mandatory: expected a list, got a string"),
    ],
)
def test_province_errors(text, expected):
    with pytest.raises(ConfigError) as caught:
        province(text)
    assert any(line.startswith(expected) for line in problems(caught)), problems(caught)


@pytest.mark.parametrize(
    ("parse", "text", "expected"),
    [
        (
            "school",
            "id: s\nlevel: primary\nschedules: [x]\n",
            "s.yaml:3: schedules[0]: expected a schedule (a mapping with from, to and block), got a string",
        ),
        (
            "province",
            "blockpage: 5\nprofiles: {p: {}}\n",
            "province.yaml:1: blockpage: expected a mapping, got an integer",
        ),
        ("province", "profiles: 5\n", "province.yaml:1: profiles: expected a mapping, got an integer"),
    ],
)
def test_one_mistake_is_one_problem(parse, text, expected):
    with pytest.raises(ConfigError) as caught:
        if parse == "school":
            policyfile.parse_school(text, "s.yaml", CATEGORIES, province())
        else:
            province(text)
    assert problems(caught) == [expected]


def test_every_problem_names_file_line_and_key_path():
    text = (
        "id: s\nlevel: primary\nblock: [gamez]\nunblock: [malware]\naction: drop\n"
        'networks: [10.0.0.1/24]\nallow: ["http://x"]\nschedules:\n  - {from: 7, to: "8:00", block: [x]}\n'
    )
    with pytest.raises(ConfigError) as caught:
        policyfile.parse_school(text, "s.yaml", CATEGORIES, province())
    assert [(p.file, p.line, p.key_path) for p in caught.value.problems] == [
        ("s.yaml", 6, "networks[0]"),
        ("s.yaml", 3, "block[0]"),
        ("s.yaml", 4, "unblock[0]"),
        ("s.yaml", 7, "allow[0]"),
        ("s.yaml", 9, "schedules[0].from"),
        ("s.yaml", 9, "schedules[0].block[0]"),
        ("s.yaml", 5, "action"),
    ]
    assert str(caught.value).splitlines() == [str(p) for p in caught.value.problems]
    assert all(
        line.startswith(f"s.yaml:{p.line}: {p.key_path}: ")
        for line, p in zip(problems(caught), caught.value.problems, strict=True)
    )


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 2000),
    st.floats(allow_nan=False),
    st.sampled_from(["primary", "games", "gamez", "07:00", "24:00", "mon", "funday", "10.0.0.0/24", "10.0.0.1/24"]),
    st.sampled_from(["example.com", "*.x.example", "http://x", "off", "strict", "blockpage", "drop", "s", "S"]),
    st.text(max_size=8),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text("abxyz_", min_size=1, max_size=5), inner, max_size=3)
    ),
)
SCHEDULE = st.dictionaries(st.sampled_from(["name", "days", "from", "to", "block", "unblock"]), VALUES, max_size=5)
SCHOOL_KEYS = ["id", "name", "level", "networks", "block", "unblock", "allow", "deny", "safe_search"]
SCHOOL_KEYS += ["safe_search_youtube", "action", "blok"]
SCHOOL = st.dictionaries(st.sampled_from(SCHOOL_KEYS), VALUES, max_size=8) | st.fixed_dictionaries(
    {"id": st.just("s"), "level": st.just("primary"), "schedules": st.lists(SCHEDULE, max_size=3)}
)
PROVINCE_KEYS = ["mandatory", "timezone", "info_url", "blocked_ttl_seconds", "action", "safe_search"]
PROVINCE_KEYS += ["safe_search_youtube", "bypass_prevention", "blockpage", "profiles", "schedules"]
PROVINCE_FILE = st.dictionaries(st.sampled_from(PROVINCE_KEYS), VALUES, max_size=6) | st.fixed_dictionaries(
    {"profiles": st.dictionaries(st.sampled_from(["primary", "P", ""]), VALUES, max_size=2)},
    optional={"blockpage": VALUES, "mandatory": VALUES},
)


def parse_either(kind, text):
    if kind == "school":
        return policyfile.parse_school(text, "s.yaml", CATEGORIES, province())
    return policyfile.parse_province(text, "province.yaml", CATEGORIES)


@settings(max_examples=150, deadline=None, database=None)
@given(data=st.data())
@pytest.mark.parametrize("kind", ["school", "province"])
def test_any_policy_file_gives_a_policy_or_problems_naming_file_line_and_key(kind, data):
    # Whatever an admin writes: a policy, or ConfigError lines that each point into the file.
    document = data.draw(st.one_of(SCHOOL if kind == "school" else PROVINCE_FILE, VALUES))
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    try:
        parse_either(kind, text)
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.file == ("s.yaml" if kind == "school" else "province.yaml")
            assert 1 <= problem.line <= max(1, len(text.splitlines())), (text, problem)
            top_key = problem.key_path.split(".")[0].split("[")[0]
            if problem.key_path:
                assert isinstance(document, dict) and top_key in document, (text, problem)
            else:
                assert problem.message.startswith(("missing required key", "expected a mapping")), (text, problem)


def test_whole_day_and_to_2400_are_accepted():
    school = policyfile.parse_school(
        'id: s\nlevel: primary\nschedules:\n  - {from: "00:00", to: "24:00", block: [games]}\n'
        '  - {from: "22:00", to: "24:00", block: [social]}\n',
        "s.yaml",
        CATEGORIES,
        province(),
    )
    assert [(s.from_minute, s.to_minute) for s in school.schedules] == [(0, 1440), (1320, 1440)]
    assert [s.name for s in school.schedules] == ["schedule-1", "schedule-2"]


def test_unquoted_time_with_a_leading_zero_is_read_as_text():
    # YAML 1.1 reads 7:30 as the number 450, but 07:30 as the string "07:30".
    school = policyfile.parse_school(
        'id: s\nlevel: primary\nschedules:\n  - {from: 07:30, to: "08:00", block: [games]}\n',
        "s.yaml",
        CATEGORIES,
        province(),
    )
    assert school.schedules[0].from_minute == 450


@pytest.mark.parametrize(
    ("value", "mode"), [("off", "off"), ('"off"', "off"), ("strict", "strict"), ("moderate", "moderate")]
)
def test_youtube_modes(value, mode):
    school = policyfile.parse_school(
        f"id: s\nlevel: primary\nsafe_search_youtube: {value}\n", "s.yaml", CATEGORIES, province()
    )
    assert school.safe_search_youtube == mode


def test_empty_lists_and_names():
    school = policyfile.parse_school(
        "id: s\nlevel: primary\nblock:\nunblock:\nallow:\ndeny: []\nnetworks:\n", "s.yaml", CATEGORIES, province()
    )
    assert (school.block, school.unblock, school.allow, school.deny, school.networks) == ((), (), (), (), ())


def test_allow_and_deny_are_normalized_and_deduplicated():
    school = policyfile.parse_school(
        'id: s\nlevel: primary\nallow: [Example.COM., example.com, "bóng-đá.vn"]\n', "s.yaml", CATEGORIES, province()
    )
    assert school.allow == ("example.com", "xn--bng--8na8hpj.vn")


# ---------------------------------------------------------------------------------------------
# load_policies: a directory


def write(directory, files):
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def test_shipped_policies_load():
    loaded = policyfile.load_policies(SHIPPED, CATEGORIES)
    assert {s.id for s in loaded.schools} == {"demo-local", "th-kim-dong", "thcs-le-loi", "thpt-nguyen-du"}
    assert loaded.province.mandatory == ("csam", "malware", "phishing")
    assert loaded.province.timezone == "Asia/Ho_Chi_Minh"
    assert loaded.province.info_url == "http://blocked.example.vn/"
    assert "xn--bng--8na8hpj.vn" in loaded.school("thcs-le-loi").allow
    assert loaded.school("thcs-le-loi").action is Action.NULL_IP
    assert loaded.school("th-kim-dong").action is Action.BLOCKPAGE
    for school in loaded.schools:
        assert Path(school.file).stem == school.id


def test_nested_networks_are_allowed_and_the_most_specific_wins(tmp_path):
    # A district office's /16 around its schools' networks, and a school's own lab /28 inside its /24.
    write(
        tmp_path,
        {
            "province.yaml": PROVINCE,
            "district.yaml": 'id: district\nlevel: primary\nnetworks: [10.1.0.0/16, "2001:db8::/32"]\n',
            "a.yaml": 'id: a\nlevel: primary\nnetworks: [10.1.2.0/24, 10.1.2.16/28, "2001:db8:5::/48"]\n',
            "b.yaml": "id: b\nlevel: primary\nnetworks: [10.1.3.0/24]\n",
        },
    )
    loaded = policyfile.load_policies(tmp_path, CATEGORIES)
    directory = SchoolDirectory.build(loaded.networks())
    school_of = {ip: directory.lookup(ip).id for ip in ("10.1.2.34", "10.1.2.17", "10.1.3.1", "10.1.9.9")}
    assert school_of == {"10.1.2.34": "a", "10.1.2.17": "a", "10.1.3.1": "b", "10.1.9.9": "district"}
    assert directory.lookup("2001:db8:5::1").id == "a"
    assert directory.lookup("2001:db8:6::1").id == "district"


def test_the_same_network_in_two_files_names_both(tmp_path):
    write(
        tmp_path,
        {
            "province.yaml": PROVINCE,
            "a.yaml": "id: a\nlevel: primary\nnetworks: [10.0.0.0/16]\n",
            "b.yaml": "id: b\nlevel: primary\nnetworks:\n  - 192.0.2.0/24\n  - 10.0.0.0/16\n",
            "c.yaml": 'id: c\nlevel: primary\nnetworks: ["2001:db8::/32"]\n',
            "d.yaml": 'id: d\nlevel: primary\nnetworks: ["2001:DB8::/32", 10.1.0.0/16]\n',
        },
    )
    with pytest.raises(ConfigError) as caught:
        policyfile.load_policies(tmp_path, CATEGORIES)
    a, b, c, d = (str(tmp_path / f"{x}.yaml") for x in "abcd")
    one = "a network belongs to one school"
    assert problems(caught) == [
        f"{b}:5: networks[1]: 10.0.0.0/16 is already a network of school 'a' ({a}:3); {one}",
        f"{d}:3: networks[0]: 2001:db8::/32 is already a network of school 'c' ({c}:3); {one}",
    ]


def test_all_problems_in_all_files_at_once(tmp_path):
    write(
        tmp_path,
        {
            "province.yaml": PROVINCE + "timezone2: x\n",
            "a.yaml": "id: a\nlevel: primary\nblock: [gamez]\n",
            "b.yaml": "id: b\nlevel: primary\nnetworks: [10.0.0.0/8\n",  # invalid YAML
            "c.yaml": "id: wrong\nlevel: primary\n",
            "d.yml": "id: d\nlevel: primary\n",
            "ok.yaml": "id: ok\nlevel: primary\n",
            "README.md": "not a policy\n",
        },
    )
    (tmp_path / ".hidden.yaml").write_text("garbage: [")
    (tmp_path / "sub.yaml").mkdir()
    with pytest.raises(ConfigError) as caught:
        policyfile.load_policies(tmp_path, CATEGORIES)
    lines = problems(caught)
    assert len(lines) == 5, lines
    expected = [
        f"{tmp_path / 'province.yaml'}:8: timezone2: unknown key",
        f"{tmp_path / 'a.yaml'}:3: block[0]: unknown category 'gamez'",
        f"{tmp_path / 'b.yaml'}:4: invalid YAML",
        f"{tmp_path / 'c.yaml'}:1: id: id 'wrong' does not match the file name 'c.yaml'",
        f"{tmp_path / 'd.yml'}:1: policy files end in .yaml: rename it to d.yaml",
    ]
    for prefix in expected:
        assert any(line.startswith(prefix) for line in lines), (prefix, lines)


def test_missing_province_is_reported_with_the_school_problems(tmp_path):
    write(tmp_path, {"a.yaml": "id: a\nlevel: primary\nblok: 1\n"})
    with pytest.raises(ConfigError) as caught:
        policyfile.load_policies(tmp_path, CATEGORIES)
    lines = problems(caught)
    assert lines[0].startswith(f"{tmp_path / 'province.yaml'}:1: cannot read file")
    assert lines[1].startswith(f"{tmp_path / 'a.yaml'}:3: blok: unknown key")


def test_missing_directory(tmp_path):
    with pytest.raises(ConfigError) as caught:
        policyfile.load_policies(tmp_path / "nope", CATEGORIES)
    assert any("cannot read" in line for line in problems(caught))


def test_a_broken_copy_of_the_shipped_policies_fails(tmp_path):
    shutil.copytree(SHIPPED, tmp_path / "policies")
    path = tmp_path / "policies" / "thpt-nguyen-du.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("block: [games]", "block: [gamez]"), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        policyfile.load_policies(tmp_path / "policies", CATEGORIES)
    [line] = problems(caught)
    assert line.startswith(f"{path}:6: block[0]: unknown category 'gamez'")


def test_school_level_requires_the_province_profile(tmp_path):
    write(tmp_path, {"province.yaml": "profiles: {basic: {block: [adult]}}\n", "a.yaml": "id: a\nlevel: primary\n"})
    with pytest.raises(ConfigError) as caught:
        policyfile.load_policies(tmp_path, CATEGORIES)
    assert problems(caught) == [
        f"{tmp_path / 'a.yaml'}:2: level: unknown level 'primary' (profiles in province.yaml: basic)"
    ]


@pytest.mark.parametrize("reserved", ["unknown", "province"])
def test_reserved_ids(reserved):
    with pytest.raises(ConfigError) as caught:
        policyfile.parse_school(f"id: {reserved}\nlevel: primary\n", f"{reserved}.yaml", CATEGORIES, province())
    assert problems(caught) == [f"{reserved}.yaml:1: id: id '{reserved}' is reserved"]


def test_the_time_zone_alone_is_read_from_province_yaml(tmp_path):
    (tmp_path / "province.yaml").write_text("mandatory: [no-such-category]\ntimezone: Asia/Bangkok\n")
    assert str(policyfile.load_timezone(tmp_path)) == "Asia/Bangkok"  # the rest is load_policies' to check
    (tmp_path / "province.yaml").write_text("mandatory: []\n")
    assert str(policyfile.load_timezone(tmp_path)) == policyfile.DEFAULT_TIMEZONE
    (tmp_path / "province.yaml").write_text("timezone: Mars/Olympus\n")
    with pytest.raises(yamlfile.ConfigError, match=r"province.yaml:1: timezone: unknown time zone 'Mars/Olympus'"):
        policyfile.load_timezone(tmp_path)
