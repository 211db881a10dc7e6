"""examples/node/handoff.js, a Node.js client generated from the protos at run time, against a
real two-node cluster: it observes on one node, reads on the other with the handoff token while
replication between them is cut (answered HANDOFF_POSITION_PENDING, read from the google.rpc
details, until the cut heals), and sees a write without a confidence refused.

Its packages install with `npm ci` from its lockfile (`make test` does it first); without node
and npm the test skips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from federation import tokens
from tests.harness import LocalCluster
from tests.nodes import wait_until

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "node"
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def node_example() -> Path:
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed: the Node.js example needs them")
    if not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=EXAMPLE,
            check=True,
            capture_output=True,
            timeout=TIMEOUT_S,
        )
    return Path(node)


def _pending_reads(cluster: LocalCluster, name: str) -> float:
    """The node's reads answered that a handoff token's position is not merged yet
    (selfmodel_handoff_pending_total)."""
    for line in cluster.nodes[name].metrics().splitlines():
        if line.startswith("selfmodel_handoff_pending_total "):
            return float(line.split(" ")[1])
    return 0.0


def test_the_node_example_reads_its_write_on_another_node_with_the_handoff_token(
    node_example: Path, make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    token_file = tmp_path / "tokens.toml"
    token, _ = tokens.create(token_file, "node_example_agent", "acme", "agent", ["*"])
    cluster = make_cluster(("sales", "support"), tokens=token_file)
    # Replication cut: the other node can show the write only once the example asks again.
    cluster.partition(["sales"], ["support"])
    env = {
        "PATH": os.environ.get("PATH", ""),
        "SELFMODEL_WRITE": cluster.address("sales"),
        "SELFMODEL_READ": cluster.address("support"),
        "SELFMODEL_TOKEN": token,
        "SELFMODEL_TENANT": "acme",
        "SELFMODEL_SUBJECT": "u-node",
    }
    with subprocess.Popen(
        [str(node_example), "handoff.js"],
        cwd=EXAMPLE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as example:
        try:
            wait_until(
                lambda: _pending_reads(cluster, "support") >= 1 or example.poll() is not None,
                "the example's read answered pending on support for its handoff token",
                timeout_s=60,
            )
            cluster.heal()
            stdout, stderr = example.communicate(timeout=60)
        finally:
            if example.poll() is None:
                example.kill()
                example.communicate()
    assert example.returncode == 0, stdout + stderr
    out = json.loads(stdout)

    assert out["written"]["key"] == "motivated by quick time-to-value"
    assert out["written"]["observation_id"].startswith("sales.")
    read = out["read"]
    assert read["node"] == "support"
    # Each pending answer's RetryInfo delay was read from the status details and waited.
    pending = read["pending"]
    assert pending, "the example never saw its read pending"
    assert len(pending) <= _pending_reads(cluster, "support")
    assert {p["reason"] for p in pending} == {"HANDOFF_POSITION_PENDING"}
    assert all(0 < p["retry_delay_ms"] <= 1000 and not p["final"] for p in pending)
    assert pending[0]["waited_ms"] == pending[0]["retry_delay_ms"]
    assert all(p["waited_ms"] >= p["retry_delay_ms"] for p in pending)
    [belief] = read["beliefs"]
    assert belief["statement"] == "Motivated by quick time-to-value"
    assert belief["policy"] == "POLICY_WEIGHTED"
    [supporter] = belief["supporters"]
    assert supporter["source"] == "node_example_agent"
    assert supporter["confidence"] == 0.82  # as reported, beside what it weighs
    assert supporter["evidence_factor"] == pytest.approx(0.95)  # one piece: 1 - 0.1 x 0.5
    assert supporter["weight"] == pytest.approx(0.82 * 0.95, abs=1e-6)
    assert belief["confidence"] == pytest.approx(0.82 * 0.95, abs=1e-6)
    assert read["context_min_confidence"] == {"purchase_motivation": 0.5}
    refused = out["refused_without_confidence"]
    assert refused is not None, "a write without a confidence was accepted"
    assert refused["code"] == "INVALID_ARGUMENT"
    assert refused["details"].startswith("confidence: ")
    assert refused["fields"] == ["confidence"]  # the BadRequest field violation
