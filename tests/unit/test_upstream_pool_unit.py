"""UpstreamPool against a real loopback TCP server: bookkeeping, limits, waiters and expiry."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from loadweaver.config.addresses import UpstreamAddress
from loadweaver.pool.connection import UpstreamConnection
from loadweaver.pool.pool import PoolSettings, UpstreamConnectError, UpstreamPool
from tests.support.loopback import LoopbackServer
from tests.support.polling import eventually
from tests.support.ports import closed_port
from tests.support.upstream import blackhole_port


@dataclass
class TcpServer(LoopbackServer):
    """Accepts connections and holds them open until the peer closes; counts both."""

    open: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    closed_by_peer: list[int] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return self.connections

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        index = self.accepted
        self.writers.append(writer)
        try:
            while await reader.read(4096):
                pass
        finally:
            self.open -= 1
            self.closed_by_peer.append(index)


@pytest.fixture
async def server() -> AsyncIterator[TcpServer]:
    tcp = await TcpServer().start()
    yield tcp
    await tcp.stop()


@pytest.fixture
async def pools() -> AsyncIterator[list[UpstreamPool]]:
    created: list[UpstreamPool] = []
    yield created
    for pool in created:
        pool.close()


def make_pool(pools: list[UpstreamPool], port: int, **settings: Any) -> UpstreamPool:
    settings.setdefault("connect_timeout", 1.0)
    pool = UpstreamPool(
        UpstreamAddress("http", "127.0.0.1", port),
        PoolSettings(**settings),
        asyncio.get_running_loop(),
    )
    pools.append(pool)
    return pool


MakePool = Callable[..., UpstreamPool]


@pytest.fixture
def server_pool(server: TcpServer, pools: list[UpstreamPool]) -> MakePool:
    """Makes pools (with the given settings) to the `server` fixture."""

    def make(**settings: Any) -> UpstreamPool:
        return make_pool(pools, server.port, **settings)

    return make


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def one_slot_taken(server_pool: MakePool) -> tuple[UpstreamPool, UpstreamConnection]:
    """A pool limited to one connection, and that connection, lent out."""
    pool = server_pool(max_connections=1)
    return pool, await pool.acquire()


async def idle_connection(
    server: TcpServer, server_pool: MakePool
) -> tuple[UpstreamPool, UpstreamConnection, asyncio.StreamWriter]:
    """A pool holding one idle connection, and the server's end of that connection."""
    pool = server_pool()
    connection = await pool.acquire()
    pool.release(connection, reusable=True)
    await eventually(lambda: len(server.writers) == 1)
    return pool, connection, server.writers[0]


async def queued_acquire(pool: UpstreamPool) -> asyncio.Task[UpstreamConnection]:
    """An `acquire()` task that has run until it waits in the pool's queue."""
    task = asyncio.create_task(pool.acquire())
    await settle()
    return task


# ---- acquire / release / take_idle ----


async def test_acquire_opens_and_release_keeps_it_idle(server_pool: MakePool) -> None:
    pool = server_pool()
    connection = await pool.acquire()
    assert isinstance(connection, UpstreamConnection)
    assert connection.requests == 1
    assert not connection.reused
    assert pool.open_connections == 1
    assert pool.idle_count == 0
    pool.release(connection, reusable=True)
    assert pool.idle_count == 1
    assert pool.open_connections == 1
    assert not connection.closed


async def test_take_idle_reuses_and_counts_requests(
    server: TcpServer, server_pool: MakePool
) -> None:
    pool = server_pool()
    assert pool.take_idle() is None
    connection = await pool.acquire()
    pool.release(connection, reusable=True)
    again = pool.take_idle()
    assert again is connection
    assert connection.requests == 2
    assert connection.reused
    assert pool.idle_count == 0
    pool.release(connection, reusable=True)
    third = await pool.acquire()
    assert third is connection
    assert connection.requests == 3
    await settle()
    assert server.accepted == 1


async def test_take_idle_returns_newest_first(server_pool: MakePool) -> None:
    pool = server_pool()
    first = await pool.acquire()
    second = await pool.acquire()
    assert first is not second
    assert pool.open_connections == 2
    pool.release(first, reusable=True)
    pool.release(second, reusable=True)
    assert pool.take_idle() is second
    assert pool.take_idle() is first
    assert pool.take_idle() is None


async def test_fresh_acquire_skips_idle_connections(server_pool: MakePool) -> None:
    pool = server_pool()
    idle = await pool.acquire()
    pool.release(idle, reusable=True)
    fresh = await pool.acquire(fresh=True)
    assert fresh is not idle
    assert fresh.requests == 1
    assert pool.idle_count == 1
    assert pool.open_connections == 2


async def test_release_not_reusable_closes(server: TcpServer, server_pool: MakePool) -> None:
    pool = server_pool()
    connection = await pool.acquire()
    await eventually(lambda: server.open == 1)
    pool.release(connection, reusable=False)
    assert connection.closed
    assert pool.open_connections == 0
    assert pool.idle_count == 0
    await eventually(lambda: server.open == 0, message="server never saw the close")


async def test_release_clears_the_handler(server_pool: MakePool) -> None:
    pool = server_pool()
    connection = await pool.acquire()

    class Sink:
        def upstream_data(self, data: bytes) -> None: ...
        def upstream_closed(self, error: Exception | None) -> None: ...
        def upstream_pause_writing(self) -> None: ...
        def upstream_resume_writing(self) -> None: ...

    connection.handler = Sink()
    pool.release(connection, reusable=True)
    assert connection.handler is None


async def test_max_requests_closes_on_release(server_pool: MakePool) -> None:
    pool = server_pool(max_requests=2)
    connection = await pool.acquire()
    pool.release(connection, reusable=True)
    assert pool.take_idle() is connection  # its second request
    pool.release(connection, reusable=True)
    assert connection.closed
    assert pool.idle_count == 0
    assert pool.open_connections == 0


async def test_max_idle_closes_the_surplus(server_pool: MakePool) -> None:
    pool = server_pool(max_idle=1)
    first = await pool.acquire()
    second = await pool.acquire()
    pool.release(first, reusable=True)
    pool.release(second, reusable=True)
    assert pool.idle_count == 1
    assert second.closed
    assert not first.closed
    assert pool.open_connections == 1


async def test_connection_closed_by_server_while_idle_is_never_handed_out(
    server: TcpServer, server_pool: MakePool
) -> None:
    pool, connection, server_end = await idle_connection(server, server_pool)
    server_end.close()
    await eventually(lambda: connection.closed, message="the server's close went unnoticed")
    assert pool.idle_count == 0
    assert pool.open_connections == 0
    assert pool.take_idle() is None
    replacement = await pool.acquire()
    assert replacement is not connection


async def test_bytes_on_an_idle_connection_make_it_unusable(
    server: TcpServer, server_pool: MakePool
) -> None:
    pool, connection, server_end = await idle_connection(server, server_pool)
    server_end.write(b"HTTP/1.1 200 OK\r\n\r\n")
    await eventually(lambda: connection.closed)
    assert pool.take_idle() is None
    assert pool.open_connections == 0


# ---- max_connections and waiters ----


async def test_waiters_are_served_first_come_first_served(
    server: TcpServer, server_pool: MakePool
) -> None:
    pool, held = await one_slot_taken(server_pool)
    order: list[int] = []

    async def wait_turn(index: int) -> UpstreamConnection:
        connection = await pool.acquire()
        order.append(index)
        return connection

    tasks = []
    for index in range(4):
        tasks.append(asyncio.create_task(wait_turn(index)))
        await settle()  # queue them in a known order
    assert not any(task.done() for task in tasks)
    current = held
    for index in range(4):
        pool.release(current, reusable=True)
        current = await asyncio.wait_for(tasks[index], 1.0)
        assert current is held
        assert order == list(range(index + 1))
        assert not any(task.done() for task in tasks[index + 1 :])
    assert held.requests == 5
    assert server.accepted == 1
    pool.release(current, reusable=True)


async def test_waiter_gets_a_new_connection_when_a_lent_one_closes(
    server: TcpServer, server_pool: MakePool
) -> None:
    pool, held = await one_slot_taken(server_pool)
    waiter = await queued_acquire(pool)
    assert not waiter.done()
    pool.release(held, reusable=False)
    replacement = await asyncio.wait_for(waiter, 1.0)
    assert replacement is not held
    assert replacement.requests == 1
    assert pool.open_connections == 1
    await eventually(lambda: server.accepted == 2)


async def test_waiter_woken_when_server_closes_a_lent_connection(
    server: TcpServer, server_pool: MakePool
) -> None:
    pool, held = await one_slot_taken(server_pool)
    waiter = asyncio.create_task(pool.acquire())
    await eventually(lambda: len(server.writers) == 1)
    server.writers[0].close()
    replacement = await asyncio.wait_for(waiter, 2.0)
    assert replacement is not held
    assert held.closed
    pool.release(held, reusable=True)  # the exchange releases it later: must not double count
    assert pool.open_connections == 1


async def test_connections_being_opened_count_against_the_limit(
    server: TcpServer, server_pool: MakePool
) -> None:
    pool = server_pool(max_connections=2)
    tasks = [asyncio.create_task(pool.acquire()) for _ in range(5)]
    await asyncio.sleep(0)  # every task ran up to its first await; none has connected yet
    assert pool.open_connections == 2
    done, pending = await asyncio.wait(tasks, timeout=0.3)
    assert len(done) == 2
    assert len(pending) == 3
    assert server.accepted == 2
    for task in done:
        pool.release(task.result(), reusable=True)  # straight to the next two waiters
    await settle()
    finished = [task for task in tasks if task.done()]
    assert len(finished) == 4
    for task in set(finished) - done:
        pool.release(task.result(), reusable=True)
    await asyncio.wait_for(asyncio.gather(*tasks), 1.0)
    assert server.accepted == 2
    assert pool.open_connections == 2


async def test_failed_open_wakes_a_waiter(pools: list[UpstreamPool]) -> None:
    pool = make_pool(pools, closed_port(), max_connections=1)
    first = asyncio.create_task(pool.acquire())
    second = asyncio.create_task(pool.acquire())
    results = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 2.0)
    for result in results:
        assert isinstance(result, UpstreamConnectError)
        assert result.kind == "refused"
    assert pool.open_connections == 0


async def test_a_waiter_cancelled_after_being_handed_a_connection_does_not_leak_it(
    server_pool: MakePool,
) -> None:
    pool, held = await one_slot_taken(server_pool)
    waiter = await queued_acquire(pool)
    pool.release(held, reusable=True)  # handed to the waiter...
    waiter.cancel()  # ...which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await waiter
    # The slot must not be lost: the connection is idle or closed, and a new acquire succeeds.
    connection = await asyncio.wait_for(pool.acquire(), 1.0)
    assert pool.open_connections == 1
    pool.release(connection, reusable=True)


async def test_a_waiter_cancelled_after_being_woken_passes_the_free_slot_on(
    server_pool: MakePool,
) -> None:
    pool, held = await one_slot_taken(server_pool)
    first = await queued_acquire(pool)
    second = await queued_acquire(pool)
    pool.release(held, reusable=False)  # frees the slot and wakes the first waiter...
    first.cancel()  # ...which is cancelled before it can use it
    with pytest.raises(asyncio.CancelledError):
        await first
    connection = await asyncio.wait_for(second, 1.0)
    assert connection is not held
    assert pool.open_connections == 1
    pool.release(connection, reusable=True)


async def test_a_cancelled_waiter_does_not_take_a_later_release(server_pool: MakePool) -> None:
    pool, held = await one_slot_taken(server_pool)
    cancelled = await queued_acquire(pool)
    patient = await queued_acquire(pool)
    cancelled.cancel()
    await settle()
    pool.release(held, reusable=True)
    assert await asyncio.wait_for(patient, 1.0) is held


# ---- idle expiry ----


async def test_idle_connections_expire(server: TcpServer, server_pool: MakePool) -> None:
    pool = server_pool(idle_timeout=0.1)
    connection = await pool.acquire()
    pool.release(connection, reusable=True)
    await asyncio.sleep(0.05)
    assert not connection.closed
    await eventually(lambda: connection.closed, timeout=1.0, message="idle connection kept")
    assert pool.idle_count == 0
    assert pool.open_connections == 0
    await eventually(lambda: server.open == 0, message="server never saw the close")


async def test_idle_expiry_rearms_for_the_next_oldest(server_pool: MakePool) -> None:
    pool = server_pool(idle_timeout=0.2)
    older = await pool.acquire()
    newer = await pool.acquire()
    pool.release(older, reusable=True)
    await asyncio.sleep(0.12)
    pool.release(newer, reusable=True)
    await eventually(lambda: older.closed, timeout=1.0)
    assert not newer.closed, "the newer connection expired with the older one"
    await eventually(lambda: newer.closed, timeout=1.0, message="the timer was not re-armed")
    assert pool.open_connections == 0
    # A connection released after the timer went quiet is still expired.
    third = await pool.acquire()
    pool.release(third, reusable=True)
    await eventually(lambda: third.closed, timeout=1.0)


async def test_reuse_resets_the_idle_clock(server_pool: MakePool) -> None:
    pool = server_pool(idle_timeout=0.2)
    connection = await pool.acquire()
    pool.release(connection, reusable=True)
    for _ in range(4):
        await asyncio.sleep(0.1)
        assert pool.take_idle() is connection
        pool.release(connection, reusable=True)
    assert not connection.closed
    await eventually(lambda: connection.closed, timeout=1.0)


# ---- close ----


async def test_close_closes_idle_and_lets_queued_waiters_finish(
    server: TcpServer, server_pool: MakePool
) -> None:
    pool = server_pool(max_connections=2)
    idle = await pool.acquire()
    lent = await pool.acquire()
    pool.release(idle, reusable=True)
    assert pool.take_idle() is idle
    pool.release(idle, reusable=True)
    # Both slots taken again so that acquirers queue.
    assert pool.take_idle() is idle
    waiters = [asyncio.create_task(pool.acquire()) for _ in range(2)]
    await settle()
    pool.release(idle, reusable=True)  # goes to the first waiter
    first = await asyncio.wait_for(waiters[0], 1.0)
    assert first is idle
    pool.release(first, reusable=True)  # goes to the second waiter
    second = await asyncio.wait_for(waiters[1], 1.0)
    pool.release(second, reusable=True)
    assert pool.idle_count == 1

    late = [asyncio.create_task(pool.acquire()) for _ in range(2)]
    assert pool.take_idle() is idle
    await settle()
    pool.close()
    # Requests already queued are in flight: each gets a connection of its own.
    own = [await asyncio.wait_for(task, 1.0) for task in late]
    # Lent connections close when they come back, even as reusable.
    for connection in [lent, idle, *own]:
        pool.release(connection, reusable=True)
        assert connection.closed
    assert pool.open_connections == 0
    with pytest.raises(UpstreamConnectError) as raised:
        await pool.acquire()
    assert raised.value.kind == "closed"
    await eventually(lambda: server.open == 0)


async def test_close_closes_idle_connections_at_once(
    server: TcpServer, server_pool: MakePool
) -> None:
    pool = server_pool()
    connections = [await pool.acquire() for _ in range(3)]
    for connection in connections:
        pool.release(connection, reusable=True)
    pool.close()
    assert all(connection.closed for connection in connections)
    assert pool.idle_count == 0
    assert pool.open_connections == 0
    await eventually(lambda: server.open == 0)


# ---- connect failures ----


async def test_connect_refused(pools: list[UpstreamPool]) -> None:
    pool = make_pool(pools, closed_port())
    started = time.monotonic()
    with pytest.raises(UpstreamConnectError) as raised:
        await pool.acquire()
    assert raised.value.kind == "refused"
    assert time.monotonic() - started < 1.0
    assert pool.open_connections == 0


async def test_connect_timeout(pools: list[UpstreamPool]) -> None:
    with blackhole_port() as port:
        pool = make_pool(pools, port, connect_timeout=0.2)
        started = time.monotonic()
        with pytest.raises(UpstreamConnectError) as raised:
            await pool.acquire()
        elapsed = time.monotonic() - started
    assert raised.value.kind == "timeout"
    assert 0.15 <= elapsed < 1.0
    assert pool.open_connections == 0
