"""config.yaml: defaults, the range of every number, and each problem as one file:line: key.path: message."""

import dataclasses
import re
from pathlib import Path

import pytest

from resolver.control import checks, config
from resolver.yamlfile import ConfigError
from tests.support.harness import write_site

ROOT = Path(__file__).resolve().parents[2]
UPSTREAMS = 'upstreams: ["192.0.2.1:53"]\n'


def load(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return config.load_config(path)


def problems(tmp_path, text):
    """The lines of the ConfigError that loading `text` raises, with the file shown as config.yaml."""
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, text)
    assert str(raised.value).splitlines() == [str(p) for p in raised.value.problems]
    return str(raised.value).replace(str(tmp_path / "config.yaml"), "config.yaml").splitlines()


def test_worker_spread_is_by_client_unless_asked(tmp_path):
    assert config.load_config(write_site(tmp_path / "a", ["127.0.0.1:53"], "workers: 2\n")).worker_spread == "client"
    asked = config.load_config(write_site(tmp_path / "b", ["127.0.0.1:53"], "workers: 2\nworker_spread: random\n"))
    assert asked.worker_spread == "random"


def test_an_unknown_worker_spread_names_file_line_and_key(tmp_path):
    path = write_site(tmp_path, ["127.0.0.1:53"], "workers: 2\nworker_spread: roundrobin\n")
    with pytest.raises(ConfigError) as raised:
        config.load_config(path)
    line = path.read_text().splitlines().index("worker_spread: roundrobin") + 1
    assert f"{path}:{line}: worker_spread: expected one of client, random, got 'roundrobin'" in str(raised.value)


def test_the_shipped_example_loads():
    cfg = config.load_config(ROOT / "deploy" / "example" / "config.yaml")
    assert [str(a) for a in cfg.upstreams] and cfg.workers == 1
    assert cfg.policies_dir.resolve() == (ROOT / "policies").resolve()


def test_the_documented_example_loads_and_spells_out_the_defaults(tmp_path):
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    example = re.search(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert example is not None
    cfg = load(tmp_path, example[1])
    for section, cls in (
        (cfg.cache, config.CacheConfig),
        (cfg.forwarding, config.ForwardingConfig),
        (cfg.limits, config.LimitsConfig),
        (cfg.reload, config.ReloadConfig),
        (cfg.rollups, config.RollupsConfig),
    ):
        assert section == cls()
    assert (cfg.workers, cfg.worker_spread, cfg.default_school) == (1, "client", None)


def test_the_smallest_config_takes_the_defaults(tmp_path):
    cfg = load(tmp_path, UPSTREAMS)
    assert [(a.host, a.port) for a in cfg.listen] == [("127.0.0.1", 53)]
    assert cfg.cache == config.CacheConfig() and cfg.limits == config.LimitsConfig()
    assert cfg.rollups == config.RollupsConfig(60.0, 400)
    assert cfg.admin.listen is None and cfg.default_school is None


BOUNDED_FIELDS = [
    pytest.param(section, field.name, field.metadata["bounds"], id=f"{section}.{field.name}")
    for section, cls in (
        ("cache", config.CacheConfig),
        ("forwarding", config.ForwardingConfig),
        ("limits", config.LimitsConfig),
        ("reload", config.ReloadConfig),
        ("blockpage", config.BlockpageConfig),
        ("rollups", config.RollupsConfig),
    )
    for field in dataclasses.fields(cls)
    if "bounds" in field.metadata
]


@pytest.mark.parametrize("section, name, bounds", BOUNDED_FIELDS)
def test_every_number_is_accepted_at_its_bounds_and_refused_past_them(tmp_path, section, name, bounds):
    for allowed in (bounds.low, bounds.high, *([0] if bounds.zero else [])):
        cfg = load(tmp_path, f"{UPSTREAMS}{section}: {{{name}: {allowed}}}\n")
        assert getattr(getattr(cfg, section), name) == allowed
    below = bounds.low / 2 if isinstance(bounds.low, float) and bounds.low > 0 else bounds.low - 1
    for refused in (below, bounds.high + 1):
        [line] = problems(tmp_path, f"{UPSTREAMS}{section}: {{{name}: {refused}}}\n")
        assert line.startswith(f"config.yaml:2: {section}.{name}: expected ")
        assert line.endswith(f", got {config._number(refused)}")


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param(
            "version: 7\n" + UPSTREAMS,
            "config.yaml:1: version: version 7 is not supported (this schooldns reads version 1)",
            id="version-7",
        ),
        pytest.param('version: "1"\n' + UPSTREAMS, "config.yaml:1: version: expected an integer, got a string"),
        pytest.param(
            UPSTREAMS + "workers: 0\n",
            'config.yaml:2: workers: expected a number of processes 1 to 64 or "auto", got 0',
            id="workers-0",
        ),
        pytest.param(
            UPSTREAMS + "workers: 65\n",
            'config.yaml:2: workers: expected a number of processes 1 to 64 or "auto", got 65',
            id="workers-65",
        ),
        pytest.param(
            UPSTREAMS + "workers: all\n",
            "config.yaml:2: workers: expected a number of processes 1 to 64 or \"auto\", got 'all'",
            id="workers-all",
        ),
        pytest.param(
            UPSTREAMS + "forwarding: {sockets_per_upstream: 0}\n",
            "config.yaml:2: forwarding.sockets_per_upstream: expected 1 to 256, got 0",
            id="no-sockets",
        ),
        pytest.param(
            UPSTREAMS + "forwarding:\n  timeout_seconds: 0\n",
            "config.yaml:3: forwarding.timeout_seconds: expected 0.1 to 60 seconds, got 0",
            id="timeout-0",
        ),
        pytest.param(
            UPSTREAMS + "forwarding:\n  max_in_flight: 10\n  timeout_seconds: .inf\n",
            "config.yaml:4: forwarding.timeout_seconds: expected 0.1 to 60 seconds, got inf",
            id="timeout-inf",
        ),
        pytest.param(
            UPSTREAMS + "forwarding: {timeout_seconds: .nan}\n",
            "config.yaml:2: forwarding.timeout_seconds: expected 0.1 to 60 seconds, got nan",
            id="timeout-nan",
        ),
        pytest.param(
            UPSTREAMS + "forwarding: {timeout_seconds: 2s}\n",
            "config.yaml:2: forwarding.timeout_seconds: expected an integer or a number, got a string",
            id="timeout-text",
        ),
        pytest.param(
            UPSTREAMS + "cache: {max_entries: 1.5}\n",
            "config.yaml:2: cache.max_entries: expected an integer, got a number",
            id="entries-fraction",
        ),
        pytest.param(
            UPSTREAMS + "cache: {max_entries: yes}\n",
            "config.yaml:2: cache.max_entries: expected an integer, got a boolean",
            id="entries-boolean",
        ),
        pytest.param(
            UPSTREAMS + "cache: {max_entries: 100000000}\n",
            "config.yaml:2: cache.max_entries: expected 0 to 10000000, got 100000000",
            id="entries-huge",
        ),
        pytest.param(
            UPSTREAMS + "cache:\n  min_ttl_seconds: 600\n  max_ttl_seconds: 300\n",
            "config.yaml:3: cache.min_ttl_seconds: 600 is above cache.max_ttl_seconds (300)",
            id="min-ttl-above-max",
        ),
        pytest.param(
            UPSTREAMS + "cache: {stale_seconds: -1}\n",
            "config.yaml:2: cache.stale_seconds: expected 0 to 259200 seconds, got -1",
            id="stale-negative",
        ),
        pytest.param(
            UPSTREAMS + "limits: {max_queries_in_flight: 0}\n",
            "config.yaml:2: limits.max_queries_in_flight: expected 1 to 100000, got 0",
            id="no-queries-in-flight",
        ),
        pytest.param(
            UPSTREAMS + "limits: {tcp_max_pipelined: 0}\n",
            "config.yaml:2: limits.tcp_max_pipelined: expected 1 to 1024, got 0",
            id="no-pipelining",
        ),
        pytest.param(
            UPSTREAMS + "reload: {watch_interval_seconds: 0.001}\n",
            "config.yaml:2: reload.watch_interval_seconds: expected 0 or 0.05 to 3600 seconds, got 0.001",
            id="watch-too-often",
        ),
        pytest.param(
            UPSTREAMS + "cache: {max_entry: 10}\n",
            "config.yaml:2: cache.max_entry: unknown key 'max_entry' (known keys: max_entries, max_megabytes, "
            "max_ttl_seconds, min_ttl_seconds, negative_max_ttl_seconds, stale_failure_recheck_seconds, stale_seconds, "
            "stale_wait_seconds)",
            id="unknown-key",
        ),
        pytest.param(
            UPSTREAMS + "listen: []\n", "config.yaml:2: listen: at least one address is needed", id="listen-empty"
        ),
        pytest.param(
            UPSTREAMS + 'listen: ["127.0.0.1:65536"]\n',
            "config.yaml:2: listen[0]: bad address '127.0.0.1:65536': port must be 0-65535",
            id="listen-port",
        ),
        pytest.param(
            'upstreams:\n  - "192.0.2.1:53"\n  - "192.0.2.2:0"\n',
            "config.yaml:3: upstreams[1]: '192.0.2.2:0': port 0 is not a server's port",
            id="upstream-port-0",
        ),
        pytest.param(
            "upstreams: []\n", "config.yaml:1: upstreams: at least one address is needed", id="upstreams-empty"
        ),
        pytest.param('listen: ["127.0.0.1:53"]\n', "config.yaml:1: upstreams: missing required key", id="upstreams"),
        pytest.param(
            UPSTREAMS + 'admin: {listen: ["127.0.0.1:8053", "127.0.0.1:8054"]}\n',
            "config.yaml:2: admin.listen: expected one address, got 2",
            id="admin-two-addresses",
        ),
        pytest.param(
            UPSTREAMS + "sync: {repository: 'http://hub', trusted_root: root.json, interval_seconds: 0.5}\n",
            "config.yaml:2: sync.interval_seconds: expected 1 to 86400 seconds, got 0.5",
            id="sync-too-often",
        ),
        pytest.param(
            UPSTREAMS + "sync: {repository: 'hub.example', trusted_root: root.json}\n",
            "config.yaml:2: sync.repository: expected an http:// or https:// URL, got 'hub.example'",
            id="sync-not-a-url",
        ),
        pytest.param(
            UPSTREAMS
            + "sync: {repository: 'http://hub', trusted_root: root.json}\npublish: {repository: r, keys: k}\n",
            "config.yaml:3: publish: a hub publishes its own files and does not sync: remove `sync` or `publish`",
            id="sync-and-publish",
        ),
        pytest.param(
            UPSTREAMS + "blockpage: {tls: {cert_file: page.pem}}\n",
            "config.yaml:2: blockpage.tls: missing required key 'key_file'",
            id="blockpage-no-key",
        ),
        pytest.param(
            UPSTREAMS + "blockpage: {listen: []}\n",
            "config.yaml:2: blockpage.listen: at least one address is needed",
            id="blockpage-listen-empty",
        ),
        pytest.param(
            UPSTREAMS + "blockpage: {page: x}\n",
            "config.yaml:2: blockpage.page: unknown key 'page' (known keys: listen, max_requests, retention_days, "
            "submission_window_seconds, submissions_per_source, tls)",
            id="blockpage-unknown-key",
        ),
        pytest.param(
            UPSTREAMS + "rpz: {zone_suffix: 'rpz..schooldns.'}\n",
            "config.yaml:2: rpz.zone_suffix: 'rpz..schooldns.' is not a domain name of at most 100 characters "
            "(e.g. rpz.schooldns.)",
            id="rpz-suffix",
        ),
        pytest.param(
            UPSTREAMS + "rpz: {transfer_clients: ['192.0.2.1/24']}\n",
            "config.yaml:2: rpz.transfer_clients[0]: '192.0.2.1/24' is not an IPv4 or IPv6 network "
            "(e.g. 192.0.2.53/32 or 2001:db8::/64)",
            id="rpz-host-bits",
        ),
        pytest.param(
            UPSTREAMS + "rpz: {notify: ['192.0.2.1:0']}\n",
            "config.yaml:2: rpz.notify[0]: '192.0.2.1:0': port 0 is not a server's port",
            id="rpz-notify-port-0",
        ),
        pytest.param(
            UPSTREAMS + "rpz: {suffix: rpz.example.}\n",
            "config.yaml:2: rpz.suffix: unknown key 'suffix' (known keys: notify, transfer_clients, tsig_keys_file, "
            "zone_suffix)",
            id="rpz-unknown-key",
        ),
        pytest.param(
            UPSTREAMS + "default_school: 12\n",
            "config.yaml:2: default_school: expected a school id (a string) or null, got an integer",
            id="default-school-number",
        ),
    ],
)
def test_a_config_problem_is_one_line_naming_file_line_and_key(tmp_path, text, expected):
    assert problems(tmp_path, text) == [expected]


def test_every_problem_is_reported_at_once(tmp_path):
    text = "version: 2\n" + UPSTREAMS + "forwarding: {sockets_per_upstream: 0}\nlimits:\n  tcp_max_connections: 0\n"
    assert problems(tmp_path, text) == [
        "config.yaml:1: version: version 2 is not supported (this schooldns reads version 1)",
        "config.yaml:3: forwarding.sockets_per_upstream: expected 1 to 256, got 0",
        "config.yaml:5: limits.tcp_max_connections: expected 1 to 10000, got 0",
    ]


def test_sync_and_publish_paths_are_relative_to_the_config_file(tmp_path):
    cfg = load(tmp_path, UPSTREAMS + "sync: {repository: 'https://hub.example/repo', trusted_root: root.json}\n")
    assert cfg.sync == config.SyncConfig("https://hub.example/repo", tmp_path / "root.json", 300.0, 20.0)
    cfg = load(tmp_path, UPSTREAMS + "publish: {repository: /srv/repo, keys: keys}\n")
    assert cfg.publish == config.PublishConfig(Path("/srv/repo"), tmp_path / "keys") and cfg.sync is None


def test_ports_zero_serve_tests_only_where_the_server_listens(tmp_path):
    cfg = load(tmp_path, UPSTREAMS + 'listen: ["127.0.0.1:0"]\nadmin: {listen: "127.0.0.1:0"}\n')
    assert [a.port for a in cfg.listen] == [0] and cfg.admin.listen.port == 0


def test_a_block_page_listens_on_port_80_and_443_unless_told(tmp_path):
    assert load(tmp_path, UPSTREAMS).blockpage is None
    page = load(tmp_path, UPSTREAMS + "blockpage: {}\n").blockpage
    assert page is not None and [str(a) for a in page.listen] == ["0.0.0.0:80"] and page.tls is None
    assert dataclasses.replace(page, listen=()) == config.BlockpageConfig()
    text = (
        'blockpage:\n  listen: ["192.0.2.80", "[2001:db8::80]"]\n  tls: {cert_file: tls/page.pem, key_file: /k.pem}\n'
    )
    page = load(tmp_path, UPSTREAMS + text).blockpage
    assert [str(a) for a in page.listen] == ["192.0.2.80:80", "[2001:db8::80]:80"]
    assert [str(a) for a in page.tls.listen] == ["0.0.0.0:443"]
    assert (page.tls.cert_file, page.tls.key_file) == (tmp_path / "tls/page.pem", Path("/k.pem"))


def test_workers_auto_is_the_cores_within_the_bound(tmp_path):
    assert 1 <= load(tmp_path, UPSTREAMS + "workers: auto\n").workers <= config.MAX_WORKERS


def test_an_unknown_default_school_names_the_line_it_is_written_on(tmp_path):
    path = write_site(tmp_path, ["192.0.2.1:53"], "default_school: nowhere\n")
    line = path.read_text().splitlines().index("default_school: nowhere") + 1
    with pytest.raises(ConfigError) as raised:
        checks.check(config.load_config(path))
    assert str(raised.value) == f"{path}:{line}: default_school: no school 'nowhere' in {tmp_path / 'policies'}"


def test_the_rpz_feed_is_off_unless_configured_and_takes_defaults(tmp_path):
    assert load(tmp_path, UPSTREAMS).rpz is None
    feed = load(tmp_path, UPSTREAMS + "rpz: {}\n").rpz
    assert feed == config.RpzConfig("rpz.schooldns", (), None, ())


def test_the_rpz_feed_keys(tmp_path):
    feed = load(
        tmp_path,
        UPSTREAMS
        + "rpz:\n  zone_suffix: RPZ.Example.\n  transfer_clients: [192.0.2.53/32, '2001:db8::/64']\n"
        + "  tsig_keys_file: keys/rpz.yaml\n  notify: ['192.0.2.53', '[2001:db8::53]:5353']\n",
    ).rpz
    assert feed.zone_suffix == "rpz.example"
    assert [str(network) for network in feed.transfer_clients] == ["192.0.2.53/32", "2001:db8::/64"]
    assert feed.tsig_keys_file == tmp_path.resolve() / "keys" / "rpz.yaml"
    assert [str(address) for address in feed.notify] == ["192.0.2.53:53", "[2001:db8::53]:5353"]
