"""benchmarks.nodeprofile: how threads and samples are put to roles, calls and layers."""

from __future__ import annotations

from benchmarks.nodeprofile import Profile, dumped_stacks, read_samples, render, thread_role

DUMP = """\
Process 100: python -m federation node --name n1
Python v3.11.7 (/usr/bin/python3.11)

Thread 100 (idle): "MainThread"
    Event.wait (threading.py:629)
    serve (node/server.py:378)
Thread 104 (active): "rpc_3"
    Condition.wait (threading.py:331)
    DeltaReceiver.receive (sync/receiver.py:90)
    PeerServicer.Replicate (node/peerservice.py:97)
    _worker (concurrent/futures/thread.py:83)
Thread 105 (idle): "rpc_4"
    _worker (concurrent/futures/thread.py:81)
Thread 106 (idle): "ae-n2"
    Event.wait (threading.py:629)
    PeerReplicator._anti_entropy_forever (sync/sender.py:406)
"""


def test_a_dump_gives_each_thread_its_stack_and_the_stack_its_role() -> None:
    stacks = dumped_stacks(DUMP)
    assert sorted(stacks) == [100, 104, 105, 106]
    assert stacks[104][0] == "rpc_3"
    assert stacks[104][1][-2] == "PeerServicer.Replicate (node/peerservice.py:97)"
    role = {tid: thread_role(name, stack, "python") for tid, (name, stack) in stacks.items()}
    assert role == {
        100: "other Python threads",
        104: "delta streams in (Replicate)",
        105: "handler pool (unary calls)",
        106: "anti-entropy",
    }
    assert thread_role("sync-n2", [], "python") == "delta streams out (acknowledgements)"
    assert thread_role("sync-housekeeping", [], "python") == "other Python threads"
    assert thread_role("", [], "rocksdb:low") == "RocksDB background threads"
    assert thread_role("", [], "event_engine") == "gRPC core threads (EventEngine, timers)"


def test_samples_go_to_their_call_and_innermost_layer_and_waits_are_left_out() -> None:
    worker = "Thread.run (threading.py:982);_worker (concurrent/futures/thread.py:83)"
    observe = f"{worker};SelfModelServicer.Observe (node/servicer.py:200)"
    raw = "\n".join(
        [
            f"{observe};LocalWrites.observe (node/writes.py:69);GroupCommit._write_group "
            "(node/store/commit.py:240) 7",
            f"{observe};state_to_proto (sync/codec.py:201) 3",
            f"{worker};PeerServicer.Replicate (node/peerservice.py:97);DeltaReceiver.receive "
            "(sync/receiver.py:90);Condition.wait (threading.py:331) 50",
            f"{worker};AdminServicer.GetStatus (node/adminservice.py:49);status "
            "(node/status.py:9) 2",
            " 4",  # a thread with no Python frame
        ]
    )
    profile = Profile("n1")
    read_samples(raw, profile)
    assert profile.tasks == {"Observe": 10, "Admin.GetStatus": 2}
    assert profile.layers == {
        "storage (node/store, RocksDB calls)": 7,
        "CRDT, codec and sync": 3,
        "node, other": 2,
    }
    assert (profile.waiting_samples, profile.native_samples) == (50, 4)
    table = render([profile], 10)
    assert "| Observe | 83.3% | 83.3% |" in table
