"""`fab ship` without Docker or SSH: what is selected, what is skipped or only
tagged, the exact commands, the refusals (architecture, disk, nothing chosen)
and the stream into `docker load` (a fake channel and a fake `docker save`)."""

import io
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest

import fabfile
from onevps import composefile, config, remote, ship, tiers
from onevps.errors import OnevpsError
from onevps.registry import load as load_registry
from onevps.runner import Result

ROOT = Path(__file__).resolve().parents[2]
ID = {k: "sha256:" + k * 64 for k in "abcdef"}


def settings(tmp_path, local_ns="onevps", server_ns="prod"):
    env = tmp_path / "server.env"
    env.write_text(f"IMAGE_NAMESPACE={server_ns}\nBUILD_FREE_MB=100\n")
    local = config.load(root=ROOT, environ={"VPS_ENV_FILE": str(env), "VPS_PATH": "/srv/apps",
                                            "VPS_HOST": "vps.example.com", "IMAGE_NAMESPACE": local_ns},
                        env_file=ROOT / ".env.example")
    return local, remote.remote_settings(local)


class Recorder:
    """A runner answering commands from a table (first argv prefix that matches); records every command."""

    def __init__(self, table, dry_run=False):
        self.table, self.dry_run, self.calls, self.said = table, dry_run, [], []

    def run(self, argv, step, check=True, mutates=True, **kw):
        argv = [str(a) for a in argv]
        self.calls.append(shlex.join(argv))
        if self.dry_run and mutates:
            return Result(argv, 0, "", "")
        for prefix, answer in self.table.items():
            if shlex.join(argv).startswith(prefix):
                out, code = answer if isinstance(answer, tuple) else (answer, 0)
                return Result(argv, code, out, "" if code == 0 else "Error: No such image")
        return Result(argv, 0, "", "")

    def say(self, msg):
        self.said.append(msg)


def local_runner(images):
    """images: ref -> (id, arch, size); anything else is missing here."""
    table = {f"docker image inspect --format '{{{{.Id}}}} {{{{.Architecture}}}} {{{{.Size}}}}' {ref}":
             f"{i} {a} {s}\n" for ref, (i, a, s) in images.items()}
    table["docker image inspect"] = ("", 1)
    return Recorder(table)


def server(images="", arch="x86_64", free_mb=50_000, dry_run=False, verify=""):
    return Recorder({
        "docker images --no-trunc": images,
        "uname -m": arch + "\n",
        "docker info --format": "/var/lib/docker\n",
        "df -P -m": f"Filesystem 1M-blocks Used Available Capacity Mounted\n/dev/vda1 60000 1 {free_mb} 1% /\n",
        "docker image inspect --format '{{.Id}}'": verify,
    }, dry_run=dry_run)


def ctx(tmp_path, run, local_ns="onevps", server_ns="prod"):
    local, rs = settings(tmp_path, local_ns, server_ns)
    c = SimpleNamespace(local=local, rs=rs, reg=load_registry(local.compose_file), conn=None, run=run,
                        tags=tiers.tag_env(local))
    c.say = run.say if run else None
    return c


class FakeSave:
    def __init__(self, data=b"", code=0, err=b""):
        self.stdout, self.stderr, self.code, self.killed, self.argv = io.BytesIO(data), io.BytesIO(err), code, False, None

    def __call__(self, argv):
        self.argv = argv
        return self

    def kill(self):
        self.killed = True

    def wait(self):
        return -9 if self.killed else self.code


class FakeChannel:
    """`docker load` on the server: takes bytes; can end early (after `fail_after` bytes) with an error."""

    def __init__(self, status=0, stderr=b"", fail_after=None, stdout=b"Loaded image ID: x\n"):
        self.got, self.status, self.stderr, self.fail_after, self.stdout = bytearray(), status, stderr, fail_after, stdout
        self.closed_write = False

    def sendall(self, data):
        self.got.extend(data)

    def shutdown_write(self):
        self.closed_write = True

    def exit_status_ready(self):
        return self.fail_after is not None and len(self.got) >= self.fail_after

    def recv_exit_status(self):
        return self.status

    def recv_ready(self):
        return bool(self.stdout) and (self.closed_write or self.exit_status_ready())

    def recv(self, n):
        data, self.stdout = self.stdout, b""
        return data

    def recv_stderr_ready(self):
        return bool(self.stderr) and (self.closed_write or self.exit_status_ready())

    def recv_stderr(self, n):
        data, self.stderr = self.stderr, b""
        return data


# ------------------------------------------------------------------ selection --

def test_upstream_images_are_the_always_on_services_without_build():
    data = composefile.load(ROOT / "compose" / "docker-compose.yml")
    assert ship.upstream_images(data) == {
        "nginx:1.27-bookworm": ["nginx", "chroma-auth"],
        "chromadb/chroma:1.0.20": ["chromadb"],
        "redis:7.4-bookworm": ["redis"],
        "ollama/ollama:0.9.6": ["ollama"],
    }  # not certbot (profile certs), not the tiers or apps (build:)


def test_select_uses_the_servers_namespace_for_tiers_and_apps(tmp_path):
    local, rs = settings(tmp_path, local_ns="dev", server_ns="prod")
    tags = tiers.tag_env(local)
    data = composefile.load(local.compose_file)
    wanted = ship.select(local, rs, tags, data, tiers_=True, app="kb")
    assert [(w.local, w.remote) for w in wanted] == [
        (f"dev/base:{tags['BASE_TAG']}", (f"prod/base:{tags['BASE_TAG']}", "prod/base:latest")),
        (f"dev/ml:{tags['ML_TAG']}", (f"prod/ml:{tags['ML_TAG']}", "prod/ml:latest")),
        ("dev/kb:latest", ("prod/kb:latest",)),
    ]
    assert [w.kind for w in ship.select(local, rs, tags, data, upstream=True)] == ["upstream"] * 4


# ----------------------------------------------------------------------- plan --

def W(local, *remote, kind="upstream"):
    return ship.Wanted(local, remote or (local,), kind, local)


def test_plan_skips_ids_the_server_has_and_only_tags_missing_names():
    wanted = [W("redis:7", kind="upstream"), W("dev/base:c-1", "prod/base:c-1", "prod/base:latest", kind="tier"),
              W("nginx:1", kind="upstream")]
    local = {"redis:7": ship.LocalImage(ID["a"], "amd64", 10), "dev/base:c-1": ship.LocalImage(ID["b"], "amd64", 20),
             "nginx:1": ship.LocalImage(ID["c"], "amd64", 30)}
    ids, names = ship.parse_server_images(f"{ID['a']} redis:7\n{ID['b']} prod/base:c-1\n{ID['d']} <none>:<none>\n")
    p = ship.plan(wanted, local, ids, names)
    assert p.skip == ["redis:7", "prod/base:c-1"]
    assert p.tag == [(ID["b"], "prod/base:latest")]  # the ID is there: no bytes, just a name
    assert [w.local for w, _ in p.send] == ["nginx:1"] and p.bytes == 30
    assert p.tag_after == []  # saved by its own name, which the server uses too


def test_plan_sends_an_id_once_and_names_it_on_the_server_after_the_load():
    wanted = [W("dev/base:c-1", "prod/base:c-1", "prod/base:latest", kind="tier"),
              W("dev/kb:latest", "prod/kb:latest", kind="app")]
    same = ship.LocalImage(ID["e"], "amd64", 100)
    p = ship.plan(wanted, {"dev/base:c-1": same, "dev/kb:latest": same}, set(), {})
    assert [(w.local, ship.save_ref(w, img)) for w, img in p.send] == [("dev/base:c-1", ID["e"])]
    assert p.tag_after == [(ID["e"], "prod/base:c-1"), (ID["e"], "prod/base:latest"), (ID["e"], "prod/kb:latest")]


def test_plan_leaves_an_image_missing_here_but_present_there():
    p = ship.plan([W("ollama:1")], {"ollama:1": None}, {ID["a"]}, {"ollama:1": ID["a"]})
    assert (p.skip, p.absent, p.send) == (["ollama:1"], [], [])


# ------------------------------------------------------------------- commands --

def test_exact_commands():
    assert shlex.join(ship.save_argv(["redis:7.4-bookworm", ID["a"]])) == f"docker save redis:7.4-bookworm {ID['a']}"
    assert shlex.join(ship.load_argv()) == "docker load"
    assert shlex.join(ship.load_argv(["sudo", "-n"])) == "sudo -n docker load"
    assert shlex.join(ship.tag_argv(ID["a"], "prod/base:latest")) == f"docker tag {ID['a']} prod/base:latest"
    assert shlex.join(ship.server_images_argv()) == "docker images --no-trunc --format '{{.ID}} {{.Repository}}:{{.Tag}}'"


@pytest.mark.parametrize("uname, arch", [("x86_64\n", "amd64"), ("aarch64", "arm64"), ("riscv64", "riscv64")])
def test_server_arch(uname, arch):
    assert ship.server_arch(uname) == arch


# --------------------------------------------------------------------- recipe --

def test_ship_upstream_end_to_end_with_fakes(tmp_path):
    here = local_runner({"nginx:1.27-bookworm": (ID["a"], "amd64", 95_000_000),
                         "chromadb/chroma:1.0.20": (ID["b"], "amd64", 600_000_000),
                         "redis:7.4-bookworm": (ID["c"], "amd64", 88_000_000),
                         "ollama/ollama:0.9.6": (ID["d"], "amd64", 148_000_000)})
    run = server(images=f"{ID['b']} chromadb/chroma:1.0.20\n{ID['d']} other/ollama:x\n",
                 verify="\n".join([ID["a"], ID["b"], ID["c"], ID["d"]]))
    c = ctx(tmp_path, run)
    save, chan = FakeSave(b"x" * 3_000_000), FakeChannel()
    rep = ship.ship(c, upstream=True, local_runner=here, open_channel=lambda _: chan, start_save=save)
    assert save.argv == ["docker", "save", "nginx:1.27-bookworm", "redis:7.4-bookworm"]
    assert bytes(chan.got) == b"x" * 3_000_000 and chan.closed_write
    assert f"docker tag {ID['d']} ollama/ollama:0.9.6" in run.calls  # ID there, name not: tag only
    assert rep.shipped == ["nginx:1.27-bookworm", "redis:7.4-bookworm"] and rep.bytes_sent == 3_000_000
    assert rep.skipped == ["chromadb/chroma:1.0.20", "ollama/ollama:0.9.6"] and rep.tagged == ["ollama/ollama:0.9.6"]
    assert run.said[-1].startswith("==> shipped 2 image(s) (3.0 MB) in ") and run.said[-1].endswith(
        "; 2 already there (1 only tagged)")


def test_ship_tiers_under_another_namespace_tags_the_servers_names(tmp_path):
    c = ctx(tmp_path, None, local_ns="dev", server_ns="prod")
    base, ml = c.tags["BASE_TAG"], c.tags["ML_TAG"]
    here = local_runner({f"dev/base:{base}": (ID["a"], "amd64", 200), f"dev/ml:{ml}": (ID["b"], "amd64", 1500)})
    run = server(verify="\n".join([ID["a"]] * 2 + [ID["b"]] * 2))
    c.run, c.say = run, run.say
    save = FakeSave(b"tar")
    ship.ship(c, tiers=True, local_runner=here, open_channel=lambda _: FakeChannel(), start_save=save)
    assert save.argv == ["docker", "save", ID["a"], ID["b"]]
    assert [x for x in run.calls if x.startswith("docker tag")] == [
        f"docker tag {ID['a']} prod/base:{base}", f"docker tag {ID['a']} prod/base:latest",
        f"docker tag {ID['b']} prod/ml:{ml}", f"docker tag {ID['b']} prod/ml:latest"]


def test_architecture_mismatch_is_refused_before_anything_is_sent(tmp_path):
    here = local_runner({"nginx:1.27-bookworm": (ID["a"], "amd64", 10), "chromadb/chroma:1.0.20": (ID["b"], "amd64", 10),
                         "redis:7.4-bookworm": (ID["c"], "amd64", 10), "ollama/ollama:0.9.6": (ID["d"], "amd64", 10)})
    c = ctx(tmp_path, server(arch="aarch64"))
    save = FakeSave(b"x")
    with pytest.raises(OnevpsError) as err:
        ship.ship(c, upstream=True, local_runner=here, open_channel=lambda _: pytest.fail("opened"), start_save=save)
    assert err.value.message.startswith("error: nginx:1.27-bookworm is built for amd64 but the server runs arm64; "
                                        "nothing was sent (hint: ")
    assert "\n" not in err.value.message and save.argv is None


def test_too_little_disk_is_refused_naming_the_need_and_fab_prune(tmp_path):
    here = local_runner({"nginx:1.27-bookworm": (ID["a"], "amd64", 400_000_000), "chromadb/chroma:1.0.20": (ID["b"], "amd64", 1),
                         "redis:7.4-bookworm": (ID["c"], "amd64", 1), "ollama/ollama:0.9.6": (ID["d"], "amd64", 1)})
    ids = "".join(f"{ID[k]} x/{k}:1\n" for k in "bcd")
    c = ctx(tmp_path, server(images=ids, free_mb=800))  # needs 2 x 400 MB + BUILD_FREE_MB 100
    with pytest.raises(OnevpsError) as err:
        ship.ship(c, upstream=True, local_runner=here, open_channel=lambda _: pytest.fail("opened"),
                  start_save=FakeSave())
    assert err.value.message == (
        "error: only 800 MB free on the server's Docker disk (/var/lib/docker); loading 1 image(s) of 400.0 MB "
        "needs about 900 MB (twice the images + BUILD_FREE_MB 100); nothing was sent (hint: `fab prune` removes "
        "old images and build cache (`fab prune --dry-run` shows how much it frees))")


def test_upstream_image_missing_everywhere_is_one_line(tmp_path):
    here = local_runner({})
    c = ctx(tmp_path, server())
    with pytest.raises(OnevpsError) as err:
        ship.ship(c, upstream=True, local_runner=here)
    assert err.value.message.startswith("error: image nginx:1.27-bookworm (service nginx, chroma-auth) is neither "
                                        "on this machine nor on the server (and 3 more) (hint: get it here first")


def test_dry_run_lists_and_sends_nothing(tmp_path):
    here = local_runner({"nginx:1.27-bookworm": (ID["a"], "amd64", 95_500_000), "chromadb/chroma:1.0.20": (ID["b"], "amd64", 1),
                         "redis:7.4-bookworm": (ID["c"], "amd64", 1), "ollama/ollama:0.9.6": (ID["d"], "amd64", 1)})
    run = server(images="".join(f"{ID[k]} x/{k}:1\n" for k in "bcd"), dry_run=True)
    c = ctx(tmp_path, run)
    rep = ship.ship(c, upstream=True, local_runner=here, open_channel=lambda _: pytest.fail("opened"),
                    start_save=lambda argv: pytest.fail("saved"))
    assert "[dry-run] would ship nginx:1.27-bookworm (95.5 MB) as nginx:1.27-bookworm" in run.said
    assert run.said[-1] == "[dry-run] would send 1 image(s), about 95.5 MB; 3 already there; nothing sent"
    assert rep.bytes_sent == 0 and rep.shipped == [] and not any(x.startswith("docker tag") for x in run.calls)
    assert f"[dry-run] would tag redis:7.4-bookworm on the server (its image {ID['c'][:19]} is there)" in run.said


def test_nothing_chosen_is_one_line(tmp_path):
    with pytest.raises(OnevpsError, match="nothing to ship .*--tiers, --upstream, --app NAME"):
        ship.ship(ctx(tmp_path, server()))
    with pytest.raises(OnevpsError, match="choose at least one"):
        fabfile.ship.body(None)


# ------------------------------------------------------------------ streaming --

def test_stream_counts_bytes_and_prints_progress_by_tenths():
    said, t = [], iter(range(1000))
    chan = FakeChannel()
    res = ship.stream(io.BytesIO(b"y" * 1000), chan, total=1000, count=2, say=said.append,
                      clock=lambda: next(t) * 1.0, chunk=100)
    assert res.sent == 1000 and res.exit_status == 0 and res.stdout == "Loaded image ID: x\n"
    assert len(said) == 9 and said[0] == "    shipping 2 image(s): 100 B of ~1.0 kB, 100 B/s"


def test_stream_does_not_burst_lines_on_a_fast_link():
    said, t = [], iter(range(1000))
    ship.stream(io.BytesIO(b"y" * 1000), FakeChannel(), total=1000, count=1, say=said.append,
                clock=lambda: next(t) * 0.25, chunk=100)
    assert [line.split(": ")[1].split(" of")[0] for line in said] == ["400 B", "800 B"]  # every 1 s, not 10 lines


def test_stream_prints_every_two_seconds_when_slow():
    said, t = [], iter(range(1000))
    ship.stream(io.BytesIO(b"y" * 50), FakeChannel(), total=10_000, count=1, say=said.append,
                clock=lambda: next(t) * 1.0, chunk=10)
    assert len(said) == 2  # 5 chunks, one second apart: progress at 2 s and 4 s


def test_a_failing_load_stops_the_save_and_is_one_line(tmp_path):
    here = local_runner({"nginx:1.27-bookworm": (ID["a"], "amd64", 10), "chromadb/chroma:1.0.20": (ID["b"], "amd64", 10),
                         "redis:7.4-bookworm": (ID["c"], "amd64", 10), "ollama/ollama:0.9.6": (ID["d"], "amd64", 10)})
    c = ctx(tmp_path, server())
    save = FakeSave(b"z" * (5 * ship.CHUNK))
    chan = FakeChannel(status=1, fail_after=2 * ship.CHUNK,
                       stderr=b"open /var/lib/docker/tmp/x: no space left on device\n")
    with pytest.raises(OnevpsError) as err:
        ship.ship(c, upstream=True, local_runner=here, open_channel=lambda _: chan, start_save=save)
    assert save.killed and len(chan.got) == 2 * ship.CHUNK
    assert err.value.message == ("error: docker load on the server failed after 2.1 MB: open /var/lib/docker/tmp/x: "
                                 "no space left on device (hint: `fab prune` removes old images and build cache on "
                                 "the server (`fab disk` shows the use), then ship again)")


def test_a_load_failing_at_the_end_names_the_servers_last_line(tmp_path):
    here = local_runner({"nginx:1.27-bookworm": (ID["a"], "amd64", 10), "chromadb/chroma:1.0.20": (ID["b"], "amd64", 10),
                         "redis:7.4-bookworm": (ID["c"], "amd64", 10), "ollama/ollama:0.9.6": (ID["d"], "amd64", 10)})
    run = server()
    c = ctx(tmp_path, run)
    chan = FakeChannel(status=1, stderr=b"unexpected EOF\n")
    with pytest.raises(OnevpsError, match=r"^error: docker load on the server failed \(exit 1\): unexpected EOF "):
        ship.ship(c, upstream=True, local_runner=here, open_channel=lambda _: chan, start_save=FakeSave(b"a"))
    assert not any(x.startswith("docker tag") for x in run.calls)  # nothing named after a failed load


def test_a_tier_built_with_other_torch_settings_than_the_servers_is_refused(tmp_path):
    """The ML tag names what a build installs: shipping the tier built here under a tag the
    server's settings give to another build would be a lie. One line, nothing sent."""
    local, rs = settings(tmp_path)
    server_tags = tiers.tag_env(local, build=config.load(root=ROOT, environ={"TORCH_INDEX_URL": "https://pypi.org/simple"},
                                                          env_file=ROOT / ".env.example"))
    assert server_tags["ML_TAG"] != tiers.tag_env(local)["ML_TAG"]
    with pytest.raises(OnevpsError, match=r"the ml tier built here \(c-[0-9a-f]{12}\) is not the one the server's "
                                          r"settings describe .*TORCH_INDEX_URL or TORCH_CUDA differ"):
        ship.select(local, rs, server_tags, composefile.load(local.compose_file), tiers_=True)
    # the same settings on both sides: selected under the server's names
    wanted = ship.select(local, rs, tiers.tag_env(local), composefile.load(local.compose_file), tiers_=True)
    assert [w.remote[0].split(":")[0] for w in wanted] == ["prod/base", "prod/ml"]
