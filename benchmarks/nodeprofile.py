"""Where node processes spend their CPU over a benchmark's window, in two views.

- **Threads**: each thread's CPU time (``/proc/<pid>/task/<tid>/stat``, user + system) from the
  window's start to its end, by role. A thread running Python is named by a ``py-spy dump``
  taken at the end (its stack says what it serves: a delta stream, a watch, gRPC's serving
  thread, the handler pool); any other by its OS name (gRPC's EventEngine and timer threads,
  RocksDB's background threads). This view counts every CPU-second the process used.
- **Samples**: ``py-spy record`` of the same window (Python frames, the process never paused),
  each sample put to the call or task it serves (an agent call by its handler, the delta
  streams in and out, anti-entropy, gRPC's own Python) and, separately, to the layer its
  innermost frame is in (storage, resolution, CRDT and codec, validation, gRPC's Python,
  protobuf, locks and thread handoffs). Samples of a thread blocked in a lock, a queue or a
  poll, and of threads with no Python frame, are counted apart: the threads view accounts for
  their CPU.

py-spy (a dev dependency) reads another process's memory: it needs the right to ptrace it, as
the same user on a machine whose ``kernel.yama.ptrace_scope`` allows it, or root.

    profile = NodeProfile.start({"n1": pid1, "n2": pid2}, delay_s=5, duration_s=30)
    ...                                  # the benchmark runs
    print(render(profile.finish()))
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_RATE_HZ = 50
_CALL = re.compile(r"^(\w+Servicer)\.(\w+) \(node/")
# By a thread's Python stack (any frame containing the key), first match wins.
_THREAD_ROLES = (
    ("PeerServicer.Replicate (", "delta streams in (Replicate)"),
    ("WatchSelfModel (", "watch streams"),
    ("_consume_request_iterator (", "delta streams out (gRPC's request threads)"),
    ("_serve (grpc/_server.py", "gRPC serving thread"),
    ("grpc/_channel.py", "gRPC channel threads"),
    ("concurrent/futures/thread.py", "handler pool (unary calls)"),
)
# By the Python name of a thread the node starts itself (sync.sender: one of each per peer).
_NAMED_THREADS = (
    ("ae-", "anti-entropy"),
    ("sync-housekeeping", "other Python threads"),  # sync.replicator's, not a peer's stream
    ("sync-", "delta streams out (acknowledgements)"),
)
# By a sample's stack, first match wins (after the servicer methods, matched by _CALL).
_SAMPLE_TASKS = (
    ("antientropy.py", "anti-entropy"),
    ("_consume_request_iterator (", "delta streams out"),
    ("sync/sender.py", "delta streams out"),
    ("node/learning.py", "learned reliability"),
    ("prometheus_client", "/metrics scrapes"),
    ("_unary_response_in_pool (", "gRPC's Python around unary handlers"),
    ("Future.set_result (", "gRPC's Python around unary handlers"),
    ("_stream_response_in_pool (", "gRPC's Python around streaming handlers"),
    ("_serve (grpc/_server.py", "gRPC serving thread"),
    ("grpc/_channel.py", "gRPC channel threads"),
)
# A sample whose innermost frame is one of these is a thread blocked in C (a lock, a queue, a
# poll): py-spy cannot always tell it from a running one without pausing the process, so such
# samples are counted apart as waiting (the threads view has the CPU they really used).
_WAITS = frozenset(
    {
        "Condition.wait",
        "Condition.wait_for",
        "Event.wait",
        "_worker",
        "_wait_once",
        "wait",
        "select",
        "_PollLikeSelector.select",
        "_serve",  # gRPC's serving thread in its completion queue's poll
        "channel_spin",  # a channel's thread in its completion queue's poll
        "_blocking",  # a unary call waiting for its reply
    }
)
# By the innermost frame's file, first match wins.
_LAYERS = (
    (("node/store/", "rocksdict"), "storage (node/store, RocksDB calls)"),
    (
        (
            "node/resolution",
            "node/snapshots",
            "node/reads",
            "node/reliability",
            "node/rollup",
            "node/groupreads",
            "node/groups",
        ),
        "resolution, snapshots and roll-ups",
    ),
    (("sync/",), "CRDT, codec and sync"),
    (
        ("node/validation", "node/screening", "node/decoding", "node/refusals", "node/sizes"),
        "validation and limits",
    ),
    (("grpc/",), "gRPC's Python"),
    (("google/protobuf",), "protobuf"),
    (("threading.py", "queue.py", "concurrent/futures"), "locks and thread handoffs"),
    (("prometheus_client", "node/metrics"), "metrics"),
    (("node/", "federation/", "selfmodel/"), "node, other"),
)


@dataclass
class Profile:
    """One process's window: CPU seconds by thread role, and sample counts by task and layer."""

    name: str
    cpu_s: float = 0.0
    threads: Counter[str] = field(default_factory=Counter)  # role -> CPU seconds
    tasks: Counter[str] = field(default_factory=Counter)  # task -> samples
    layers: Counter[str] = field(default_factory=Counter)  # layer -> samples
    native_samples: int = 0  # samples of threads with no Python frame
    waiting_samples: int = 0  # samples of threads blocked in C (_WAITS)
    error: str = ""


def py_spy() -> str:
    """The py-spy executable beside this interpreter's, else on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    found = str(here) if here.exists() else shutil.which("py-spy")
    if found is None:
        raise FileNotFoundError("py-spy is not installed (pip install -e '.[dev]')")
    return found


def record_command(spy: str, pid: int, rate: int, seconds: float, fmt: str, out: Path) -> list[str]:
    """``py-spy record`` of ``pid`` for ``seconds``, never pausing it, into ``out``."""
    return [
        spy, "record", "--pid", str(pid), "--rate", str(rate),
        "--duration", str(max(1, round(seconds))), "--nonblocking",
        "--format", fmt, "--output", str(out),
    ]  # fmt: skip


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Each live thread of ``pid``: its OS name and CPU seconds so far."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            raw = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        found[int(task.name)] = (comm, (int(fields[11]) + int(fields[12])) / tick)
    return found


def dumped_stacks(text: str) -> dict[int, tuple[str, list[str]]]:
    """A ``py-spy dump``'s Python thread name and stack (innermost frame first) per OS
    thread id."""
    stacks: dict[int, tuple[str, list[str]]] = {}
    frames: list[str] | None = None
    for line in text.splitlines():
        header = re.match(r'^Thread (\d+) \([^)]*\): "(.*)"', line)
        if header:
            frames = []
            stacks[int(header.group(1))] = (header.group(2), frames)
        elif frames is not None and line.startswith("    "):
            frames.append(line.strip())
    return stacks


def thread_role(name: str, stack: Sequence[str], os_name: str) -> str:
    """A thread's role, by the Python ``name`` and ``stack`` a dump gave it (none: a thread
    running no Python), else by its ``os_name``."""
    for prefix, role in _NAMED_THREADS:
        if name.startswith(prefix):
            return role
    for key, role in _THREAD_ROLES:
        if any(key in frame for frame in stack):
            return role
    if stack:
        return "other Python threads"
    if os_name.startswith("rocksdb"):
        return "RocksDB background threads"
    if os_name.startswith(("event_engine", "grpc")):
        return "gRPC core threads (EventEngine, timers)"
    return f"other threads ({os_name})"


def sample_task(frames: Sequence[str]) -> str:
    """What a sample's stack (outermost frame first) serves."""
    for frame in frames:
        call = _CALL.match(frame)
        if call:
            service, method = call.groups()
            if service == "PeerServicer":
                return "delta streams in (Replicate)" if method == "Replicate" else f"Sync.{method}"
            return f"Admin.{method}" if service == "AdminServicer" else method
    for key, task in _SAMPLE_TASKS:
        if any(key in frame for frame in frames):
            return task
    return "other"


def sample_layer(frames: Sequence[str]) -> str:
    innermost = frames[-1]
    for keys, layer in _LAYERS:
        if any(key in innermost for key in keys):
            return layer
    return "interpreter and standard library"


def read_samples(raw: str, into: Profile) -> None:
    """Adds ``py-spy record --format raw`` output (``frame;frame;... count`` lines) to ``into``."""
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if f]
        if not frames:
            into.native_samples += int(count)
            continue
        if frames[-1].split(" (", 1)[0] in _WAITS:
            into.waiting_samples += int(count)
            continue
        into.tasks[sample_task(frames)] += int(count)
        into.layers[sample_layer(frames)] += int(count)


class NodeProfile:
    """Profiles processes over one window, from a thread of its own (``start`` returns at once)."""

    def __init__(self, pids: Mapping[str, int], delay_s: float, duration_s: float) -> None:
        self.pids = dict(pids)
        self.delay_s = delay_s
        self.duration_s = duration_s
        self.profiles = {name: Profile(name) for name in pids}
        self._dir = Path(tempfile.mkdtemp(prefix="selfmodel-profile-"))
        self._thread = threading.Thread(target=self._run, name="node-profile", daemon=True)

    @classmethod
    def start(cls, pids: Mapping[str, int], delay_s: float, duration_s: float) -> NodeProfile:
        profile = cls(pids, delay_s, duration_s)
        profile._thread.start()
        return profile

    def _run(self) -> None:
        try:
            self._window()
        except Exception as exc:  # reported with the profiles, never a silent empty table
            for profile in self.profiles.values():
                profile.error = profile.error or f"{type(exc).__name__}: {exc}"

    def _window(self) -> None:
        time.sleep(self.delay_s)
        spy = py_spy()
        before = {name: thread_cpu(pid) for name, pid in self.pids.items()}
        recorders = {
            name: subprocess.Popen(
                record_command(
                    spy, pid, SAMPLE_RATE_HZ, self.duration_s, "raw", self._dir / f"{name}.txt"
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, pid in self.pids.items()
        }
        time.sleep(self.duration_s)
        after = {name: thread_cpu(pid) for name, pid in self.pids.items()}
        for name, recorder in recorders.items():
            self.profiles[name].error = _stopped(recorder)
        for name, pid in self.pids.items():
            profile = self.profiles[name]
            dump = subprocess.run(
                [spy, "dump", "--pid", str(pid), "--nonblocking"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            stacks = dumped_stacks(dump.stdout)
            for tid, (os_name, cpu) in after[name].items():
                used = cpu - before[name].get(tid, (os_name, 0.0))[1]
                name_of, stack = stacks.get(tid, ("", []))
                profile.threads[thread_role(name_of, stack, os_name)] += used
            profile.cpu_s = sum(profile.threads.values())
            samples = self._dir / f"{name}.txt"
            if samples.exists():
                read_samples(samples.read_text(), profile)

    def finish(self) -> list[Profile]:
        """The profiles, once the window has ended (waits for it)."""
        self._thread.join(self.delay_s + self.duration_s + 180)
        shutil.rmtree(self._dir, ignore_errors=True)
        return list(self.profiles.values())


def _stopped(recorder: subprocess.Popen[str]) -> str:
    """Waits for a ``py-spy record`` at the window's end; "" when it wrote its samples. One
    that fell behind (a loaded machine) is interrupted: it writes what it has, as on Ctrl-C."""
    try:
        _, err = recorder.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        recorder.send_signal(signal.SIGINT)
        try:
            _, err = recorder.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.communicate()
            return "py-spy did not stop"
    if recorder.returncode and recorder.returncode != -signal.SIGINT:
        return err.strip().splitlines()[-1] if err.strip() else f"py-spy exit {recorder.returncode}"
    return ""


def _shares(counts: Mapping[str, Counter[str]], unit: str) -> list[str]:
    """A markdown table: one row per key, one column per process and the total, in shares."""
    names = list(counts)
    keys = Counter[str]()
    for counter in counts.values():
        keys.update(counter)
    head = f"| {unit} | " + " | ".join(names) + " | all |"
    lines = [head, "|---" * (len(names) + 2) + "|"]
    totals = {n: sum(c.values()) or 1 for n, c in counts.items()}
    grand = sum(keys.values()) or 1
    for key, value in keys.most_common():
        if value <= 0:
            continue
        cells = [f"{counts[n][key] / totals[n]:.1%}" for n in names]
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {value / grand:.1%} |")
    return lines


def render(profiles: Sequence[Profile], window_s: float) -> str:
    """The two views as markdown tables."""
    by_name = {p.name: p for p in profiles}
    lines = [
        f"where the nodes' CPU went ({window_s:g} s window): "
        + ", ".join(f"{p.name} {p.cpu_s:.1f} s" for p in profiles),
        "",
        *_shares({n: p.threads for n, p in by_name.items()}, "thread role (share of CPU)"),
        "",
        *_shares({n: p.tasks for n, p in by_name.items()}, "call or task (share of samples)"),
        "",
        *_shares({n: p.layers for n, p in by_name.items()}, "layer (share of samples)"),
        "",
        "samples of Python threads at work, by their stacks; left out: samples of threads "
        "blocked in a lock, a queue or a poll, and of threads with no Python frame (gRPC's and "
        "RocksDB's own; their CPU is in the first table): "
        + ", ".join(f"{p.name} {p.waiting_samples} and {p.native_samples}" for p in profiles),
    ]
    for p in profiles:
        if p.error:
            lines.append(f"{p.name}: py-spy failed: {p.error}")
    return "\n".join(lines)


__all__ = ["NodeProfile", "Profile", "render"]
