"""The embedded Celery broker: kombu's filesystem transport, with messages that appear only once written.

Kombu's ``Channel._put`` creates ``<ms>_<uuid>.<queue>.msg`` in the shared folder and only then locks and writes it,
while ``Channel._get`` lists the folder and takes (moves, then reads) any ``.msg`` file without a lock. A worker
that looks between the two takes an empty or half-written file: the message is lost and the worker dies on a
``JSONDecodeError``. Our 0.1 s polling (settings.py) makes that look frequent. Here a message is written under a
name ``_get`` ignores and renamed to its ``.msg`` name once complete; a rename within one folder is atomic. The
exchange tables kombu keeps beside them had the same gap when first created, closed the same way.
"""

import contextlib
import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        # Every publish reads its exchange's table file (``get_table``). Kombu creates a new table file empty and
        # only then locks and fills it, so a process publishing to it just then (on a fresh broker folder, as the
        # worker starts) reads nothing and fails on the same ``JSONDecodeError``; two binders creating it at once
        # also truncate each other. So the table appears already whole, as an empty list, and kombu's locked update
        # then always finds it.
        table = self._exchange_file(exchange)
        if not table.exists():
            self.control_folder.mkdir(exist_ok=True)
            partial = table.with_name(f"{table.name}.{uuid.uuid4()}.part")
            partial.write_text("[]")
            # A link, unlike a rename, never replaces a table another binder has just made and filled.
            with contextlib.suppress(FileExistsError):
                os.link(partial, table)
            partial.unlink()
        super()._queue_bind(exchange, routing_key, pattern, queue)

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        # The name kombu gives (its time prefix orders the queue); ``_get``, ``_size`` and ``_purge`` only count a
        # file whose name ends with ``.<queue>.msg``, so the ``.part`` file is invisible to them until renamed.
        filename = os.path.join(self.data_folder_out, f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg")
        partial = f"{filename}.part"
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, filename)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.remove(partial)
            raise ChannelError(f"Cannot add file {filename!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
