"""The run-claim protocol (Sync.ClaimRun): at start, a node asks its peers to vouch that it
follows its previous run, which decides whether it may resume that run's actor."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc

from node.peerlink import GrpcPeerLink, PeerConfig, RunClaim
from node.peers import PeerAuth
from node.store import Store

log = logging.getLogger("selfmodel.node")

CLAIM_TIMEOUT_S = 2.0
CLAIM_RETRY_S = 0.2  # between claims to a peer not up yet


def claim_run(
    store: Store,
    peers: Sequence[PeerConfig],
    auth: PeerAuth,
    credentials: grpc.ChannelCredentials | None,
    timeout_s: float = CLAIM_TIMEOUT_S,
    wait_s: float = 0.0,
) -> bool:
    """At start, before any write: asks every peer to record this run as the node's latest.

    True only if every peer was reached and granted the claim to follow the previous run,
    which must have closed cleanly: then the node may resume that run's actor (Store.resume_actor).
    A peer that is down, slow or without a record of the previous run means a new actor, which
    is always safe; the claim is sent even then, so that the peers know this run.

    When there is a run to follow, a peer that cannot be reached (or does not answer in time)
    is asked again until ``wait_s`` has passed: nodes of a cluster started together serve
    ClaimRun before they decide their own claims, so they vouch for each other.
    """
    previous = store.previous_run if store.resumable is not None else 0
    run = RunClaim.of(store)
    deadline = time.monotonic() + (wait_s if previous else 0.0)

    def ask(peer: PeerConfig) -> bool:
        while True:
            link = GrpcPeerLink(auth, peer.address, credentials)
            try:
                return link.claim_run(previous, run, timeout_s)
            except grpc.RpcError as exc:
                retry = exc.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
                if not retry or time.monotonic() + CLAIM_RETRY_S >= deadline:
                    log.info(
                        "peer %s did not take this run's claim: %s", peer.name, exc.code().name
                    )
                    return False
            finally:
                link.close()
            time.sleep(CLAIM_RETRY_S)

    with ThreadPoolExecutor(max_workers=len(peers) or 1) as pool:
        granted = list(pool.map(ask, peers))
    return previous != 0 and all(granted)


__all__ = ["CLAIM_RETRY_S", "CLAIM_TIMEOUT_S", "claim_run"]
