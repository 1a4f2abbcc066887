import shutil
from pathlib import Path

import pytest

from onevps import registry, tiers
from onevps.config import load
from onevps.project import Project

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def p(tmp_path):
    shutil.copytree(ROOT / "dockerfiles", tmp_path / "dockerfiles",
                    ignore=shutil.ignore_patterns("*.crt", "*.whl"))
    return Project(tmp_path)


@pytest.fixture
def s(p):
    return load(p, environ={})


def test_tags_are_content_hashes(p, s):
    base, ml = tiers.content_tag(p, s, "base"), tiers.content_tag(p, s, "ml")
    assert base.startswith("c-") and len(base) == 14 and base != ml
    assert tiers.content_tag(p, s, "base") == base  # stable


def test_requirement_change_changes_the_tier_and_the_ml_tier_above(p, s):
    base, ml = tiers.content_tag(p, s, "base"), tiers.content_tag(p, s, "ml")
    req = p.root / "dockerfiles" / "base" / "requirements.txt"
    req.write_text(req.read_text() + "rich==13.0.0\n")
    assert tiers.content_tag(p, s, "base") != base
    assert tiers.content_tag(p, s, "ml") != ml


def test_every_file_the_base_dockerfile_copies_is_part_of_its_tag(p, s):
    """A file the Dockerfile COPYs that the tag missed would leave a server on the old image."""
    base, ml = tiers.content_tag(p, s, "base"), tiers.content_tag(p, s, "ml")
    serve = p.root / "dockerfiles" / "base" / "onevps_serve.py"
    serve.write_text(serve.read_text() + "\n# change\n")
    assert tiers.content_tag(p, s, "base") != base and tiers.content_tag(p, s, "ml") != ml
    dockerfile = (p.root / "dockerfiles" / "base" / "Dockerfile").read_text()
    copied = {word for line in dockerfile.splitlines() if line.startswith("COPY ")
              for word in line.split()[1:-1]}
    assert copied == {"extra-ca/", "requirements.txt", "constraints.txt", "onevps_serve.py"}


def test_ml_change_leaves_base_alone(p, s):
    base = tiers.content_tag(p, s, "base")
    dockerfile = p.root / "dockerfiles" / "ml" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "\n# change\n")
    assert tiers.content_tag(p, s, "base") == base


def test_extra_ca_is_staged_and_changes_the_base_tag(p, s, tmp_path):
    before = tiers.content_tag(p, s, "base")
    cas = tmp_path / "cas"
    cas.mkdir()
    (cas / "corp.crt").write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    (cas / "notes.txt").write_text("ignored")
    s2 = load(p, environ={"EXTRA_CA_DIR": str(cas)})
    assert tiers.stage_inputs(p, s2, "base") == ["extra-ca/corp.crt"]
    assert tiers.stage_inputs(p, s2, "base") == []  # already staged
    assert (p.root / "dockerfiles/base/extra-ca/corp.crt").is_file()
    assert not (p.root / "dockerfiles/base/extra-ca/notes.txt").exists()
    assert tiers.content_tag(p, s2, "base") != before


def test_wheels_are_staged_for_ml(p, s, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-none-any.whl").write_bytes(b"wheel")
    s2 = load(p, environ={"TORCH_WHEEL_DIR": str(wheels)})
    assert tiers.stage_inputs(p, s2, "ml") == ["wheels/torch-2.13.0+cpu-cp311-none-any.whl"]
    assert tiers.stage_inputs(p, s2, "base") == []


def test_image_names(p, s):
    assert tiers.image(s, "kb") == "onevps/kb:latest"
    assert tiers.tier_image(p, s, "base") == f"onevps/base:{tiers.content_tag(p, s, 'base')}"
    assert set(tiers.tag_env(p, s)) == {"BASE_TAG", "ML_TAG"}


# ------------------------------- what decides the installed torch is in the ML tag --

def _with(p, **env):
    return load(p, environ=env)


def test_ml_tag_covers_the_index_url_and_torch_cuda_but_base_does_not(p, s):
    base, ml = tiers.content_tag(p, s, "base"), tiers.content_tag(p, s, "ml")
    pypi = _with(p, TORCH_INDEX_URL="https://pypi.org/simple")
    cuda = _with(p, TORCH_CUDA="on")
    assert tiers.content_tag(p, pypi, "ml") != ml and tiers.content_tag(p, cuda, "ml") != ml
    assert tiers.content_tag(p, pypi, "ml") != tiers.content_tag(p, cuda, "ml")
    assert tiers.content_tag(p, pypi, "base") == tiers.content_tag(p, cuda, "base") == base
    assert tiers.content_tag(p, _with(p, TORCH_CUDA="off"), "ml") == ml  # the default, spelled out


def test_ml_tag_covers_the_staged_wheels_names_and_sizes(p, s):
    ml = tiers.content_tag(p, s, "ml")
    wheels = tiers.wheel_dir(p)
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"cpu wheel")
    with_cpu = tiers.content_tag(p, s, "ml")
    assert with_cpu != ml
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"cpu wheel, rebuilt")
    assert tiers.content_tag(p, s, "ml") not in (ml, with_cpu)  # same name, other size
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").rename(
        wheels / "torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl")
    assert tiers.content_tag(p, s, "ml") not in (ml, with_cpu)  # same bytes, other name
    (wheels / "notes.txt").write_text("not a wheel")
    (wheels / "torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl").unlink()
    assert tiers.content_tag(p, s, "ml") == ml  # only *.whl count
    assert tiers.content_tag(p, s, "base") == tiers.content_tag(p, _with(p), "base")


def test_a_server_build_is_tagged_with_the_servers_settings(p, s):
    """Files from this checkout, TORCH_* from the settings the build runs with (the server's .env)."""
    server = _with(p, TORCH_INDEX_URL="https://pypi.org/simple", TORCH_CUDA="on")
    tags = tiers.tag_env(p, server)
    assert tags["ML_TAG"] == tiers.content_tag(p, server, "ml") != tiers.content_tag(p, s, "ml")
    assert tags["BASE_TAG"] == tiers.content_tag(p, s, "base")
    assert tiers.tag_env(p, s) == {t.tag_key: tiers.content_tag(p, s, t.name) for t in tiers.TIERS}


# ------------------------------------------------------------ the Tier type --

def test_a_tier_knows_its_name_tag_key_service_folder_and_parent():
    base, ml = tiers.TIERS
    assert (base.name, base.tag_key, base.service, base.parent) == ("base", "BASE_TAG", "base-tier", None)
    assert (ml.name, ml.tag_key, ml.service, ml.parent) == ("ml", "ML_TAG", "ml-tier", "base")
    assert base.folder(ROOT) == ROOT / "dockerfiles" / "base" and ml.dockerfile(ROOT).is_file()
    assert base.dockerfile(ROOT).is_file()
    with pytest.raises(Exception):
        base.name = "other"  # type: ignore[misc]


def test_tiers_are_in_build_order_and_looked_up_by_name():
    assert tiers.TIER_ORDER == ("base", "ml") == tuple(t.name for t in tiers.TIERS)
    for i, t in enumerate(tiers.TIERS):
        assert tiers.tier(t.name) is t
        assert t.parent is None or t.parent in tiers.TIER_ORDER[:i]  # a parent is built first
    assert (tiers.tag_key("base"), tiers.tag_key("ml")) == ("BASE_TAG", "ML_TAG")
    with pytest.raises(KeyError, match="no tier 'gpu'"):
        tiers.tier("gpu")


def test_the_tiers_agree_with_the_registry_and_the_compose_file():
    compose = (ROOT / "compose" / "docker-compose.yml").read_text()
    assert {t.name: t.service for t in tiers.TIERS} == registry.TIER_SERVICES
    assert set(registry.TIERS) == set(tiers.TIER_ORDER)
    for t in tiers.TIERS:
        assert f"  {t.service}:" in compose and "${" + t.tag_key in compose


def test_tag_env_and_tier_dir_follow_the_tier_type(p, s):
    assert list(tiers.tag_env(p, s)) == [t.tag_key for t in tiers.TIERS]
    assert tiers.tier_dir(p, "ml") == tiers.ML.folder(p.root) == p.root / "dockerfiles" / "ml"
    assert tiers.wheel_dir(p) == p.root / "dockerfiles" / "ml" / "wheels"


def test_ml_settings_spell_torch_cuda_as_the_env_file_does(p, s):
    assert tiers.ml_settings(s) == {"TORCH_INDEX_URL": s.torch_index_url, "TORCH_CUDA": "off"}
    assert tiers.ml_settings(_with(p, TORCH_CUDA="ON"))["TORCH_CUDA"] == "on"


def test_rebuilding_a_tier_rebuilds_the_tiers_built_on_it():
    assert tiers.rebuilt_with("base") == ("base", "ml")
    assert tiers.rebuilt_with("ml") == ("ml",)
