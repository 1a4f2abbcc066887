"""The pruning rules, as a pure function: what goes, what stays."""

from pathlib import Path

import pytest

from onevps import disk, prune
from onevps.prune import Image, select

NS = "onevps"
BASE_NEW = Image("sha:base-new", ("onevps/base:c-new", "onevps/base:latest"), "2026-11-20", ("L1", "L2"))
BASE_OLD = Image("sha:base-old", ("onevps/base:c-old",), "2026-10-01", ("L1", "L0"))
BASE_GONE = Image("sha:base-gone", ("onevps/base:c-gone",), "2026-09-01", ("L1", "Lx"))
ML_NEW = Image("sha:ml-new", ("onevps/ml:c-mlnew", "onevps/ml:latest"), "2026-11-20", ("L1", "L2", "M1"))


def app(name, when, layers, *tags):
    return Image(f"sha:{name}-{when}", tuple(f"onevps/{name}:{t}" for t in tags), when, layers)


def plan_for(images, in_use=frozenset(), keep=2):
    return select(list(images), set(in_use), ["kb"], NS, {"base": "c-new", "ml": "c-mlnew"}, keep)


def test_keeps_latest_the_newest_n_and_what_runs():
    images = [BASE_NEW,
              app("kb", "2026-11-25", ("L1", "L2", "A5"), "latest", "deploy-5"),
              app("kb", "2026-11-24", ("L1", "L2", "A4"), "deploy-4"),
              app("kb", "2026-11-23", ("L1", "L2", "A3"), "deploy-3"),
              app("kb", "2026-11-22", ("L1", "L2", "A2"), "deploy-2"),
              app("kb", "2026-11-21", ("L1", "L2", "A1"), "deploy-1")]
    plan = plan_for(images, in_use={"sha:kb-2026-11-21"}, keep=2)
    assert plan.remove == ["onevps/kb:deploy-2", "onevps/kb:deploy-3"]  # deploy-1 runs: kept
    assert "onevps/kb:latest" in plan.kept and "onevps/kb:deploy-4" in plan.kept


def test_never_deletes_a_tier_a_kept_app_is_built_on():
    images = [BASE_NEW, BASE_OLD, BASE_GONE,
              app("kb", "2026-11-25", ("L1", "L2", "A5"), "latest"),
              app("kb", "2026-10-02", ("L1", "L0", "A0"), "deploy-0")]  # kept (newest 2), built on c-old
    plan = plan_for(images, keep=2)
    assert plan.remove == ["onevps/base:c-gone"]
    assert "onevps/base:c-old" in plan.kept and "onevps/base:c-new" in plan.kept


def test_a_pruned_app_image_releases_its_old_tier():
    images = [BASE_NEW, BASE_OLD,
              app("kb", "2026-11-25", ("L1", "L2", "A5"), "latest"),
              app("kb", "2026-11-24", ("L1", "L2", "A4"), "deploy-4"),
              app("kb", "2026-10-02", ("L1", "L0", "A0"), "deploy-0")]  # third newest: goes
    plan = plan_for(images, keep=2)
    assert plan.remove == ["onevps/base:c-old", "onevps/kb:deploy-0"]


def test_the_base_under_a_kept_ml_tier_stays():
    old_ml_base = Image("sha:base-mlparent", ("onevps/base:c-parent",), "2026-08-01", ("L1", "P"))
    old_ml = Image("sha:ml-old", ("onevps/ml:c-mlold",), "2026-08-02", ("L1", "P", "M0"))
    images = [BASE_NEW, ML_NEW, old_ml_base, old_ml]
    assert plan_for(images, in_use={"sha:ml-old"}).remove == []
    assert plan_for(images).remove == ["onevps/base:c-parent", "onevps/ml:c-mlold"]


def test_other_namespaces_and_repos_are_left_alone():
    other = Image("sha:x", ("onevps/other:old",), "2020-01-01", ("Z",))
    assert plan_for([BASE_NEW, other]).remove == []


def test_recency_is_the_last_deploy_not_the_build_time():
    """A cached build reuses an old image (old creation time) that was deployed just now."""
    old_build_new_deploy = app("kb", "2026-01-01", ("L1", "L2", "A1"), "deploy-20261126060300")
    images = [BASE_NEW,
              app("kb", "2026-11-25", ("L1", "L2", "A5"), "latest", "deploy-20261126060400"),
              app("kb", "2026-11-24", ("L1", "L2", "A4"), "deploy-20261120000000"),
              app("kb", "2026-11-23", ("L1", "L2", "A3"), "deploy-20261110000000"),
              old_build_new_deploy]
    plan = plan_for(images, keep=2)
    assert plan.remove == ["onevps/kb:deploy-20261110000000", "onevps/kb:deploy-20261120000000"]
    assert "onevps/kb:deploy-20261126060300" in plan.kept


# ------------------------------------- reading Docker, as each CLI prints it --

FIXTURES = Path(__file__).parent / "fixtures" / "docker"  # real output, see its README.md


class DockerOutput:
    """Answers onevps' read-only docker calls with captured output; refuses any other call."""

    def __init__(self, df: str):
        self.df, self.argvs = df, []

    def run(self, argv, step, **kw):
        self.argvs.append(list(argv))
        if argv[:3] == ["docker", "image", "ls"]:
            out = "onevps/base:c-6f91ef1596ce\nonevps/ml:c-b58f04ca7e0c\n"
        elif argv[:3] == ["docker", "image", "inspect"]:
            out = (FIXTURES / "image-inspect-20.10.json").read_text()
        elif argv[:2] == ["docker", "ps"]:
            out = ""
        elif argv == disk.df_argv():
            out = self.df
        else:
            raise AssertionError(f"unexpected command {argv}")
        return type("R", (), {"ok": True, "stdout": out})()


@pytest.mark.parametrize("cli", ["20.10", "28.2"])
def test_collect_reads_real_output_of_both_clis(cli):
    runner = DockerOutput((FIXTURES / f"df-{cli}.json").read_text())
    images, in_use, unique = prune.collect(runner, "onevps")
    assert {i.tags for i in images} == {("onevps/base:c-6f91ef1596ce", "onevps/base:latest"),
                                        ("onevps/ml:c-b58f04ca7e0c", "onevps/ml:c-ccbc9819ed54", "onevps/ml:latest")}
    ml = next(i for i in images if "onevps/ml:latest" in i.tags)
    base = next(i for i in images if "onevps/base:latest" in i.tags)
    assert ml.layers[:len(base.layers)] == base.layers and len(ml.layers) == len(base.layers) + 4  # the ML tier's 4 steps
    assert in_use == set()
    assert unique[ml.id] == 1_396_000_000 and unique[base.id] == 0
    assert ["docker", "system", "df", "--verbose", "--format", "{{json .}}"] in runner.argvs


def test_collect_with_df_output_that_is_not_json_is_one_error_line():
    runner = DockerOutput((FIXTURES / "df-20.10-format-json.txt").read_text())
    with pytest.raises(disk.OnevpsError) as err:
        prune.collect(runner, "onevps")
    assert "printed no JSON (it printed 'json')" in str(err.value) and "\n" not in str(err.value)


def test_image_inspect_output_that_is_not_json_is_one_error_line():
    runner = DockerOutput("{}")
    runner.run = lambda argv, step, **kw: type("R", (), {"ok": True, "stdout": (
        "onevps/kb:latest\n" if argv[:3] == ["docker", "image", "ls"] else "Error: No such image")})()
    with pytest.raises(disk.OnevpsError, match="`docker image inspect onevps/kb:latest` printed no JSON"):
        prune.collect(runner, "onevps")
