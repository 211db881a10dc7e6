"""The contracts pass `buf lint` (STANDARD rules, buf.yaml) and `buf breaking` against the last
released contract (protos/released.binpb), with buf from npm at the version package-lock.json
pins. `make test` installs it (`npm ci`); without npm these tests skip.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "node_modules" / ".bin" / "buf"
RELEASED = ROOT / "protos" / "released.binpb"
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def buf() -> Path:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: buf comes from npm (@bufbuild/buf)")
    if not BUF.exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=TIMEOUT_S,
        )
    return BUF


def run(buf: Path, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(buf), *args], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S
    )


def _copy_of_the_contracts(tmp_path: Path) -> Path:
    """buf.yaml and every .proto file, in a folder of their own to change."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    for proto in (ROOT / "protos").rglob("*.proto"):
        target = tmp_path / proto.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(proto, target)
    return tmp_path


def test_the_contracts_pass_buf_lint(buf: Path) -> None:
    done = run(buf, "lint")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_contracts_keep_every_promise_of_the_released_contract(buf: Path) -> None:
    done = run(buf, "breaking", "--against", str(RELEASED))
    assert done.returncode == 0, done.stdout + done.stderr


def test_buf_lint_refuses_a_service_outside_the_standard_rules(buf: Path, tmp_path: Path) -> None:
    copy = _copy_of_the_contracts(tmp_path)
    admin = copy / "protos" / "selfmodel" / "admin" / "v1" / "admin.proto"
    admin.write_text(admin.read_text().replace("service AdminService {", "service Admin {"))
    done = run(buf, "lint", "--error-format", "json", cwd=copy)
    assert done.returncode != 0
    assert '"type":"SERVICE_SUFFIX"' in done.stdout.replace(" ", ""), done.stdout + done.stderr


def test_buf_breaking_refuses_a_field_renumbered_since_the_release(
    buf: Path, tmp_path: Path
) -> None:
    copy = _copy_of_the_contracts(tmp_path)
    agent = copy / "protos" / "selfmodel" / "v1" / "selfmodel.proto"
    text = agent.read_text()
    assert "  string based_on = 7;" in text
    agent.write_text(text.replace("  string based_on = 7;", "  string based_on = 17;"))
    done = run(buf, "breaking", "--against", str(RELEASED), cwd=copy)
    assert done.returncode != 0
    assert "based_on" in done.stdout + done.stderr
