"""The node's gRPC transport is chosen before gRPC is imported, and gRPC takes it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from node import transport

ROOT = Path(__file__).resolve().parents[2]


def python(code: str, experiments: str | None = None) -> subprocess.CompletedProcess[str]:
    """``code`` run by a fresh interpreter of this tree, with ``GRPC_EXPERIMENTS`` as given."""
    env = {k: v for k, v in os.environ.items() if k != transport.ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "protos"), str(ROOT)])
    if experiments is not None:
        env[transport.ENV] = experiments
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_grpc_reads_its_experiments_when_imported_and_knows_the_nodes():
    # What configure relies on. A grpcio without the experiment says so, and the node would
    # silently run EventEngine's listener: node.transport needs another look then.
    unknown = python("import grpc", experiments="-no_such_experiment")
    assert "Unknown experiment: no_such_experiment" in unknown.stderr
    known = python("import grpc", experiments=transport.NODE_EXPERIMENTS)
    assert known.returncode == 0
    assert "Unknown experiment" not in known.stderr


def test_the_command_line_configures_before_anything_imports_grpc():
    code = (
        "import os, sys\n"
        "import federation\n"
        "assert 'grpc' not in sys.modules, 'importing federation imported grpc'\n"
        "import federation.cli\n"
        "from node import transport\n"
        "print(os.environ[transport.ENV], '|', transport.described())\n"
    )
    out = python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{transport.NODE_EXPERIMENTS} | iomgr's listener"


def test_an_operators_experiments_are_kept():
    code = "import os, federation.cli\nprint(os.environ['GRPC_EXPERIMENTS'])"
    assert python(code, experiments="").stdout.strip() == ""
    kept = python(code, experiments="-event_engine_client")
    assert kept.stdout.strip() == "-event_engine_client"


def test_the_package_still_exports_the_client_library_lazily():
    import federation
    from federation.client import Client
    from node.errors import SelfModelError

    assert federation.Client is Client
    assert federation.SelfModelError is SelfModelError
    assert sorted(federation._MODULE_OF) == sorted(federation.__all__)
    for name in federation.__all__:
        assert getattr(federation, name) is not None
    try:
        federation.NoSuchName  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchName" in str(exc)
    else:
        raise AssertionError("an unknown name was found")


def test_described_says_when_configure_came_too_late(monkeypatch):
    monkeypatch.setenv(transport.ENV, "")  # so that what configure sets is undone after
    monkeypatch.delenv(transport.ENV)
    monkeypatch.setattr(transport, "_configured_in_time", None)
    assert transport.described() == "gRPC's default listener"
    import grpc  # noqa: F401  (imported already in this process: configure comes too late)

    transport.configure()
    assert transport.described().startswith("gRPC imported before GRPC_EXPERIMENTS was set")


def test_described_trusts_a_value_the_process_started_with(monkeypatch):
    # gRPC read it at import, however late configure comes.
    monkeypatch.setenv(transport.ENV, transport.NODE_EXPERIMENTS)
    monkeypatch.setattr(transport, "_configured_in_time", None)
    import grpc  # noqa: F401

    transport.configure()
    assert transport.described() == "iomgr's listener"
