"""config.yaml's `worker_spread`: "client" by default, "random" on request, anything else an error naming file, line and key."""

import pytest

from resolver.control import config
from resolver.yamlfile import ConfigError
from tests.support.harness import write_site


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
