"""upstream.UpstreamPool against real DNS servers on loopback (tests/support/fake_upstream.py).

Failover, timeouts, TCP after a truncated reply, strict matching of replies, coalescing: what the
pool hands a question's waiters, what it asked of which server, and what it counted.
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rrset
import pytest

from resolver.dataplane import upstream, wire
from tests.support.fake_upstream import FakeUpstream, Unframed
from tests.support.harness import until


def _question(name: str, want_dnssec: bool = False) -> wire.Query:
    return wire.parse_query(dns.message.make_query(name, "A", use_edns=0, want_dnssec=want_dnssec).to_wire())


def _addresses(answer: wire.Answer) -> list[str]:
    message = dns.message.from_wire(answer.message)
    return [rdata.to_text() for rrset in message.answer for rdata in rrset if rrset.rdtype == 1]


def _pool(*fakes: FakeUpstream, timeout_seconds: float = 1.0) -> upstream.UpstreamPool:
    return upstream.UpstreamPool([upstream.parse_address(fake.address) for fake in fakes], timeout_seconds)


@pytest.fixture
async def first():
    async with FakeUpstream() as fake:
        yield fake


@pytest.fixture
async def second():
    async with FakeUpstream() as fake:
        yield fake


async def test_a_timeout_fails_over_to_the_second_upstream_which_is_then_asked_first(first, second):
    first.drop()
    second.answer("www.example.com", "A", "192.0.2.2").answer("other.example.com", "A", "192.0.2.3")
    pool = _pool(first, second)
    try:
        answer = await pool.resolve(_question("www.example.com"))
        assert _addresses(answer) == ["192.0.2.2"]
        slow, good = pool.upstreams
        assert (slow.queries, slow.timeouts, slow.failures) == (1, 1, 1)
        assert (good.queries, good.failures) == (1, 0)
        # The failure re-sorted the upstreams: the next question goes to the one that answered.
        assert _addresses(await pool.resolve(_question("other.example.com"))) == ["192.0.2.3"]
        assert first.count() == 1 and second.count() == 2
    finally:
        pool.close()


async def test_servfail_fails_over_and_is_the_answer_when_no_upstream_does_better(first, second):
    first.servfail("www.example.com")
    second.answer("www.example.com", "A", "192.0.2.2")
    first.servfail("gone.example.com")
    second.servfail("gone.example.com")
    pool = _pool(first, second)
    try:
        assert _addresses(await pool.resolve(_question("www.example.com"))) == ["192.0.2.2"]
        answer = await pool.resolve(_question("gone.example.com"))  # both failed: the last answer, not an error
        assert answer.rcode == wire.SERVFAIL and answer.ttl == 0
        assert first.count("gone.example.com") == 1 and second.count("gone.example.com") == 1
    finally:
        pool.close()


def _refusing(rcode: int, *names: str):
    """A fake upstream's hook: `rcode` for the names given, the fake's own answer for others."""

    def hook(query: dns.message.Message, transport: str) -> dns.message.Message | str:
        if query.question[0].name.to_text(omit_final_dot=True) not in names:
            return "default"
        response = dns.message.make_response(query)
        response.set_rcode(rcode)
        return response

    return hook


@pytest.mark.parametrize("rcode", [wire.REFUSED, wire.NOTAUTH])
async def test_a_refusal_fails_over_and_is_an_error_naming_it_when_every_upstream_refuses(first, second, rcode):
    first.hook = _refusing(rcode, "www.example.com", "gone.example.com")
    second.hook = _refusing(rcode, "gone.example.com")
    second.answer("www.example.com", "A", "192.0.2.2")
    pool = _pool(first, second)
    try:
        assert _addresses(await pool.resolve(_question("www.example.com"))) == ["192.0.2.2"]
        assert (pool.upstreams[0].failures, pool.upstreams[1].failures) == (1, 0)  # a refusal counts as a failure
        with pytest.raises(upstream.AllUpstreamsFailed) as failed:  # not the refusal: the client would take it for ours
            await pool.resolve(_question("gone.example.com"))
        assert failed.value.ede_code == wire.EDE_NO_REACHABLE_AUTHORITY
        name = "REFUSED" if rcode == wire.REFUSED else "NOTAUTH"
        refused = {
            f"no upstream answered: {a.address} refused ({name}), {b.address} refused ({name})"
            for a, b in ((first, second), (second, first))
        }
        assert str(failed.value) in refused
        assert first.count("gone.example.com") == 1 and second.count("gone.example.com") == 1
    finally:
        pool.close()


async def test_no_answer_in_time_fails_with_a_timeout_and_leaves_nothing_waiting(first):
    first.drop()
    pool = _pool(first, timeout_seconds=0.3)
    try:
        with pytest.raises(upstream.AllUpstreamsFailed) as failed:
            await pool.resolve(_question("www.example.com"))
        assert failed.value.ede_code == wire.EDE_NO_REACHABLE_AUTHORITY
        assert str(failed.value) == f"no upstream answered: {first.address} timed out"
        [server] = pool.upstreams
        assert server.timeouts == 1 and first.count() == 1
        assert not pool.asking and not any(sock.pending for sock in server._sockets)
    finally:
        pool.close()


async def test_a_truncated_reply_is_asked_again_over_tcp(first):
    first.large_answer("big.example.com", 40).truncate("big.example.com")
    pool = _pool(first)
    try:
        answer = await pool.resolve(_question("big.example.com"))
        assert len(_addresses(answer)) == 40 and not wire.is_truncated(answer.message)
        assert pool.upstreams[0].truncated == 1
        assert first.count("big.example.com", transport="udp") == 1
        assert first.count("big.example.com", transport="tcp") == 1
    finally:
        pool.close()


def _reply(query: dns.message.Message, address: str, name: str | None = None) -> dns.message.Message:
    reply = dns.message.make_response(query)
    owner = name or query.question[0].name
    reply.answer.append(dns.rrset.from_text(owner, 60, "IN", "A", address))
    return reply


def _spoofs(query: dns.message.Message) -> list[bytes]:
    """Replies that must not be taken for the answer: another ID, another question."""
    wrong_id = _reply(query, "6.6.6.6")
    wrong_id.id = (query.id + 1) % 65536
    other = dns.message.make_query("evil.example.net", "A")
    other.id = query.id
    wrong_question = _reply(other, "6.6.6.7")
    wrong_question.flags |= dns.flags.QR
    return [wrong_id.to_wire(), wrong_question.to_wire()]


async def test_udp_replies_with_another_id_or_question_from_the_upstream_itself_are_ignored(first):
    def hook(query, transport):
        call = next(call for call in first.calls if call.id == query.id)
        for spoof in _spoofs(query):  # from the upstream's own address and port: past the connected socket
            first.send_udp(spoof, call.peer)
        return _reply(query, "192.0.2.99")

    first.hook = hook
    pool = _pool(first)
    try:
        assert _addresses(await pool.resolve(_question("spoof.example.com"))) == ["192.0.2.99"]
        assert pool.upstreams[0].mismatched == 2
    finally:
        pool.close()


async def test_only_spoofed_replies_end_in_a_timeout(first):
    def hook(query, transport):
        call = next(call for call in first.calls if call.id == query.id)
        for spoof in _spoofs(query):
            first.send_udp(spoof, call.peer)
        return None  # the real answer never comes

    first.hook = hook
    pool = _pool(first, timeout_seconds=0.3)
    try:
        with pytest.raises(upstream.AllUpstreamsFailed):
            await pool.resolve(_question("spoof.example.com"))
        assert pool.upstreams[0].mismatched == 2 and pool.upstreams[0].timeouts == 1
    finally:
        pool.close()


async def test_tcp_replies_with_another_id_or_question_are_skipped_on_the_connection(first):
    first.truncate("spoof.example.com")

    def hook(query, transport):
        if transport == "udp":
            return "default"  # truncated: asked again over TCP
        frames = [*_spoofs(query), _reply(query, "192.0.2.99").to_wire()]
        return Unframed(b"".join(wire.frame(frame) for frame in frames))

    first.hook = hook
    pool = _pool(first)
    try:
        assert _addresses(await pool.resolve(_question("spoof.example.com"))) == ["192.0.2.99"]
        assert pool.upstreams[0].mismatched == 2
    finally:
        pool.close()


class _Outcomes:
    """Waiters of UpstreamPool.ask: what each was handed."""

    def __init__(self) -> None:
        self.calls: list[tuple[wire.Answer | None, Exception | None]] = []

    def __call__(self, answer: wire.Answer | None, error: Exception | None) -> None:
        self.calls.append((answer, error))


async def test_identical_questions_in_flight_share_one_upstream_query(first):
    first.answer("www.example.com", "A", "192.0.2.5").delay(0.2, "www.example.com")
    pool = _pool(first)
    try:
        plain, upper, signed = _Outcomes(), _Outcomes(), _Outcomes()
        pool.ask(_question("www.example.com"), plain)
        pool.ask(_question("WWW.EXAMPLE.COM"), upper)  # the same question in another letter case: shared
        pool.ask(_question("www.example.com", want_dnssec=True), signed)  # DO set: another answer, asked apart
        assert pool.coalesced == 1 and len(pool.asking) == 2
        await until(lambda: plain.calls and upper.calls and signed.calls, 3)
        assert plain.calls == upper.calls  # the very same answer object
        assert [_addresses(outcome.calls[0][0]) for outcome in (plain, signed)] == [["192.0.2.5"]] * 2
        assert first.count("www.example.com") == 2 and not pool.asking
        # Coalescing lasts while the question is in flight: asked again, it goes upstream again.
        await pool.resolve(_question("www.example.com"))
        assert first.count("www.example.com") == 3 and pool.coalesced == 1
    finally:
        pool.close()


async def test_a_coalesced_question_fails_over_for_every_waiter(first, second):
    first.drop()
    second.answer("www.example.com", "A", "192.0.2.2")
    pool = _pool(first, second)
    try:
        waiters = [_Outcomes() for _ in range(3)]
        for waiter in waiters:
            pool.ask(_question("www.example.com"), waiter)
        await until(lambda: all(waiter.calls for waiter in waiters), 3)
        assert all(_addresses(waiter.calls[0][0]) == ["192.0.2.2"] for waiter in waiters)
        assert first.count() == 1 and second.count() == 1 and pool.coalesced == 2
    finally:
        pool.close()


async def test_an_upstream_is_up_only_once_it_answers_and_its_latency_is_that_of_its_answers(first):
    first.answer("www.example.com", "A", "192.0.2.2")
    pool = _pool(first, timeout_seconds=0.2)
    [server] = pool.upstreams
    try:
        # Never asked: neither up nor failing, and no latency to show.
        assert (server.up, server.failing, server.answer_seconds) == (False, False, None)
        await pool.resolve(_question("www.example.com"))
        assert server.up and not server.failing
        answered = server.answer_seconds
        assert answered is not None and 0 < answered < 0.2
        assert server.answer_times.count == 1 and server.answer_times.sum_seconds == answered
        first.drop()
        for number in range(upstream.DOWN_AFTER_FAILURES):
            assert not server.failing
            with pytest.raises(upstream.AllUpstreamsFailed):
                await pool.resolve(_question(f"q{number}.example.com"))
        assert server.failing and not server.up
        # Timeouts are no answers: the answer times are the same as before them.
        assert server.answer_seconds == answered and server.answer_times.count == 1
    finally:
        pool.close()


async def test_a_failing_upstream_is_probed_until_it_answers_again(first):
    pool = _pool(first, timeout_seconds=0.3)
    [server] = pool.upstreams
    try:
        await first.stop()  # nothing listens: each query fails at once (ICMP port unreachable)
        for number in range(upstream.DOWN_AFTER_FAILURES):
            with pytest.raises(upstream.AllUpstreamsFailed) as failed:
                await pool.resolve(_question(f"q{number}.example.com"))
            assert str(failed.value) == f"no upstream answered: {first.address} unreachable"
        assert server.failing
        await first.start()  # the same port again
        # No client asks anything: the probe (the root's NS) finds it answering.
        await until(lambda: not server.failing, upstream.PROBE_SECONDS * 3 + 1)
        assert server.up and first.count(".", "NS") >= 1 and first.count() == first.count(".", "NS")
    finally:
        pool.close()


async def test_a_servfail_names_the_upstreams_that_failed_and_how(first, second):
    first.drop()
    await second.stop()
    pool = _pool(first, second, timeout_seconds=0.4)
    try:
        with pytest.raises(upstream.AllUpstreamsFailed) as failed:
            await pool.resolve(_question("www.example.com"))
        assert str(failed.value) == f"no upstream answered: {first.address} timed out, {second.address} unreachable"
        assert failed.value.ede_code == wire.EDE_NO_REACHABLE_AUTHORITY  # a timeout is the most telling
    finally:
        pool.close()
