"""`inv disk`'s pure parts: Docker's human sizes, the image rows, the report text."""

import json
import re

import pytest

from onevps import disk


@pytest.mark.parametrize("text, n", [("0B", 0), ("185.5MB", 185_500_000), ("14.07kB", 14_070), ("1.6GB", 1_600_000_000),
                                     ("512B", 512)])
def test_parse_size(text, n):
    assert disk.parse_size(text) == n


def test_parse_size_refuses_garbage():
    with pytest.raises(ValueError):
        disk.parse_size("lots")


def test_image_rows_keep_only_the_namespace():
    df = json.dumps({"Images": [
        {"Repository": "onevps/kb", "Tag": "latest", "Size": "186MB", "UniqueSize": "26.4kB", "SharedSize": "185.5MB"},
        {"Repository": "nginx", "Tag": "1.27-bookworm", "Size": "95MB", "UniqueSize": "20MB", "SharedSize": "75MB"},
        {"Repository": "onevps-test/kb", "Tag": "latest", "Size": "186MB", "UniqueSize": "0B", "SharedSize": "186MB"},
    ]})
    rows = disk.image_rows(df, "onevps")
    assert [(r.image, r.size, r.unique, r.shared) for r in rows] == [("onevps/kb:latest", 186_000_000, 26_400,
                                                                      185_500_000)]


def test_render_marks_apps_over_budget_and_lists_their_files():
    data = {"images": [], "tiers": {"base": 185_500_000, "ml_own": 1_400_000_000}, "budget": 5_000_000,
            "apps": [{"app": "kb", "tier": "base", "own": 26_400, "over_budget": False, "largest": []},
                     {"app": "fat", "tier": "base", "own": 9_000_000, "over_budget": True,
                      "largest": ["/app/model.bin (8.9 MB)"]}],
            "on_disk": 1_600_000_000, "unlayered": 5_500_000_000, "savings_ratio": 3.44}
    text = disk.render(data)
    assert "fat                base      9.0 MB  OVER BUDGET" in text
    assert "    /app/model.bin (8.9 MB)" in text
    assert text.endswith("on disk 1.6 GB, unlayered 5.5 GB, savings 3.44x")


# ------------------------------------------------------- room for a build --

class FakeRunner:
    """Answers `docker info` and `df` like a server would; records what was said."""

    def __init__(self, df_out: str, root: str = "/srv/docker"):
        self.df_out, self.root, self.said, self.argvs = df_out, root, [], []

    def run(self, argv, step, **kw):
        self.argvs.append(list(argv))
        out = self.root + "\n" if argv[:2] == ["docker", "info"] else self.df_out
        return type("R", (), {"ok": True, "stdout": out})()

    def say(self, msg):
        self.said.append(msg)


DF = "Filesystem     1048576-blocks  Used Available Capacity Mounted on\n/dev/vda1  {total} {used} {avail} 50% /\n"


def test_parse_df_available():
    assert disk.parse_df_available(DF.format(total=100, used=40, avail=60)) == 60
    for bad in ("", "Filesystem\n", "header\n/dev/x a b c d e\n"):
        with pytest.raises(disk.OnevpsError, match="cannot read the free space"):
            disk.parse_df_available(bad)


def test_needed_room_adds_the_tiers_to_build():
    assert disk.needed_mb(1024, []) == 1024
    assert disk.needed_mb(1024, ["base", "ml"]) == 1024 + disk.TIER_BUILD_MB["base"] + disk.TIER_BUILD_MB["ml"]


def test_require_room_passes_and_says_how_much_is_free():
    runner = FakeRunner(DF.format(total=9000, used=1000, avail=8000))
    disk.require_room(runner, 1024, ["ml"], "building 1 app")
    assert runner.argvs == [["docker", "info", "--format", "{{.DockerRootDir}}"], ["df", "-P", "-m", "/srv/docker"]]
    assert runner.said == ["==> 8,000 MB free on the server's Docker disk (/srv/docker); building 1 app needs about "
                           f"{1024 + disk.TIER_BUILD_MB['ml']:,} MB"]


def test_require_room_refuses_naming_the_need_and_fab_prune():
    runner = FakeRunner(DF.format(total=9000, used=8300, avail=700))
    with pytest.raises(disk.OnevpsError) as err:
        disk.require_room(runner, 1024, [], "building 1 app")
    line = str(err.value)
    assert line.startswith("error: only 700 MB free on the server's Docker disk (/srv/docker); "
                           "building 1 app needs about 1,024 MB")
    assert "`fab prune`" in line and "\n" not in line
    assert runner.said == []


def test_budget_bytes_and_check_budget():
    assert disk.budget_bytes("5") == 5_000_000 and disk.budget_bytes(0.5) == 500_000
    for bad in ("0", "-1", "lots"):
        with pytest.raises(disk.OnevpsError, match="is not a positive number of MB"):
            disk.budget_bytes(bad)
    ok = {"over_budget": [], "apps": [], "budget": 5_000_000}
    disk.check_budget(ok)
    over = {"over_budget": ["fat"], "budget": 5_000_000,
            "apps": [{"app": "fat", "over_budget": True, "largest": ["/app/a.bin (9.0 MB)", "/app/b (1 MB)"]}]}
    with pytest.raises(disk.OnevpsError, match=r"over the 5 MB budget: fat \(largest files: fat: /app/a.bin"):
        disk.check_budget(over)


# ------------------------------------- Docker's output, as each CLI prints it --

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "docker"
CLIS = ["20.10", "28.2"]  # Debian 12's docker.io, Docker's current CLI (fixtures/docker/README.md)


def test_df_reads_a_json_template_every_cli_understands():
    argv = disk.df_argv()
    assert argv == ["docker", "system", "df", "--verbose", "--format", "{{json .}}"]


@pytest.mark.parametrize("cli", CLIS)
def test_image_rows_from_real_df_output(cli):
    rows = disk.image_rows((FIXTURES / f"df-{cli}.json").read_text(), "onevps")
    assert [(r.image, r.size, r.unique, r.shared) for r in rows] == [
        ("onevps/base:c-6f91ef1596ce", 186_000_000, 0, 185_500_000),
        ("onevps/ml:c-b58f04ca7e0c", 1_580_000_000, 1_396_000_000, 185_500_000)]


@pytest.mark.parametrize("cli", CLIS)
def test_unique_sizes_from_real_df_output(cli):
    unique = disk.unique_sizes((FIXTURES / f"df-{cli}.json").read_text())
    short = {iid[:19]: size for iid, size in unique.items()}
    assert all(len(iid) == 71 for iid in unique)  # full sha256: IDs, as `docker image inspect` gives them
    assert short == {"sha256:dc331b2df7c7": 1_396_000_000, "sha256:79d5f552e4fe": 0,
                     "sha256:d6235696df1f": 20_640_000, "sha256:cd416b0c7779": 3_006}


def test_the_20_10_cli_word_json_is_one_error_line_naming_the_command():
    printed = (FIXTURES / "df-20.10-format-json.txt").read_text()
    assert printed == "json"  # what `--format json` gives with the 20.10 CLI
    argv = ["docker", "system", "df", "--verbose", "--format", "json"]
    with pytest.raises(disk.OnevpsError) as err:
        disk.df_images(printed, argv)
    line = str(err.value)
    assert "\n" not in line
    assert "`docker system df --verbose --format json` printed no JSON (it printed 'json')" in line
    assert f"Docker {disk.MIN_DOCKER_VERSION} or newer" in line and disk.MIN_DOCKER_VERSION == "20.10"


@pytest.mark.parametrize("text, what", [("", "printed no JSON (it printed nothing)"),
                                        ('{"Images": "x"}', "printed JSON without an Images list"),
                                        ("[1, 2]", "printed JSON without an Images list")])
def test_df_output_that_is_not_the_expected_json_is_one_line(text, what):
    with pytest.raises(disk.OnevpsError, match=re.escape(what)) as err:
        disk.image_rows(text, "onevps")
    assert "\n" not in str(err.value)


def test_sizes_docker_did_not_compute_count_as_zero_and_garbage_is_one_line():
    assert disk.parse_size("N/A") == 0
    df = '{"Images": [{"ID": "sha256:ab", "Repository": "onevps/kb", "Tag": "latest", "Size": "1MB", ' \
         '"UniqueSize": "lots", "SharedSize": "N/A"}]}'
    with pytest.raises(disk.OnevpsError, match=r"UniqueSize 'lots' of sha256:ab is not a size") as err:
        disk.image_rows(df, "onevps")
    assert "\n" not in str(err.value)
