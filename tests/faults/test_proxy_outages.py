"""The connect proxy through an outage of PostgreSQL: a member's open WebSocket keeps working."""


def test_a_failed_activity_write_does_not_close_the_members_websocket(platform, postgres, studio):
    """The platform writes activity on every frame here (STUDIOS_ACTIVITY_WRITE_SECONDS=0)."""
    with platform.open_socket(studio) as member_socket:
        member_socket.send("before")
        assert member_socket.recv(timeout=5) == "before"
        postgres.stop()
        member_socket.send("during")
        assert member_socket.recv(timeout=5) == "during"
        postgres.start()
        member_socket.send("after")
        assert member_socket.recv(timeout=5) == "after"
    assert "last activity of studio" in platform.log()
