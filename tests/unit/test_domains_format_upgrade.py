"""domains format upgrades: an index file of an older format left in state_dir is compiled again, never used."""

import hashlib
import json
import logging
import struct
import zlib
from types import SimpleNamespace

import pytest

from resolver.control import snapshots
from resolver.filtering import domains, lists

SOURCES = "categories:\n  adult:\n    sources: [{file: adult.txt, format: domains}]\n"
# A format-2 image as an older schooldns wrote it: its header, then one entry (example.com).
FORMAT_2_IMAGE = (
    struct.pack("<8sIIIIIIII24x", domains.MAGIC, 2, 64, 1, 8, 1, 12, 0, 0) + bytes(8 * 8 + 32 + 8) + b"example.com\0"
)


def format_5_image():
    """A format-5 image: the layout of format 6, but its second mask column meant the name and
    everything under it (format 6: only what is under it), so a subtree entry set that column only."""
    image = bytearray(domains.build_index([("a.b.example", 0, "below", "block")]))
    struct.pack_into("<I", image, 8, 5)
    crc = zlib.crc32(image[64:], zlib.crc32(image[40:64], zlib.crc32(image[:36])))
    struct.pack_into("<I", image, 36, crc)
    return bytes(image)


@pytest.fixture
def site(tmp_path):
    """Blocklists and a state_dir; `load_index` reads only these two paths of a config."""
    blocklists = tmp_path / "blocklists"
    blocklists.mkdir()
    (blocklists / lists.SOURCES_FILE).write_text(SOURCES)
    (blocklists / "adult.txt").write_text("a.b.example\n")
    state = tmp_path / "state"
    state.mkdir()
    return SimpleNamespace(blocklists_dir=blocklists, state_dir=state)


def leave_old_index(site, fingerprint, image=FORMAT_2_IMAGE):
    (site.state_dir / lists.INDEX_FILE).write_bytes(image)
    manifest = {"fingerprint": fingerprint, "categories": ["adult"], "entry_counts": {"adult": 1}}
    (site.state_dir / lists.MANIFEST_FILE).write_text(json.dumps(manifest))


def format_2_fingerprint(site, sources, version=2):
    """What an older schooldns computed: the same files, under "index-format-2" (or another version)."""
    digest = hashlib.sha256(f"index-format-{version}\n".encode())
    for path in [site.blocklists_dir / lists.SOURCES_FILE, *sources.files()]:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def test_the_fingerprint_changes_with_the_format(site):
    sources = lists.load_sources(site.blocklists_dir)
    assert snapshots.sources_fingerprint(site.blocklists_dir, sources) != format_2_fingerprint(site, sources)


def assert_compiled_again(site, sources):
    index, manifest = snapshots.load_index(site, sources)
    assert index.lookup("x.a.b.example") == 1
    assert index.lookup("a.b.example") == 1  # the domains format's subtree: the name itself too
    assert manifest["fingerprint"] == snapshots.sources_fingerprint(site.blocklists_dir, sources)
    rewritten = domains.DomainIndex.load(site.state_dir / lists.INDEX_FILE)
    try:
        assert (rewritten.entry_count, rewritten.node_count) == (1, 2)
    finally:
        rewritten.close()


def test_an_old_manifest_and_index_are_compiled_again(site):
    sources = lists.load_sources(site.blocklists_dir)
    leave_old_index(site, format_2_fingerprint(site, sources))
    assert_compiled_again(site, sources)


def test_a_format_2_index_under_a_matching_manifest_is_refused_and_compiled_again(site, caplog):
    # Even if the manifest matched (say, a hand-copied state_dir), loading refuses the old image.
    sources = lists.load_sources(site.blocklists_dir)
    leave_old_index(site, snapshots.sources_fingerprint(site.blocklists_dir, sources))
    with caplog.at_level(logging.WARNING, logger="resolver.control.snapshots"):
        assert_compiled_again(site, sources)
    assert "compiling again" in caplog.text
    assert f"domain index format version 2 is not supported (expected {domains.FORMAT_VERSION})" in caplog.text


def test_a_format_5_index_is_compiled_again(site, caplog):
    # Format 6 changed what a mask column means, not the layout: a format-5 image would be read
    # without complaint, and its subtree entries would miss their own names.
    sources = lists.load_sources(site.blocklists_dir)
    leave_old_index(site, format_2_fingerprint(site, sources, version=5), format_5_image())
    assert_compiled_again(site, sources)
    leave_old_index(site, snapshots.sources_fingerprint(site.blocklists_dir, sources), format_5_image())
    with caplog.at_level(logging.WARNING, logger="resolver.control.snapshots"):
        assert_compiled_again(site, sources)
    assert "domain index format version 5 is not supported (expected 6)" in caplog.text
