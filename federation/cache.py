"""A subject's model kept current by a watch stream, so repeated reads cost microseconds."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc

from federation import calls
from federation.views import SelfModelView, SubjectLike

if TYPE_CHECKING:
    from federation.client import Client


class CachedModel:
    """While the stream is up, ``get()`` is never staler than the node's push delay; while it is
    down (node restarting, network cut), ``get()`` reads from the node directly and the stream
    reconnects in the background with jittered backoff.
    """

    def __init__(
        self,
        client: Client,
        subject: SubjectLike,
        contexts: Sequence[str] = (),
        include_uncertain: bool = False,
    ) -> None:
        self._client = client
        self._subject = subject
        self._contexts = tuple(contexts)
        self._include_uncertain = include_uncertain
        self._watch = calls.watch(
            client._req, subject, contexts=contexts, include_uncertain=include_uncertain
        )
        self._view: SelfModelView | None = None
        self._live = threading.Event()
        self._closed = threading.Event()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._follow, name="selfmodel-cache", daemon=True)
        self._thread.start()

    @property
    def live(self) -> bool:
        return self._live.is_set()

    def get(self, wait_s: float = 2.0) -> SelfModelView:
        if self._live.wait(wait_s) and self._view is not None:
            return self._view
        return self._client.self_model(
            self._subject, contexts=self._contexts, include_uncertain=self._include_uncertain
        )

    def close(self) -> None:
        self._closed.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()
        self._thread.join(5)

    def __enter__(self) -> CachedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _follow(self) -> None:
        failures = 0
        while not self._closed.is_set():
            try:
                self._stream = self._client._start(self._watch)
                for msg in self._stream:
                    self._view = self._watch.item(msg)
                    self._live.set()
                    failures = 0
            except grpc.RpcError:
                pass
            finally:
                self._live.clear()
            failures += 1
            self._closed.wait(min(2.0, 0.05 * 2 ** min(failures, 6)) * random.random())


__all__ = ["CachedModel"]
