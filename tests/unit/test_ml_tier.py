"""The ML tier builds the same on a server as here: its staged wheels reach the
server before it builds, and its Dockerfile refuses a CUDA torch unless
TORCH_CUDA=on (the check runs here with a stand-in `torch` module)."""

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from onevps import config, deploy, remote, tiers
from onevps.project import Project
from onevps.registry import load as load_registry
from onevps.server import Ctx

ROOT = Path(__file__).resolve().parents[2]
TORCH = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"


# --------------------------------------------------- the Dockerfile's check --

def _instructions(dockerfile: Path) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined as Docker joins them."""
    text = re.sub(r"\\\n", "", dockerfile.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_cuda_check_is_the_last_step_and_takes_the_build_arg():
    steps = _instructions(ROOT / "dockerfiles" / "ml" / "Dockerfile")
    runs = [i for i, s in enumerate(steps) if s.startswith("RUN ")]
    arg = steps.index("ARG TORCH_CUDA=off")
    installs = [i for i in runs if "pip install" in steps[i]]
    assert installs and arg > max(installs)  # declared after the installs: their layers stay cached
    assert runs[-1] > arg and "torch.version.cuda" in steps[runs[-1]] and '"${TORCH_CUDA}"' in steps[runs[-1]]
    compose = (ROOT / "compose" / "docker-compose.yml").read_text()
    ml_tier = compose[compose.index("  ml-tier:"):compose.index("\n\n", compose.index("  ml-tier:"))]
    assert "        TORCH_CUDA: ${TORCH_CUDA:-off}\n" in ml_tier + "\n"


@pytest.fixture
def check(tmp_path):
    """Run the Dockerfile's last RUN as Docker would (sh -c, build args as env) with a stand-in torch."""
    steps = _instructions(ROOT / "dockerfiles" / "ml" / "Dockerfile")
    command = [s for s in steps if s.startswith("RUN ")][-1][len("RUN "):]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)

    def run(version: str, cuda: str | None, torch_cuda: str) -> subprocess.CompletedProcess:
        pkg = tmp_path / "site" / "torch"
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / "__init__.py").write_text(f"__version__ = {version!r}\n"
                                         f"class version:\n    cuda = {cuda!r}\n")
        env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(tmp_path / "site"),
               "TORCH_CUDA": torch_cuda}
        return subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=60)

    return run


def test_a_cuda_torch_fails_the_build_in_one_line(check):
    res = check("2.13.0+cu128", "12.8", "off")
    assert res.returncode == 1
    assert res.stderr == ("error: torch 2.13.0+cu128 is a CUDA build (torch.version.cuda=12.8): set TORCH_INDEX_URL "
                          "to the PyTorch CPU index or put the CPU wheel in TORCH_WHEEL_DIR, or set TORCH_CUDA=on\n")


def test_the_cpu_build_passes_and_torch_cuda_on_lets_cuda_pass(check):
    assert check("2.13.0+cpu", None, "off").returncode == 0
    assert check("2.13.0+cu128", "12.8", "on").returncode == 0
    assert check("2.13.0+cu128", "12.8", "ON").returncode == 0  # the .env value as written


# ------------------------------------------------- wheels for a server build --

def test_wheels_are_left_out_of_the_shared_sync_and_kept_for_the_ml_build(tmp_path):
    wheels = tmp_path / remote.WHEEL_DIR
    wheels.mkdir(parents=True)
    (wheels / ".gitkeep").write_text("")
    (wheels / TORCH).write_bytes(b"wheel")
    assert sorted(remote.local_files(tmp_path, remote.SHARED_DIRS)) == [f"{remote.WHEEL_DIR}/.gitkeep"]
    for_ml = remote.local_files(tmp_path, (remote.WHEEL_DIR,), wheels=True)
    assert sorted(for_ml) == [f"{remote.WHEEL_DIR}/.gitkeep", f"{remote.WHEEL_DIR}/{TORCH}"]


class FakeServer:
    """A server whose base tier exists and ML tier does not; it keeps what it was told to run."""

    def __init__(self, hashes: dict[str, str]):
        self.hashes, self.argvs, self.said, self.puts, self.dry_run = hashes, [], [], [], False

    def run(self, argv, step, **kw):
        self.argvs.append(list(argv))
        ok, out = True, ""
        if argv[:3] == ["docker", "image", "inspect"]:
            ok = "/base:" in argv[-1]
            out = "sha256:base\n" if ok else ""
        elif argv[:2] == ["sh", "-c"] and "sha256sum" in argv[2]:
            out = "".join(f"{h}  {rel}\n" for rel, h in self.hashes.items())
        return type("R", (), {"ok": ok, "stdout": out, "exited": 0 if ok else 1})()

    def say(self, msg):
        self.said.append(msg)

    def put(self, src, dst):
        self.puts.append((Path(src).name, dst))


@pytest.fixture
def ctx(tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "dockerfiles", root / "dockerfiles", ignore=shutil.ignore_patterns("*.crt", "*.whl"))
    shutil.copytree(ROOT / "compose", root / "compose", ignore=shutil.ignore_patterns("swarm"))
    (root / remote.WHEEL_DIR / TORCH).write_bytes(b"the cpu wheel")
    (root / remote.WHEEL_DIR / "tokenizers-0.22.0-cp311-none-any.whl").write_bytes(b"already there")
    project = Project(root)
    local = config.load(project, environ={"VPS_PATH": "/srv/apps"}, env_file=ROOT / ".env.example")
    rs = config.load(Project(Path("/srv/apps")), environ={"TORCH_INDEX_URL": "https://pypi.org/simple",
                                                              "VPS_PATH": "/srv/apps"}, env_file=ROOT / ".env.example")

    def make(hashes):
        server = FakeServer(hashes)
        return Ctx(local, project, rs, load_registry(project.compose_file), server, server,
                   tiers.tag_env(project, rs)), server

    return make


def test_an_ml_build_on_the_server_first_sends_the_missing_wheels(ctx):
    w = remote.WHEEL_DIR
    c, server = ctx({f"{w}/.gitkeep": hashlib.sha256(b"").hexdigest(),
                     f"{w}/tokenizers-0.22.0-cp311-none-any.whl": hashlib.sha256(b"already there").hexdigest(),
                     f"{w}/by-hand-1.0-py3-none-any.whl": "0" * 64})
    deploy.ensure_tier(c, "ml")
    assert server.puts == [(TORCH, f"/srv/apps/{w}/{TORCH}.onevps-tmp")]  # only the missing wheel
    assert not any(a[0] == "rm" for a in server.argvs)  # the wheel put there by hand stays
    build = next(i for i, a in enumerate(server.argvs) if a[-2:] == ["build", "ml-tier"])
    placed = next(i for i, a in enumerate(server.argvs) if a[:2] == ["sh", "-c"] and a[-1].endswith(TORCH))
    assert placed < build  # sent before the build
    assert f"==> sent 1 file(s) of {w} for the ML tier build, 13 bytes" in server.said
    assert c.tags["ML_TAG"] == tiers.content_tag(c.project, config.load(c.project, environ={
        "TORCH_INDEX_URL": "https://pypi.org/simple"}, env_file=ROOT / ".env.example"), "ml")


def test_a_base_build_sends_no_wheels(ctx):
    c, server = ctx({})
    deploy.ensure_tier(c, "base", force=True)
    assert server.puts == [] and not any("sha256sum" in " ".join(a) for a in server.argvs)
