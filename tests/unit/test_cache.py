"""cache: CLOCK eviction bounded by entries and by bytes, TTL expiry and aging, negative answers, serve-stale."""

import gc
import sys

import dns.message
import dns.rrset
import hypothesis
from hypothesis import strategies as st

from resolver.dataplane import cache, wire


def make_answer(name="www.example.com", ttl=100, records=1):
    query = wire.parse_query(dns.message.make_query(name, "A").to_wire())
    response = dns.message.make_response(dns.message.from_wire(wire.make_upstream_query(query, 1)))
    addresses = [f"192.0.2.{number}" for number in range(1, records + 1)]
    response.answer.append(dns.rrset.from_text(name + ".", ttl, "IN", "A", *addresses))
    return query, wire.parse_upstream_answer(response.to_wire(), len(query.question), 0, 86400, 3600)


def test_hit_ages_ttl_and_expires():
    query, answer = make_answer(ttl=100)
    answers = cache.AnswerCache(10)
    answers.store(query.key, answer, now=1000.0)
    entry = answers.lookup(query.key, 1030.5)
    assert (entry.question_length, entry.ttl_offsets, entry.targets) == (
        answer.question_length,
        answer.ttl_offsets,
        answer.targets,
    )
    assert dns.message.from_wire(entry.message).answer[0].ttl == 70
    assert entry.exact_until == 1031.0  # the aged copy is exact until the next whole second of age
    assert answers.lookup(query.key, 1099.5).exact_until == 1100.0  # ... or until the answer expires
    assert answers.lookup(query.key, 1100.0) is None
    assert (answers.hits, answers.misses) == (2, 1)


def test_aged_copy_is_reused_within_a_second():
    query, answer = make_answer()
    answers = cache.AnswerCache(10)
    answers.store(query.key, answer, 0.0)
    first = answers.lookup(query.key, 5.1).message
    stored = answers._entries[query.key]
    assert answers.lookup(query.key, 5.9).message == first
    assert answers._entries[query.key] is stored  # not aged again within the second


def test_aging_from_the_aged_copy_equals_aging_the_original():
    query, answer = make_answer(ttl=100)
    answers = cache.AnswerCache(10)
    answers.store(query.key, answer, 0.0)
    for now in (3.2, 7.9, 42.0, 99.5):
        assert answers.lookup(query.key, now).message == wire.reduce_ttls(answer.message, answer.ttl_offsets, int(now))


def test_byte_bound_evicts_oldest_and_keeps_an_exact_tally():
    entries = [make_answer(f"n{i}.example.com") for i in range(6)]
    sizing = cache.AnswerCache(1)
    sizing.store(entries[0][0].key, entries[0][1], 0)
    one = sizing.bytes  # every name of these has the same length
    assert one == len(entries[0][0].key) + len(sizing._entries[entries[0][0].key]) + cache.ENTRY_OVERHEAD_BYTES
    answers = cache.AnswerCache(100, max_bytes=3 * one)
    for query, answer in entries:
        answers.store(query.key, answer, 0)
        assert answers.bytes <= answers.max_bytes
    assert len(answers) == 3 and answers.evictions == 3
    assert [answers.lookup(q.key, 1) is not None for q, _ in entries] == [False] * 3 + [True] * 3
    answers.store(entries[5][0].key, entries[5][1], 2)  # replacing an answer does not count it twice
    assert answers.bytes == 3 * one
    answers.clear()
    assert answers.bytes == 0 and len(answers) == 0


def test_answers_of_one_shape_share_their_ttl_offsets():
    answers = cache.AnswerCache(10)
    stored = []
    for name in ("aa.example.com", "bb.example.com"):
        query, answer = make_answer(name)
        answers.store(query.key, answer, 0)
        stored.append(answers.lookup(query.key, 1).ttl_offsets)
    assert stored[0] == stored[1] and stored[0] is stored[1]


def test_lru_evicts_least_recently_used():
    answers = cache.AnswerCache(2)
    entries = [make_answer(f"n{i}.example.com") for i in range(3)]
    answers.store(entries[0][0].key, entries[0][1], 0)
    answers.store(entries[1][0].key, entries[1][1], 0)
    answers.lookup(entries[0][0].key, 1)  # 0 is now the most recent
    answers.store(entries[2][0].key, entries[2][1], 2)
    assert answers.lookup(entries[1][0].key, 3) is None
    assert answers.lookup(entries[0][0].key, 3) is not None
    assert len(answers) == 2 and answers.evictions == 1


def test_zero_ttl_answers_are_not_stored():
    query, answer = make_answer(ttl=0)
    answers = cache.AnswerCache(10)
    answers.store(query.key, answer, 0)
    assert len(answers) == 0


def test_stale_answer_within_window_has_30s_ttl():
    query, answer = make_answer(ttl=10)
    answers = cache.AnswerCache(10, stale_seconds=60)
    answers.store(query.key, answer, 0)
    assert answers.has_stale(query.key, 20) and not answers.has_stale(query.key, 5)  # at 5 s it is fresh
    assert answers.lookup(query.key, 20) is None
    stale = answers.lookup_stale(query.key, 20)
    assert stale is not None and stale.question_length == answer.question_length
    assert dns.message.from_wire(stale.message).answer[0].ttl == 30
    assert answers.lookup_stale(query.key, 71) is None and not answers.has_stale(query.key, 71)
    assert answers.stale_served == 1  # has_stale counts nothing


def test_stored_answers_are_not_tracked_by_the_garbage_collector():
    # Full collections visit every tracked object: a large cache must not add to their pauses.
    answers = cache.AnswerCache(10)
    for ttl in (100, 200, 300):
        query, answer = make_answer(ttl=ttl, name=f"n{ttl}.example.com")
        answers.store(query.key, answer, now=0.0)
        answers.lookup(query.key, 5.5)  # aged copies are stored too
    for _ in range(4):  # a collection untracks a tuple once its items are: one pass per nesting level
        gc.collect()
    assert not any(gc.is_tracked(stored) for stored in answers._entries.values())


def test_a_failed_refresh_holds_its_question_stale_for_the_recheck_timer():
    query, answer = make_answer(ttl=100)
    answers = cache.AnswerCache(10, stale_seconds=3600, failure_recheck_seconds=30)
    answers.store(query.key, answer, 0.0)
    answers.refresh_failed(query.key, 200.0)
    assert answers.rechecking(query.key, 200.0) == answers.rechecking(query.key, 229.9) == 230.0
    assert not answers.rechecking(query.key, 230.0)  # the timer ended: ask upstream again
    answers.refresh_failed(query.key, 300.0)
    answers.store(query.key, answer, 301.0)  # refreshed after all
    assert not answers.rechecking(query.key, 302.0)
    assert not answers._failed


def test_the_recheck_timer_ends_with_the_stale_window():
    query, answer = make_answer(ttl=100)
    answers = cache.AnswerCache(10, stale_seconds=120, failure_recheck_seconds=30)
    answers.store(query.key, answer, 0.0)
    answers.refresh_failed(query.key, 200.0)
    assert answers.rechecking(query.key, 210.0) == 220.0  # expired at 100, stale until 220
    assert not answers.rechecking(query.key, 220.0)


def test_recheck_marks_are_only_kept_for_cached_answers():
    answers = cache.AnswerCache(2, stale_seconds=3600)
    keys = []
    for number in range(3):
        query, answer = make_answer(f"n{number}.example.com")
        answers.store(query.key, answer, 0.0)
        answers.refresh_failed(query.key, 200.0)
        keys.append(query.key)
    answers.refresh_failed(b"never cached", 200.0)
    assert not answers.rechecking(keys[0], 200.0)  # evicted, and its mark with it
    assert len(answers._failed) == 2 and answers.rechecking(keys[2], 200.0)
    off = cache.AnswerCache(2, stale_seconds=3600, failure_recheck_seconds=0)
    off.store(keys[2], answer, 0.0)
    off.refresh_failed(keys[2], 200.0)
    assert not off.rechecking(keys[2], 200.0)


def test_a_chain_comes_back_whole_with_its_targets_in_the_askers_entry():
    query = wire.parse_query(dns.message.make_query("Chain.Example.com", "A").to_wire())
    response = dns.message.make_response(dns.message.from_wire(wire.make_upstream_query(query, 1)))
    targets = [f"hop{i}." + "x" * 60 + ".example.net" for i in range(300)]  # 21 KB of target names
    owner = "chain.example.com."
    for target in targets:
        response.answer.append(dns.rrset.from_text(owner, 300, "IN", "CNAME", target + "."))
        owner = target + "."
    response.answer.append(dns.rrset.from_text(owner, 60, "IN", "A", "192.0.2.1"))
    answer = wire.parse_upstream_answer(response.to_wire(max_size=65535), len(query.question), 0, 86400, 3600)
    answers = cache.AnswerCache(10)
    answers.store(query.key, answer, 0.0)
    entry = answers.lookup(query.key, 10.5)
    assert entry.targets == tuple(targets) and entry.question_length == len(query.question)
    assert entry.message == wire.reduce_ttls(answer.message, answer.ttl_offsets, 10)  # question included
    assert answers.lookup_stale(query.key, 10.5).targets == tuple(targets)


def test_an_answer_asked_again_stays_while_answers_asked_once_go_in_their_order():
    answers = cache.AnswerCache(10)
    hot, hot_answer = make_answer("hot.example.com")
    answers.store(hot.key, hot_answer, 0)
    once = [make_answer(f"n{i}.example.com") for i in range(40)]
    for number, (query, answer) in enumerate(once):
        answers.store(query.key, answer, 0)
        assert answers.lookup(hot.key, 1) is not None  # a second chance each time the hand passes it
        kept = [query.key in answers._entries for query, _ in once[: number + 1]]  # (a lookup would mark them used)
        assert kept == [False] * (number + 1 - 9) + [True] * min(9, number + 1)  # those asked once go oldest first
    assert len(answers) == 10 and answers.evictions == 31


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(
    max_entries=st.integers(1, 8),
    max_bytes=st.sampled_from([float("inf"), 700, 2000]),
    steps=st.lists(st.tuples(st.integers(0, 15), st.booleans(), st.integers(0, 3)), max_size=80),
)
def test_both_bounds_hold_and_the_tally_is_exact_whatever_is_stored_and_asked(max_entries, max_bytes, steps):
    answers = cache.AnswerCache(max_entries, max_bytes=max_bytes)
    for number, store, extra in steps:
        query, answer = ANSWERS[number][extra]
        if store:
            answers.store(query.key, answer, 0)
            assert answers.lookup(query.key, 1) is not None  # the newest answer is never the one evicted for it
        else:
            answers.lookup(query.key, 1)
        assert len(answers) <= max_entries and answers.bytes <= max_bytes
        assert answers.bytes == sum(
            len(key) + len(stored) + cache.ENTRY_OVERHEAD_BYTES for key, stored in answers._entries.items()
        )
    answers.clear()
    assert answers.bytes == 0 and len(answers) == 0


# Answers of 1 to 4 records for 16 names, made once for the property test.
ANSWERS = [[make_answer(f"name{number}.example.com", records=1 + extra) for extra in range(4)] for number in range(16)]


def test_a_cache_that_evicts_as_much_as_it_adds_keeps_a_compact_table():
    # A dict that deletes as much as it adds regrows its table to three times its entries; the
    # cache copies it into a compact one (for 6,000 entries: a table of 16,384 slots, not 32,768).
    base, answer = make_answer("n00000.example.com")
    answers = cache.AnswerCache(6000)
    for number in range(12 * 4096):
        answers.store(base.key.replace(b"n00000", b"n%05d" % number), answer, 0)
    assert len(answers) == 6000 and answers.evictions == 12 * 4096 - 6000
    assert sys.getsizeof(answers._entries) == sys.getsizeof(dict(answers._entries))
    assert all(answers.lookup(key, 1) is not None for key in list(answers._entries))  # the ring still finds them
