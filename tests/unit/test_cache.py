"""cache: bounded LRU, TTL expiry and aging, negative answers, serve-stale."""

import gc

import dns.message
import dns.rrset

from resolver import cache, wire


def make_answer(name="www.example.com", ttl=100):
    query = wire.parse_query(dns.message.make_query(name, "A").to_wire())
    response = dns.message.make_response(dns.message.from_wire(wire.make_upstream_query(query, 1)))
    response.answer.append(dns.rrset.from_text(name + ".", ttl, "IN", "A", "192.0.2.1"))
    return query, wire.parse_upstream_answer(response.to_wire(), len(query.question), 0, 86400, 3600)


def test_hit_ages_ttl_and_expires():
    query, answer = make_answer(ttl=100)
    answers = cache.AnswerCache(10)
    answers.store(query.key, answer, now=1000.0)
    entry = answers.lookup(query.key, 1030.5)
    assert entry.answer == answer
    assert dns.message.from_wire(entry.aged_message).answer[0].ttl == 70
    assert entry.exact_until == 1031.0  # the aged copy is exact until the next whole second of age
    assert answers.lookup(query.key, 1099.5).exact_until == 1100.0  # ... or until the answer expires
    assert answers.lookup(query.key, 1100.0) is None
    assert (answers.hits, answers.misses) == (2, 1)


def test_aged_copy_is_reused_within_a_second():
    query, answer = make_answer()
    answers = cache.AnswerCache(10)
    answers.store(query.key, answer, 0.0)
    first = answers.lookup(query.key, 5.1).aged_message
    assert answers.lookup(query.key, 5.9).aged_message is first


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
    assert answers.lookup(query.key, 20) is None
    message, _ = answers.lookup_stale(query.key, 20)
    assert dns.message.from_wire(message).answer[0].ttl == 30
    assert answers.lookup_stale(query.key, 71) is None


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
