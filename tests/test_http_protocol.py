"""A response's head leaves together with its first body chunk; nothing else is held back or reordered."""

from service.http_protocol import HeadWithBodyTransport


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class FakeCycle:
    response_started = False
    more_body = False  # the request body has been received whole

    def __init__(self) -> None:
        self.lingered = 0

    def linger(self) -> None:  # stands for the protocol's, which the transport calls instead of closing
        self.lingered += 1


def transport() -> tuple[HeadWithBodyTransport, FakeTransport, FakeCycle]:
    real, cycle = FakeTransport(), FakeCycle()
    return HeadWithBodyTransport(real, cycle, cycle.linger), real, cycle  # type: ignore[arg-type]


def test_head_and_first_body_chunk_are_one_write_and_later_chunks_follow_as_they_come() -> None:
    wrapped, real, cycle = transport()
    cycle.response_started = True
    wrapped.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert real.writes == []
    wrapped.write(b"first")
    wrapped.write(b"second")
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nfirst", b"second"]


def test_100_continue_before_the_response_starts_is_written_at_once() -> None:
    wrapped, real, cycle = transport()
    wrapped.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert real.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    cycle.response_started = True
    wrapped.write(b"head")
    wrapped.write(b"body")
    assert real.writes[1:] == [b"headbody"]


def test_closing_after_the_head_writes_the_head_then_closes() -> None:
    wrapped, real, cycle = transport()
    cycle.response_started = True
    wrapped.write(b"head")
    wrapped.close()
    assert (real.writes, real.closed) == ([b"head"], True)


def test_closing_while_the_request_body_still_comes_lingers_instead() -> None:
    wrapped, real, cycle = transport()
    cycle.response_started = True
    cycle.more_body = True
    wrapped.write(b"head")
    wrapped.close()
    assert (real.writes, real.closed, cycle.lingered) == ([b"head"], False, 1)


def test_other_attributes_are_the_real_transports() -> None:
    wrapped, real, _ = transport()
    real.closed = True
    assert wrapped.is_closing() is True
