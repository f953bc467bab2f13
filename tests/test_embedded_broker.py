"""The embedded Celery broker (no REDIS_URL): kombu's filesystem transport as ``studios_project.broker`` amends it.

Stock kombu let a worker take a message file before its sender had written it; the worker died on a
``JSONDecodeError`` and ``runstudios`` stopped with "The worker stopped". These tests race a sender and a reader
through two channels on one folder, as the web server and the worker do. Both are threads of this process, so the
reader only gets in while the sender's file calls release the GIL: megabyte messages make the write long enough
for stock kombu to lose dozens of the 200 messages, and to fail reading a hundred or more of the 2000 new tables,
in every run. (The crash we saw had small messages, between the worker's and the web server's processes.)
"""

import threading
import time
from queue import Empty

from kombu import Connection

from studios_project.broker import Transport

MESSAGES = 200
TABLES = 2000
DEADLINE = 60  # seconds; a run takes about one alone, and took more than ten once in CI beside sessions left running


def channel(folder):
    options = {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        "control_folder": str(folder / "control"),
        # Taken messages are kept here rather than in the system's temporary folder.
        "store_processed": True,
        "processed_folder": str(folder / "processed"),
    }
    (folder / "processed").mkdir(exist_ok=True)
    return Connection("filesystem://", transport=Transport, transport_options=options).channel()


def race(send, read, count):
    """Run ``send(i)`` for each of ``count`` items in one thread while another calls ``read(i)`` for each in turn
    (again while it raises ``Empty``) until the deadline; returns what was read and what ``read`` raised."""
    received, errors = [], []
    deadline = time.monotonic() + DEADLINE

    def reader():
        i = 0
        while i < count and time.monotonic() < deadline:
            try:
                received.append(read(i))
            except Empty:
                continue
            except Exception as exc:
                errors.append(exc)
            i += 1

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(count):
        send(i)
    thread.join()
    return received, errors


def test_worker_receives_every_message_whole_while_the_web_server_writes_them(tmp_path):
    web, worker = channel(tmp_path), channel(tmp_path)
    body = "x" * 1_000_000

    received, errors = race(
        lambda i: web._put("studios", {"n": i, "body": body}),
        lambda i: worker._get("studios"),
        MESSAGES,
    )

    assert errors == []
    assert sorted(m["n"] for m in received) == list(range(MESSAGES))
    assert all(m["body"] == body for m in received)


def test_publisher_reads_an_exchange_table_while_the_worker_creates_it(tmp_path):
    worker, web = channel(tmp_path), channel(tmp_path)

    def read(i):
        if not (tmp_path / "control" / f"exchange{i}.exchange").exists():
            raise Empty
        return web.get_table(f"exchange{i}")

    tables, errors = race(lambda i: worker._queue_bind(f"exchange{i}", "key", "", f"queue{i}"), read, TABLES)

    assert errors == []
    assert len(tables) == TABLES
    assert all(web.get_table(f"exchange{i}") == [("key", "", f"queue{i}")] for i in range(TABLES))
