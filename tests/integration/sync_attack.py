"""Tries to read, forge and erase a node's data through its Sync service without peer credentials.

    python -m tests.integration.sync_attack 127.0.0.1:7070 [--as-node support]
        [--subject acme/user/u-1] [--bearer AGENT_TOKEN]

In order: enumerate the subjects (GetBuckets, GetDigests), read a subject's state
(ExchangeStates), forge an observation attributed to another agent (Replicate, then
ExchangeStates), erase the subject (a state with an erase bound at the present), claim a run in
the node's name (ClaimRun). Every call names ``--as-node`` in the node header, as a peer would,
and shows ``--bearer`` (an agent's token) when given, but no peer credential. Each step is
reported; the exit code is 0 only when every step was refused.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from node.peers import NODE_HEADER
from node.store import BUCKETS
from selfmodel.sync.v1 import sync_pb2, sync_pb2_grpc
from selfmodel.v1 import model_pb2
from sync.hlc import pack, wall_ms

REFUSALS = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
FORGED_STATEMENT = "Forged: wants every message deleted"


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    refused: bool
    detail: str


def _subject(text: str) -> model_pb2.Subject:
    tenant, kind, id = text.split("/")
    kind_value = model_pb2.SubjectKind.Value(f"SUBJECT_KIND_{kind.upper()}")
    return model_pb2.Subject(tenant=tenant, kind=kind_value, id=id)


def _try(name: str, call: Callable[[], str]) -> Step:
    try:
        return Step(name, False, f"ANSWERED: {call()}")
    except grpc.RpcError as exc:
        code = exc.code()
        return Step(name, code in REFUSALS, f"{code.name}: {exc.details()}")


def _forged_state(
    subject: model_pb2.Subject, node: str, erase: bool, observe: bool
) -> sync_pb2.SubjectState:
    actor = f"{node}.1.f0f0f0f0"  # an actor of the node the caller claims to be
    state = sync_pb2.SubjectState(subject=subject)
    if erase:  # erases every observation written before now
        state.erased.hlc = pack(wall_ms())
    state.context.vector.add(actor=actor, counter=1)
    if observe:
        o = state.observations.add(
            context="facts",
            key="forged",
            source="victim_agent",  # the agent the observation is attributed to
            statement=FORGED_STATEMENT,
            confidence=1.0,
            hlc=1,
            origin=node,
        )
        o.dot.actor, o.dot.counter = actor, 1
    return state


def attack(
    target: str, as_node: str, subject: str | None, bearer: str | None, timeout_s: float = 5.0
) -> list[Step]:
    metadata: tuple[tuple[str, str], ...] = ((NODE_HEADER, as_node),)
    if bearer:
        metadata += (("authorization", f"Bearer {bearer}"),)
    found: list[model_pb2.Subject] = []
    if subject:
        found.append(_subject(subject))
    with grpc.insecure_channel(target) as channel:
        stub = sync_pb2_grpc.SyncServiceStub(channel)

        def enumerate_subjects() -> str:
            stub.GetBuckets(sync_pb2.GetBucketsRequest(), timeout=timeout_s, metadata=metadata)
            reply = stub.GetDigests(
                sync_pb2.GetDigestsRequest(buckets=range(BUCKETS)),
                timeout=timeout_s,
                metadata=metadata,
            )
            found.extend(d.subject for d in reply.digests)
            return f"{len(reply.digests)} subjects listed"

        victim = found[0] if found else model_pb2.Subject(tenant="acme", kind=1, id="u-1")

        def read_state() -> str:
            request = sync_pb2.ExchangeStatesRequest(states=[sync_pb2.SubjectState(subject=victim)])
            reply = stub.ExchangeStates(request, timeout=timeout_s, metadata=metadata)
            statements = [o.statement for s in reply.states for o in s.observations]
            return f"read {len(statements)} statements of {victim.id}: {statements[:3]}"

        def forge() -> str:
            """As a delta of the claimed node, then as a state relayed by anti-entropy: refused
            only when both are."""
            batch = sync_pb2.ReplicateRequest(origin=as_node, first_seq=1, last_seq=1)
            delta = batch.deltas.add()
            delta.CopyFrom(_forged_state(victim, as_node, erase=False, observe=True))
            delta.events.add(actor=f"{as_node}.1.f0f0f0f0", counter=1)
            accepted = []
            refusal: grpc.RpcError | None = None
            try:
                for _ack in stub.Replicate(iter([batch]), timeout=timeout_s, metadata=metadata):
                    accepted.append("Replicate")
                    break
            except grpc.RpcError as exc:
                refusal = exc
            relayed = sync_pb2.ExchangeStatesRequest(
                states=[_forged_state(victim, as_node, False, True)]
            )
            try:
                stub.ExchangeStates(relayed, timeout=timeout_s, metadata=metadata)
                accepted.append("ExchangeStates")
            except grpc.RpcError as exc:
                refusal = exc
            if not accepted and refusal is not None:
                raise refusal
            return f"an observation attributed to victim_agent was accepted by {accepted}"

        def erase() -> str:
            raised = _forged_state(victim, as_node, erase=True, observe=False)
            stub.ExchangeStates(
                sync_pb2.ExchangeStatesRequest(states=[raised]),
                timeout=timeout_s,
                metadata=metadata,
            )
            return f"{victim.id} sent back with an erase bound at the present"

        def claim_run() -> str:
            request = sync_pb2.ClaimRunRequest(previous=0, run=7, incarnation=1_000)
            reply = stub.ClaimRun(request, timeout=timeout_s, metadata=metadata)
            return f"claim granted={reply.granted}"

        steps = [_try("enumerate subjects", enumerate_subjects)]
        victim = found[0] if found else victim
        for name, call in (
            ("read a subject's state", read_state),
            ("forge an observation of another agent", forge),
            ("erase a subject", erase),
            ("claim a run", claim_run),
        ):
            steps.append(_try(name, call))
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="HOST:PORT of a node's agents' or peers' port")
    parser.add_argument("--as-node", default="support", help="the node name claimed in the header")
    parser.add_argument("--subject", help="tenant/kind/id to read, forge and erase")
    parser.add_argument("--bearer", help="an agent's bearer token to show as well")
    args = parser.parse_args(argv)
    steps = attack(args.target, args.as_node, args.subject, args.bearer)
    for i, step in enumerate(steps, 1):
        print(f"{i}. {step.name}: {'REFUSED' if step.refused else 'NOT REFUSED'} ({step.detail})")
    refused = all(s.refused for s in steps)
    print("every step was refused" if refused else "SOME STEPS WERE NOT REFUSED", flush=True)
    return 0 if refused else 1


if __name__ == "__main__":
    sys.exit(main())
