"""The feed's TSIG keys file (tsigkeys) and versions (rpzzones): zone names, a serial that follows the content, text."""

import base64
import logging
import textwrap

import pytest

from resolver.control import checks, config, snapshots, tsigkeys
from resolver.operations import rpzfeed, rpzzones
from tests.support.harness import write_site

SECRET = "c2Nob29sZG5zIHRlc3Qga2V5OiAzMiBieXRlcyBsb25nIQ=="


def keys(tmp_path, text, mode=0o600):
    path = tmp_path / "keys.yaml"
    path.write_text(textwrap.dedent(text))
    path.chmod(mode)
    return path


def test_a_keys_file_gives_its_keys(tmp_path):
    path = keys(
        tmp_path,
        f"""\
        keys:
          - {{name: ISP-One.rpz., algorithm: hmac-sha256, secret: "{SECRET}"}}
          - {{name: isp-two, algorithm: hmac-sha512, secret: "{SECRET}"}}
        """,
    )
    one, two = tsigkeys.load(path)
    assert (one.name, one.algorithm, one.secret) == ("isp-one.rpz", "hmac-sha256", base64.b64decode(SECRET))
    assert (two.name, two.algorithm) == ("isp-two", "hmac-sha512")
    assert SECRET not in repr(one)


@pytest.mark.parametrize(
    "entry, problem",
    [
        ("{name: a, algorithm: hmac-md5, secret: KEY}", "keys[0].algorithm: expected one of hmac-sha224, hmac-sha256"),
        ("{name: a, secret: c2hvcnQ=}", "keys[0].secret: expected at least 16 bytes in base64"),
        ("{name: a, secret: 'not base64!'}", "keys[0].secret: expected at least 16 bytes in base64"),
        ("{name: 'a b', secret: KEY}", "keys[0].name: expected a unique key name such as isp-one.rpz, got 'a b'"),
        ("{name: a, secret: KEY, algo: x}", "keys[0].algo: unknown key 'algo' (known keys: algorithm, name, secret)"),
    ],
)
def test_a_broken_key_is_one_line_naming_file_line_and_key(tmp_path, entry, problem):
    path = keys(tmp_path, f"keys:\n  - {entry.replace('KEY', SECRET)}\n")
    with pytest.raises(tsigkeys.TsigKeysError) as raised:
        tsigkeys.load(path)
    assert str(raised.value).startswith(f"{path}:2: {problem}")


def test_a_keys_file_others_can_read_is_refused(tmp_path):
    path = keys(tmp_path, f"keys: [{{name: a, secret: '{SECRET}'}}]\n", mode=0o644)
    with pytest.raises(tsigkeys.TsigKeysError, match=r"readable by other users \(mode 0644\); run: chmod 600"):
        tsigkeys.load(path)


def test_a_keys_file_without_keys_says_what_to_do(tmp_path):
    with pytest.raises(tsigkeys.TsigKeysError, match="no keys: remove tsig_keys_file from the config, or add a key"):
        tsigkeys.load(keys(tmp_path, "keys: []\n"))


def feed_site(tmp_path, sources=None, lists=None, rpz="{}"):
    files = {}
    if sources is not None:
        files["blocklists/sources.yaml"] = sources
    files.update(lists or {})
    cfg = config.load_config(write_site(tmp_path, ["192.0.2.1:53"], f"rpz: {rpz}\n", files))
    return cfg, rpzfeed.Feed(cfg.rpz, cfg.blocklists_dir, cfg.state_dir)


def test_a_zone_per_category_and_one_for_the_mandatory_ones(tmp_path):
    cfg, feed = feed_site(tmp_path)
    version = feed.prepare(snapshots.build_snapshot(cfg, 1))
    assert sorted(version.zones) == [
        "adult.rpz.schooldns",
        "bypass.rpz.schooldns",
        "games.rpz.schooldns",
        "malware.rpz.schooldns",
        "province.rpz.schooldns",
    ]
    assert version.zones["province.rpz.schooldns"].mask == version.zones["malware.rpz.schooldns"].mask
    assert [s.file for s in version.zones["province.rpz.schooldns"].sources] == ["malware.txt"]
    assert version.problem is None and version.current() is None
    text = "".join(rpzzones.zone_text(version, version.zones["adult.rpz.schooldns"]))
    assert text.splitlines()[1:] == [
        "$ORIGIN adult.rpz.schooldns.",
        "$TTL 60",
        f"@ SOA localhost. hostmaster.localhost. {version.serial} 300 60 1209600 60",
        "@ NS localhost.",
        "adult.example.com CNAME .",
        "*.adult.example.com CNAME .",
    ]


def test_a_category_named_province_has_no_zone_of_its_own(tmp_path, caplog):
    sources = textwrap.dedent(
        """\
        categories:
          province: {sources: [{file: p.txt, format: domains}]}
          malware: {}
          adult: {}
          games: {}
          bypass: {}
        """
    )
    cfg, feed = feed_site(tmp_path, sources, {"blocklists/p.txt": "p.example\n"})
    with caplog.at_level(logging.WARNING):
        version = feed.prepare(snapshots.build_snapshot(cfg, 1))
    assert "province.rpz.schooldns" in version.zones and len(version.zones) == 5
    assert version.zones["province.rpz.schooldns"].mask == 2  # malware, the mandatory one
    assert "category 'province' has no zone: province.rpz.schooldns holds the mandatory ones" in caplog.text


def test_the_serial_follows_the_content_and_every_process_shares_it(tmp_path):
    cfg, feed = feed_site(tmp_path)
    first = feed.prepare(snapshots.build_snapshot(cfg, 1)).serial
    other_process = rpzfeed.Feed(cfg.rpz, cfg.blocklists_dir, cfg.state_dir)
    assert other_process.prepare(snapshots.build_snapshot(cfg, 2)).serial == first  # same content
    (cfg.blocklists_dir / "games.txt").write_text("games.example.com\nmore.example.com\n")
    later = feed.prepare(snapshots.build_snapshot(cfg, 3)).serial
    assert later > first
    assert other_process.prepare(snapshots.build_snapshot(cfg, 4)).serial == later


def test_zones_wait_for_a_reload_once_the_lists_change(tmp_path):
    cfg, feed = feed_site(tmp_path)
    version = feed.prepare(snapshots.build_snapshot(cfg, 1))
    (cfg.blocklists_dir / "adult.txt").write_text("adult.example.com\nnew.example.com\n")
    assert version.current() == "the list files changed since the lists were installed; a reload follows"
    with pytest.raises(rpzfeed.pipeline.StreamBroken, match="list files changed"):
        list(rpzzones.zone_text(version, version.zones["adult.rpz.schooldns"]))


def test_check_reads_the_keys_file_and_says_what_the_feed_serves(tmp_path):
    path = keys(tmp_path, f"keys: [{{name: a, secret: '{SECRET}'}}]\n")
    cfg, _ = feed_site(tmp_path / "site", rpz=f"{{transfer_clients: [192.0.2.0/24], tsig_keys_file: {path}}}")
    assert checks.check(cfg)[-1] == (
        "rpz feed: 5 zones under rpz.schooldns., transfers signed with one of 1 TSIG keys to 1 networks"
    )
    path.chmod(0o644)
    with pytest.raises(tsigkeys.TsigKeysError, match="readable by other users"):
        checks.check(cfg)
