"""Presence through outages of PostgreSQL and Redis: no ghost avatar, and no live member's avatar dropped."""

import time

from studios.presence import LEAVE_AFTER_SECONDS

from ..live import wait_until
from .conftest import HEARTBEAT_SECONDS

SQL_CONNECTIONS = "SELECT id FROM studios_sessionconnection WHERE studio_id = %s"


def test_a_websocket_opened_while_redis_is_down_shows_its_avatar_and_leaves_no_ghost(platform, broker, studio):
    broker.stop()
    with platform.open_socket(studio) as member_socket:
        member_socket.send("ping")
        assert member_socket.recv(timeout=5) == "ping"
        broker.start()
        assert platform.shows_avatar(studio)
    wait_until(lambda: not platform.shows_avatar(studio), 3 * HEARTBEAT_SECONDS, "the avatar to go")


def test_a_websocket_closed_while_postgres_is_down_leaves_no_ghost_once_it_is_back(platform, postgres, studio):
    with platform.open_socket(studio):
        wait_until(lambda: platform.shows_avatar(studio), 5, "the avatar")
        postgres.stop()
    closed = f"proxy websocket closed user={studio['member']}"
    wait_until(lambda: closed in platform.log(), 5, "the proxy to see the close")
    time.sleep(LEAVE_AFTER_SECONDS + 0.5)  # the close is written, and fails, while the database is down
    postgres.start()
    wait_until(lambda: not platform.shows_avatar(studio), 3 * HEARTBEAT_SECONDS, "the ghost avatar to go")


def test_a_live_members_avatar_survives_a_postgres_outage_longer_than_three_heartbeats(
    platform, postgres, platform_side, studio
):
    """The outage is ten heartbeats (as 100 s would be in production); then the reconcile task looks at the
    connections before the platform's own heartbeat has been written again."""
    with platform.open_socket(studio) as member_socket:
        wait_until(lambda: platform.shows_avatar(studio), 5, "the avatar")
        written = postgres.query(SQL_CONNECTIONS, studio["id"])
        postgres.stop()
        time.sleep(10 * HEARTBEAT_SECONDS)
        postgres.refuse_tcp()
        postgres.start()
        assert platform_side.ask("forget") == []
        postgres.refuse_tcp(False)
        back = postgres.query("SELECT now()")[0][0]
        beaten = "SELECT 1 FROM studios_webprocess WHERE heartbeat > %s + make_interval(secs => %s)"
        wait_until(lambda: postgres.query(beaten, back, 2 * HEARTBEAT_SECONDS), 10, "the platform to beat twice")
        assert postgres.query(SQL_CONNECTIONS, studio["id"]) == written
        # Its run of beats started again when the database came back: it judges no one dead for three beats.
        newest = "SELECT beating_since >= %s FROM studios_webprocess ORDER BY heartbeat DESC LIMIT 1"
        assert postgres.query(newest, back) == [(True,)]
        assert platform.shows_avatar(studio)
        member_socket.send("still here")
        assert member_socket.recv(timeout=5) == "still here"
