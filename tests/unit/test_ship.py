"""`fab ship` without Docker or SSH: what is selected, what is skipped or only
tagged, the exact commands, the refusals (architecture, disk, nothing chosen)
and the stream into `docker load` (a fake channel and a fake `docker save`)."""

import io
import json
import os
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
from paramiko.ssh_exception import ChannelException, SSHException

import fabfile
from onevps import composefile, config, provision, remote, ship, tiers
from onevps.commands import transfer as transfer_commands
from onevps.project import Project
from onevps.ship import recipe as ship_recipe
from onevps.ship import transfer as ship_transfer
from onevps.errors import CommandFailed, OnevpsError
from onevps.registry import load as load_registry
from onevps.runner import Result

from . import goldens

ROOT = Path(__file__).resolve().parents[2]
PROJECT = Project(ROOT)
ID = {k: "sha256:" + k * 64 for k in "abcdef"}  # this machine's image IDs (e.g. a classic store: config digests)
SID = {k: "sha256:" + k * 64 for k in "123456789"}  # the server's (e.g. a containerd store: manifest digests)
CREATED = "2025-06-01T10:00:00.123456789Z"
# An image's content: its creation time and its layers' diff IDs, as `{{json .RootFS.Layers}}` prints them.
CONTENT = {k: (CREATED, json.dumps([f"sha256:{k * 64}", "sha256:" + "0" * 64], separators=(",", ":")))
           for k in "abcdef"}
CONTENT["a-rebuilt"] = ("2025-06-02T08:00:00Z", CONTENT["a"][1])  # same layers, new config (e.g. another CMD)


def key(content):
    return ship.image_key(*CONTENT[content])


def local_img(content, image_id=None, arch="amd64", size=10):
    return ship.LocalImage(image_id or ID[content[0]], arch, size, key(content))


def settings(tmp_path, local_ns="onevps", server_ns="prod"):
    env = tmp_path / "server.env"
    env.write_text(f"IMAGE_NAMESPACE={server_ns}\nBUILD_FREE_MB=100\n")
    local = config.load(PROJECT, environ={"VPS_ENV_FILE": str(env), "VPS_PATH": "/srv/apps",
                                          "VPS_HOST": "vps.example.com", "IMAGE_NAMESPACE": local_ns},
                        env_file=ROOT / ".env.example")
    return local, remote.remote_settings(PROJECT, local)


class Recorder:
    """A runner answering commands from a table (first argv prefix that matches: output, or
    (output, exit code[, stderr])); records every command."""

    def __init__(self, table, dry_run=False):
        self.table, self.dry_run, self.calls, self.said = table, dry_run, [], []

    def run(self, argv, step, check=True, mutates=True, **kw):
        argv = [str(a) for a in argv]
        self.calls.append(shlex.join(argv))
        if self.dry_run and mutates:
            return Result(argv, 0, "", "")
        for prefix, answer in self.table.items():
            if shlex.join(argv).startswith(prefix):
                out, code, *err = answer if isinstance(answer, tuple) else (answer, 0)
                return Result(argv, code, out, err[0] if err else "" if code == 0 else "Error: No such image")
        return Result(argv, 0, "", "")

    def say(self, msg):
        self.said.append(msg)


class LocalDocker(Recorder):
    """This machine's Docker: `docker image inspect --format LOCAL_FORMAT REFS...` prints a line per
    image found, in order, and names each missing one on stderr (exit 1), as Docker 28 does."""

    def __init__(self, images):
        super().__init__({})
        self.lines = {ref: f"{i} {a} {s} {' '.join(CONTENT[k])}\n" for ref, (i, a, s, k) in images.items()}

    def run(self, argv, step, check=True, mutates=True, **kw):
        argv = [str(a) for a in argv]
        if argv[:5] != transfer_commands.local_inspect_argv():
            return super().run(argv, step, check, mutates, **kw)
        self.calls.append(shlex.join(argv))
        refs = argv[5:]
        err = "".join(f"Error response from daemon: no such image: {r}: No such image: {r}\n"
                      for r in refs if r not in self.lines)
        return Result(argv, 1 if err else 0, "".join(self.lines[r] for r in refs if r in self.lines), err)


def local_runner(images):
    """images: ref -> (id, arch, size, content); anything else is missing here."""
    return LocalDocker(images)


def upstream_here(size=10, arch="amd64", **sizes):
    """The four upstream images on this machine: contents a-d under this machine's IDs a-d."""
    refs = ["nginx:1.27-bookworm", "chromadb/chroma:1.0.20", "redis:7.4-bookworm", "ollama/ollama:0.9.6"]
    return local_runner({ref: (ID[k], arch, sizes.get(k, size), k) for ref, k in zip(refs, "abcd")})


class FakeServer(Recorder):
    """The server's Docker: images (server ID -> content) and names; answers `docker images`,
    `docker image inspect --format KEY_FORMAT REFS...` (a line per ref found, exit 1 if one is
    missing) and `docker tag` from that state; a load (see `loader`) adds images."""

    def __init__(self, images=(), arch="x86_64", free_mb=50_000, dry_run=False, list_dangling=True, table=None,
                 inspect_error=""):
        super().__init__({
            **(table or {}),  # first: it answers before the defaults below
            "uname -m": arch + "\n",
            "docker info --format": "/var/lib/docker\n",
            "df -P -m": f"Filesystem 1M-blocks Used Available Capacity Mounted\n/dev/vda1 60000 1 {free_mb} 1% /\n",
        }, dry_run=dry_run)
        self.ids, self.names, self.list_dangling, self.inspect_error = {}, {}, list_dangling, inspect_error
        for image in images:
            self.add(*image)

    def add(self, server_id, name, content):
        self.ids[server_id] = content
        if name:
            self.names[name] = server_id

    def resolve(self, ref):
        return self.names.get(ref) or (ref if ref in self.ids else None)

    def run(self, argv, step, check=True, mutates=True, **kw):
        argv = [str(a) for a in argv]
        line = shlex.join(argv)
        if line.startswith("docker images --no-trunc"):
            self.calls.append(line)
            rows = [f"{i} {n}" for n, i in self.names.items()]
            if self.list_dangling:
                rows += [f"{i} <none>:<none>" for i in self.ids if i not in self.names.values()]
            return Result(argv, 0, "".join(r + "\n" for r in rows), "")
        if argv[:5] == ["docker", "image", "inspect", "--format", ship.KEY_FORMAT]:
            self.calls.append(line)
            if self.inspect_error:
                return Result(argv, 1, "", self.inspect_error)
            found = [(r, self.resolve(r)) for r in argv[5:]]
            out = "".join(f"{i} {' '.join(CONTENT[self.ids[i]])}\n" for _, i in found if i)
            err = "".join(f"Error: No such image: {r}\n" for r, i in found if not i)
            return Result(argv, 1 if err else 0, out, err)
        if argv[:2] == ["docker", "tag"] and not self.dry_run:
            self.calls.append(line)
            self.names[argv[3]] = self.resolve(argv[2])
            return Result(argv, 0, "", "")
        return super().run(argv, step, check, mutates, **kw)

    def loader(self, *loaded, **kw):
        """A channel for `docker load` that, once the stream ends, adds `loaded`: (server ID, name or None, content),
        printing what docker load prints ("Loaded image: NAME" / "Loaded image ID: ID")."""
        out = "".join(f"Loaded image: {n}\n" if n else f"Loaded image ID: {i}\n" for i, n, _ in loaded)
        return FakeChannel(stdout=out.encode(), on_end=lambda: [self.add(*x) for x in loaded], **kw)

    def server_calls(self, prefix):
        return [x for x in self.calls if x.startswith(prefix)]


def ctx(tmp_path, run, local_ns="onevps", server_ns="prod", project=PROJECT):
    local, rs = settings(tmp_path, local_ns, server_ns)
    c = SimpleNamespace(local=local, project=project, rs=rs, reg=load_registry(project.compose_file), conn=None,
                        run=run, tags=tiers.tag_env(project, local))
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

    def __init__(self, status=0, stderr=b"", fail_after=None, stdout=b"Loaded image ID: x\n", on_end=None):
        self.got, self.status, self.stderr, self.fail_after, self.stdout = bytearray(), status, stderr, fail_after, stdout
        self.closed_write, self.on_end = False, on_end

    def sendall(self, data):
        self.got.extend(data)

    def shutdown_write(self):
        self.closed_write = True
        if self.on_end and self.status == 0:
            self.on_end()

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
    tags = tiers.tag_env(PROJECT, local)
    data = composefile.load(PROJECT.compose_file)
    wanted = ship.select(PROJECT, local, rs, tags, data, tiers_=True, app="kb")
    assert [(w.local, w.remote) for w in wanted] == [
        (f"dev/base:{tags['BASE_TAG']}", (f"prod/base:{tags['BASE_TAG']}", "prod/base:latest")),
        (f"dev/ml:{tags['ML_TAG']}", (f"prod/ml:{tags['ML_TAG']}", "prod/ml:latest")),
        ("dev/kb:latest", ("prod/kb:latest",)),
    ]
    assert [w.kind for w in ship.select(PROJECT, local, rs, tags, data, upstream=True)] == ["upstream"] * 4


# ----------------------------------------------------------------------- plan --

def W(local, *remote, kind="upstream"):
    return ship.Wanted(local, remote or (local,), kind, local)


def srv_images(*images):
    """ServerImages from (server ID, name or None, content)."""
    names = {n: i for i, n, _ in images if n}
    return ship.ServerImages(names, {i: key(k) for i, _, k in images})


def test_plan_skips_images_the_server_has_and_only_tags_missing_names():
    wanted = [W("redis:7", kind="upstream"), W("dev/base:c-1", "prod/base:c-1", "prod/base:latest", kind="tier"),
              W("nginx:1", kind="upstream")]
    local = {"redis:7": local_img("a"), "dev/base:c-1": local_img("b", size=20), "nginx:1": local_img("c", size=30)}
    srv = srv_images((SID["1"], "redis:7", "a"), (SID["2"], "prod/base:c-1", "b"), (SID["3"], None, "d"))
    p = ship.plan(wanted, local, srv)
    assert p.skip == ["redis:7", "prod/base:c-1"]
    assert p.tag == [(SID["2"], "prod/base:latest")]  # the image is there: no bytes, a name by the SERVER's ID
    assert [w.local for w, _ in p.send] == ["nginx:1"] and p.bytes == 30
    assert p.tag_after == []  # saved by its own name, which the server uses too


def test_plan_by_key_when_the_stores_report_different_ids():
    """A classic store here (ID = config digest), a containerd store there (ID = manifest digest),
    and the other way round: the same image is recognised, never re-sent, tagged by the server's ID."""
    wanted = [W("redis:7"), W("dev/kb:latest", "prod/kb:latest", kind="app")]
    local = {"redis:7": local_img("a", image_id=ID["a"]), "dev/kb:latest": local_img("b", image_id=ID["b"])}
    srv = srv_images((SID["7"], "redis:7", "a"), (SID["8"], "other/kb:1", "b"))
    p = ship.plan(wanted, local, srv)
    assert (p.send, p.skip, p.tag, p.tag_after) == ([], ["redis:7"], [(SID["8"], "prod/kb:latest")], [])


def test_the_same_id_with_other_layers_or_another_build_is_not_present():
    """An ID equal to this machine's is no proof (IDs are not comparable across stores): the key decides."""
    local = {"redis:7": local_img("a", image_id=ID["a"])}
    other_layers = ship.ServerImages({"redis:7": ID["a"]}, {ID["a"]: key("b")})
    p = ship.plan([W("redis:7")], local, other_layers)
    assert [w.local for w, _ in p.send] == ["redis:7"] and p.skip == [] and p.tag == []
    rebuilt = ship.ServerImages({"redis:7": ID["a"]}, {ID["a"]: key("a-rebuilt")})  # same layers, newer config
    assert [w.local for w, _ in ship.plan([W("redis:7")], local, rebuilt).send] == ["redis:7"]


def test_plan_sends_an_image_once_and_names_it_on_the_server_after_the_load():
    wanted = [W("dev/base:c-1", "prod/base:c-1", "prod/base:latest", kind="tier"),
              W("dev/kb:latest", "prod/kb:latest", kind="app")]
    same = local_img("e", size=100)
    p = ship.plan(wanted, {"dev/base:c-1": same, "dev/kb:latest": same}, ship.ServerImages())
    assert [(w.local, ship.save_ref(w, img)) for w, img in p.send] == [("dev/base:c-1", ID["e"])]
    assert p.tag_after == [(key("e"), "prod/base:c-1"), (key("e"), "prod/base:latest"), (key("e"), "prod/kb:latest")]


def test_plan_leaves_an_image_missing_here_but_present_there():
    p = ship.plan([W("ollama:1")], {"ollama:1": None}, srv_images((SID["1"], "ollama:1", "a")))
    assert (p.skip, p.absent, p.send) == (["ollama:1"], [], [])


# ------------------------------------------------------------ keys and parsing --

def test_the_key_is_the_same_from_a_classic_and_a_containerd_store():
    created, layers = CONTENT["a"]
    classic = f"{ID['a']} {created} {layers}\n"  # config digest
    containerd = f"{SID['1']} {created} {layers}\n"  # manifest digest: another ID, the same image
    assert ship.parse_keys(classic)[0][1] == ship.parse_keys(containerd)[0][1] == key("a")
    here = ship.parse_local(f"{ID['a']} amd64 123 {created} {layers}\n", "redis:7")
    assert here == ship.LocalImage(ID["a"], "amd64", 123, key("a"))
    assert key("a") != key("a-rebuilt") and key("a") != key("b")


def test_a_missing_creation_time_counts_as_none_on_either_side():
    layers = CONTENT["a"][1]
    assert ship.image_key("", layers) == ship.image_key("0001-01-01T00:00:00Z", layers) == \
        ship.image_key("<no value>", layers)
    assert ship.parse_local(f"{ID['a']} amd64 1  {layers}").key == ship.image_key("", layers)


@pytest.mark.parametrize("text", ["sha256:abc amd64 10", "sha256:abc amd64 big 2025 []", "weird\nlines here x y z"])
def test_unexpected_local_inspect_output_is_one_line(text):
    with pytest.raises(CommandFailed) as err:
        ship.parse_local(text, "redis:7")
    assert err.value.message.startswith("error: `docker image inspect redis:7` here printed ")
    assert "\n" not in err.value.message and "(hint: check the local Docker" in err.value.message


def test_local_images_are_read_in_one_inspect(tmp_path):
    """All the wanted local images in ONE `docker image inspect`; the same results as one call each."""
    here = upstream_here()
    run = FakeServer([(SID[n], ref, k) for n, ref, k in [
        ("1", "nginx:1.27-bookworm", "a"), ("2", "chromadb/chroma:1.0.20", "b"),
        ("3", "redis:7.4-bookworm", "c"), ("4", "ollama/ollama:0.9.6", "d")]])
    ship.ship(ctx(tmp_path, run), upstream=True, local_runner=here)
    assert here.calls == [shlex.join(transfer_commands.local_inspect_argv(
        "nginx:1.27-bookworm", "chromadb/chroma:1.0.20", "redis:7.4-bookworm", "ollama/ollama:0.9.6"))]


@pytest.mark.parametrize("stderr", [
    "Error response from daemon: no such image: b: No such image: b:latest\n",  # Docker 28 (normalized name)
    "Error: No such image: b\n",  # Docker 20.10-27
])
def test_parse_locals_matches_lines_to_refs_and_names_the_missing(stderr):
    line = f"{ID['a']} amd64 10 {' '.join(CONTENT['a'])}\n"
    got = ship.parse_locals(["a:1", "b", "b:2"], line + line.replace("amd64 10", "arm64 5"), stderr)
    assert got == {"a:1": local_img("a"), "b": None, "b:2": local_img("a", arch="arm64", size=5)}
    # lines that cannot be matched to the refs (another error, a missing image not named): ask per ref
    assert ship.parse_locals(["a:1", "b"], "", "Cannot connect to the Docker daemon\n") is None
    assert ship.parse_locals(["a:1", "b"], line, "") is None


def test_local_images_fall_back_to_one_inspect_each(tmp_path):
    """A Docker whose answer to one inspect cannot be matched to the refs is asked per ref, as before."""
    here = Recorder({shlex.join(transfer_commands.local_inspect_argv("redis:7")): f"{ID['a']} amd64 10 "
                     f"{' '.join(CONTENT['a'])}\n", "docker image inspect": ("", 1, "Error: something else")})
    assert ship_recipe._local_images(here, ["redis:7", "nginx:1"]) == {"redis:7": local_img("a"), "nginx:1": None}
    assert here.calls == [shlex.join(transfer_commands.local_inspect_argv(*refs))
                          for refs in (["redis:7", "nginx:1"], ["redis:7"], ["nginx:1"])]


def test_loaded_ids_reads_the_ids_of_unnamed_loads():
    out = f"Loaded image: redis:7\nLoaded image ID: {SID['1']}\nLoaded image ID: {SID['2']}\n"
    assert ship.loaded_ids(out) == [SID["1"], SID["2"]]


# ------------------------------------------------------------------- commands --

def test_exact_commands():
    assert shlex.join(transfer_commands.save_argv(["redis:7.4-bookworm", ID["a"]])) == f"docker save redis:7.4-bookworm {ID['a']}"
    assert shlex.join(transfer_commands.load_argv()) == "docker load"
    assert shlex.join(transfer_commands.load_argv(["sudo", "-n"])) == "sudo -n docker load"
    assert shlex.join(transfer_commands.tag_argv(ID["a"], "prod/base:latest")) == f"docker tag {ID['a']} prod/base:latest"
    assert shlex.join(transfer_commands.server_images_argv()) == "docker images --no-trunc --format '{{.ID}} {{.Repository}}:{{.Tag}}'"
    assert shlex.join(transfer_commands.local_inspect_argv("redis:7")) == (
        "docker image inspect --format '{{.Id}} {{.Architecture}} {{.Size}} {{.Created}} {{json .RootFS.Layers}}' "
        "redis:7")
    assert shlex.join(transfer_commands.server_inspect_argv([SID["1"], SID["2"]])) == (
        f"docker image inspect --format '{{{{.Id}}}} {{{{.Created}}}} {{{{json .RootFS.Layers}}}}' {SID['1']} {SID['2']}")
    assert transfer_commands.verify_argv(["a:1"]) == transfer_commands.server_inspect_argv(["a:1"])


@pytest.mark.parametrize("uname, arch", [("x86_64\n", "amd64"), ("aarch64", "arm64"), ("riscv64", "riscv64")])
def test_server_arch(uname, arch):
    assert ship.server_arch(uname) == arch
    assert not hasattr(ship, "ARCH") and ship.ARCHES is provision.ARCHES  # one map, provision's


class FakeTransport:
    def __init__(self, channel=None, fail=None):
        self.channel, self.fail = channel, fail

    def is_active(self):
        return True

    def open_session(self):
        if self.fail:
            raise self.fail
        return self.channel


class RecordingChannel:
    def __init__(self, fail=None):
        self.commands, self.fail = [], fail

    def exec_command(self, command):
        if self.fail:
            raise self.fail
        self.commands.append(command)


def load_ctx(transport, prefix=None):
    run = SimpleNamespace(docker_prefix=prefix) if prefix else SimpleNamespace()
    return SimpleNamespace(conn=SimpleNamespace(client=SimpleNamespace(get_transport=lambda: transport)), run=run)


def test_the_load_channel_carries_the_runners_docker_prefix():
    chan = RecordingChannel()
    assert ship_transfer.open_load(load_ctx(FakeTransport(chan), prefix=("sudo", "-n"))) is chan  # as SudoDockerRunner
    assert chan.commands == ["sudo -n docker load"]
    assert provision.SudoDockerRunner.docker_prefix == ("sudo", "-n")
    plain = RecordingChannel()
    ship_transfer.open_load(load_ctx(FakeTransport(plain)))
    assert plain.commands == ["docker load"]


@pytest.mark.parametrize("where, exc", [
    ("open", ChannelException(1, "Administratively prohibited")),
    ("open", SSHException("SSH session not active")),
    ("exec", SSHException("Channel closed.")),
    ("exec", EOFError()),
])
def test_an_ssh_channel_that_cannot_be_opened_is_one_line(where, exc):
    transport = FakeTransport(fail=exc) if where == "open" else FakeTransport(RecordingChannel(fail=exc))
    with pytest.raises(CommandFailed) as err:
        ship_transfer.open_load(load_ctx(transport))
    assert err.value.message.startswith("error: cannot start `docker load` on the server over SSH: ")
    assert "\n" not in err.value.message and "run `fab ship` again" in err.value.message


# --------------------------------------------------------------------- recipe --

def test_ship_upstream_end_to_end_with_fakes(tmp_path):
    here = upstream_here(a=95_000_000, b=600_000_000, c=88_000_000, d=148_000_000)
    # the server's IDs are its own (a containerd store): the same images under other IDs
    run = FakeServer([(SID["2"], "chromadb/chroma:1.0.20", "b"), (SID["4"], "other/ollama:x", "d")])
    c = ctx(tmp_path, run)
    save = FakeSave(b"x" * 3_000_000)
    chan = run.loader((SID["1"], "nginx:1.27-bookworm", "a"), (SID["3"], "redis:7.4-bookworm", "c"))
    rep = ship.ship(c, upstream=True, local_runner=here, open_channel=lambda _: chan, start_save=save)
    assert run.calls[:2] == ["docker info --format '{{.ServerVersion}}'", "docker compose version --short"]
    assert run.server_calls("docker images") == [shlex.join(transfer_commands.server_images_argv())]  # once: nothing tagged after
    assert run.server_calls("docker image inspect")[0] == shlex.join(transfer_commands.server_inspect_argv([SID["2"], SID["4"]]))
    assert save.argv == ["docker", "save", "nginx:1.27-bookworm", "redis:7.4-bookworm"]
    assert bytes(chan.got) == b"x" * 3_000_000 and chan.closed_write
    assert run.server_calls("docker tag") == [f"docker tag {SID['4']} ollama/ollama:0.9.6"]  # there, unnamed: tag
    assert rep.shipped == ["nginx:1.27-bookworm", "redis:7.4-bookworm"] and rep.bytes_sent == 3_000_000
    assert rep.skipped == ["chromadb/chroma:1.0.20", "ollama/ollama:0.9.6"] and rep.tagged == ["ollama/ollama:0.9.6"]
    assert run.said[-1].startswith("==> shipped 2 image(s) (3.0 MB) in ") and run.said[-1].endswith(
        "; 2 already there (1 only tagged)")
    assert run.server_calls("docker image inspect")[-1] == shlex.join(transfer_commands.verify_argv(
        ["nginx:1.27-bookworm", "chromadb/chroma:1.0.20", "redis:7.4-bookworm", "ollama/ollama:0.9.6"]))


def test_everything_already_there_under_the_servers_own_ids_sends_nothing(tmp_path):
    run = FakeServer([(SID[n], ref, k) for n, ref, k in [
        ("1", "nginx:1.27-bookworm", "a"), ("2", "chromadb/chroma:1.0.20", "b"),
        ("3", "redis:7.4-bookworm", "c"), ("4", "ollama/ollama:0.9.6", "d")]])
    rep = ship.ship(ctx(tmp_path, run), upstream=True, local_runner=upstream_here(),
                    open_channel=lambda _: pytest.fail("opened"), start_save=lambda argv: pytest.fail("saved"))
    assert rep.images_sent == 0 and len(rep.skipped) == 4 and rep.tagged == []
    assert run.server_calls("docker tag") == []  # and _verify passed: every name has the local key


@pytest.mark.parametrize("list_dangling", [True, False])
def test_ship_tiers_under_another_namespace_tags_the_servers_names(tmp_path, list_dangling):
    """Saved by this machine's ID (no dev/ names left on the server); the load reports the server's
    own IDs, found again by key (from the listing, or from docker load's output when the server does
    not list unnamed images) and tagged under the server's names."""
    c = ctx(tmp_path, None, local_ns="dev", server_ns="prod")
    base, ml = c.tags["BASE_TAG"], c.tags["ML_TAG"]
    here = local_runner({f"dev/base:{base}": (ID["a"], "amd64", 200, "a"), f"dev/ml:{ml}": (ID["b"], "amd64", 1500, "b")})
    run = FakeServer(list_dangling=list_dangling)
    c.run, c.say = run, run.say
    save = FakeSave(b"tar")
    ship.ship(c, tiers=True, local_runner=here, start_save=save,
              open_channel=lambda _: run.loader((SID["5"], None, "a"), (SID["6"], None, "b")))
    assert save.argv == ["docker", "save", ID["a"], ID["b"]]
    assert run.server_calls("docker image inspect")[0] == shlex.join(transfer_commands.server_inspect_argv([SID["5"], SID["6"]]))
    assert run.server_calls("docker tag") == [
        f"docker tag {SID['5']} prod/base:{base}", f"docker tag {SID['5']} prod/base:latest",
        f"docker tag {SID['6']} prod/ml:{ml}", f"docker tag {SID['6']} prod/ml:latest"]
    assert not any(n.startswith("dev/") for n in run.names)


def test_a_server_without_images_is_not_inspected(tmp_path):
    run = FakeServer()
    ship.ship(ctx(tmp_path, run), upstream=True, local_runner=upstream_here(), start_save=FakeSave(b"t"),
              open_channel=lambda _: run.loader(*[(SID[n], ref, k) for n, ref, k in [
                  ("1", "nginx:1.27-bookworm", "a"), ("2", "chromadb/chroma:1.0.20", "b"),
                  ("3", "redis:7.4-bookworm", "c"), ("4", "ollama/ollama:0.9.6", "d")]]))
    assert run.server_calls("docker image inspect") == [shlex.join(transfer_commands.verify_argv(
        ["nginx:1.27-bookworm", "chromadb/chroma:1.0.20", "redis:7.4-bookworm", "ollama/ollama:0.9.6"]))]


def test_a_load_that_leaves_another_image_under_the_name_fails_the_check(tmp_path):
    run = FakeServer([(SID[n], ref, k) for n, ref, k in [
        ("2", "chromadb/chroma:1.0.20", "b"), ("3", "redis:7.4-bookworm", "c"), ("4", "ollama/ollama:0.9.6", "d")]])
    with pytest.raises(OnevpsError) as err:
        ship.ship(ctx(tmp_path, run), upstream=True, local_runner=upstream_here(), start_save=FakeSave(b"t"),
                  open_channel=lambda _: run.loader((SID["1"], "nginx:1.27-bookworm", "e")))
    assert err.value.message == ("error: after shipping, the server's nginx:1.27-bookworm is not the image sent "
                                 "(hint: run `fab ship` again; `docker images` on the server shows what is there)")


def test_a_load_that_brings_no_matching_image_is_one_line(tmp_path):
    c = ctx(tmp_path, None, local_ns="dev", server_ns="prod")
    here = local_runner({f"dev/base:{c.tags['BASE_TAG']}": (ID["a"], "amd64", 2, "a"),
                         f"dev/ml:{c.tags['ML_TAG']}": (ID["b"], "amd64", 2, "b")})
    run = FakeServer()
    c.run, c.say = run, run.say
    with pytest.raises(CommandFailed, match=r"^error: after the load, the server has no image matching the one sent "
                                            r"for prod/base:c-"):
        ship.ship(c, tiers=True, local_runner=here, start_save=FakeSave(b"t"), open_channel=lambda _: run.loader())
    assert run.server_calls("docker tag") == []


def test_a_user_outside_the_docker_group_is_told_so_before_anything_else(tmp_path):
    denied = "permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock"
    run = FakeServer(table={"docker info --format '{{.ServerVersion}}'": ("", 1, denied)})
    with pytest.raises(OnevpsError, match=r"^error: VPS_USER .* may not use Docker \(permission denied .*"
                                          r"\(hint: run `fab setup` \(adds it to the docker group\)\)$"):
        ship.ship(ctx(tmp_path, run), upstream=True, local_runner=upstream_here(),
                  open_channel=lambda _: pytest.fail("opened"), start_save=lambda argv: pytest.fail("saved"))
    assert run.calls == ["docker info --format '{{.ServerVersion}}'"]
    no_compose = FakeServer(table={"docker compose version": ("", 1)})
    with pytest.raises(OnevpsError, match="Docker Compose v2 is missing on the server"):
        ship.ship(ctx(tmp_path, no_compose), upstream=True, local_runner=upstream_here())


def test_a_server_whose_images_cannot_be_inspected_is_one_line(tmp_path):
    run = FakeServer([(SID["1"], "x:1", "a")], inspect_error="Cannot connect to the Docker daemon\n")
    with pytest.raises(CommandFailed, match=r"^error: cannot inspect the server's images: Cannot connect to the "
                                            r"Docker daemon \(hint: "):
        ship.ship(ctx(tmp_path, run), upstream=True, local_runner=upstream_here())


def test_architecture_mismatch_is_refused_before_anything_is_sent(tmp_path):
    c = ctx(tmp_path, FakeServer(arch="aarch64"))
    save = FakeSave(b"x")
    with pytest.raises(OnevpsError) as err:
        ship.ship(c, upstream=True, local_runner=upstream_here(), open_channel=lambda _: pytest.fail("opened"),
                  start_save=save)
    assert err.value.message.startswith("error: nginx:1.27-bookworm is built for amd64 but the server runs arm64; "
                                        "nothing was sent (hint: ")
    assert "\n" not in err.value.message and save.argv is None


def test_too_little_disk_is_refused_naming_the_need_and_fab_prune(tmp_path):
    here = upstream_here(size=1, a=400_000_000)
    run = FakeServer([(SID[n], f"x/{k}:1", k) for n, k in zip("234", "bcd")], free_mb=800)  # 2 x 400 MB + 100
    with pytest.raises(OnevpsError) as err:
        ship.ship(ctx(tmp_path, run), upstream=True, local_runner=here, open_channel=lambda _: pytest.fail("opened"),
                  start_save=FakeSave())
    assert err.value.message == (
        "error: only 800 MB free on the server's Docker disk (/var/lib/docker); loading 1 image(s) of 400.0 MB "
        "needs about 900 MB (twice the images + BUILD_FREE_MB 100); nothing was sent (hint: `fab prune` removes "
        "old images and build cache (`fab prune --dry-run` shows how much it frees))")


def test_upstream_image_missing_everywhere_is_one_line(tmp_path):
    c = ctx(tmp_path, FakeServer())
    with pytest.raises(OnevpsError) as err:
        ship.ship(c, upstream=True, local_runner=local_runner({}))
    assert err.value.message.startswith("error: image nginx:1.27-bookworm (service nginx, chroma-auth) is neither "
                                        "on this machine nor on the server (and 3 more) (hint: get it here first")


def test_dry_run_lists_and_sends_nothing(tmp_path):
    here = upstream_here(size=1, a=95_500_000)
    run = FakeServer([(SID[n], f"x/{k}:1", k) for n, k in zip("234", "bcd")], dry_run=True)
    rep = ship.ship(ctx(tmp_path, run), upstream=True, local_runner=here, open_channel=lambda _: pytest.fail("opened"),
                    start_save=lambda argv: pytest.fail("saved"))
    assert "[dry-run] would ship nginx:1.27-bookworm (95.5 MB) as nginx:1.27-bookworm" in run.said
    assert run.said[-1] == "[dry-run] would send 1 image(s), about 95.5 MB; 3 already there; nothing sent"
    assert rep.bytes_sent == 0 and not any(x.startswith("docker tag") for x in run.calls)
    assert rep.shipped == ["nginx:1.27-bookworm"]  # what a real run would put there (setup's dry run counts on it)
    assert f"[dry-run] would tag redis:7.4-bookworm on the server (its image {SID['3'][:19]} is there)" in run.said


def test_nothing_chosen_is_one_line(tmp_path):
    with pytest.raises(OnevpsError, match="nothing to ship .*--tiers, --upstream, --app NAME"):
        ship.ship(ctx(tmp_path, FakeServer()))
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
    here = upstream_here()
    c = ctx(tmp_path, FakeServer())
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
    here = upstream_here()
    run = FakeServer()
    c = ctx(tmp_path, run)
    chan = FakeChannel(status=1, stderr=b"unexpected EOF\n")
    with pytest.raises(OnevpsError, match=r"^error: docker load on the server failed \(exit 1\): unexpected EOF "):
        ship.ship(c, upstream=True, local_runner=here, open_channel=lambda _: chan, start_save=FakeSave(b"a"))
    assert not any(x.startswith("docker tag") for x in run.calls)  # nothing named after a failed load


def test_a_tier_built_with_other_torch_settings_than_the_servers_is_refused(tmp_path):
    """The ML tag names what a build installs: shipping the tier built here under a tag the
    server's settings give to another build would be a lie. One line, nothing sent."""
    local, rs = settings(tmp_path)
    server_tags = tiers.tag_env(PROJECT, config.load(PROJECT, environ={"TORCH_INDEX_URL": "https://pypi.org/simple"},
                                                     env_file=ROOT / ".env.example"))
    assert server_tags["ML_TAG"] != tiers.tag_env(PROJECT, local)["ML_TAG"]
    with pytest.raises(OnevpsError, match=r"the ml tier built here \(c-[0-9a-f]{12}\) is not the one the server's "
                                          r"settings describe .*TORCH_INDEX_URL or TORCH_CUDA differ"):
        ship.select(PROJECT, local, rs, server_tags, composefile.load(PROJECT.compose_file), tiers_=True)
    # the same settings on both sides: selected under the server's names
    wanted = ship.select(PROJECT, local, rs, tiers.tag_env(PROJECT, local), composefile.load(PROJECT.compose_file),
                         tiers_=True)
    assert [w.remote[0].split(":")[0] for w in wanted] == ["prod/base", "prod/ml"]


# ------------------------------------------------------------ golden order --

GOLDEN = ROOT / "tests" / "golden" / "recipes" / "ship-upstream.txt"


def tap(recorder, side, log):
    """Log every command the recorder runs, named by the side it runs on."""
    inner = recorder.run

    def run(argv, step, *args, **kw):
        log.append(f"{side}: {shlex.join(str(a) for a in argv)}")
        return inner(argv, step, *args, **kw)

    recorder.run = run


def test_a_whole_ship_is_its_golden_list_of_commands(tmp_path):
    """`fab ship --upstream` to a server that has two of the four images (under its own IDs, one
    unnamed): every command in order, on this machine and on the server. The upstream images are
    those of the frozen compose file (tests/unit/goldens.py), not the live one. Regenerate with
    `ONEVPS_UPDATE_GOLDEN=1 pytest tests/unit/test_ship.py` and review the diff."""
    log = []
    here = upstream_here()
    run = FakeServer([(SID["2"], "chromadb/chroma:1.0.20", "b"), (SID["4"], "other/ollama:x", "d")])
    tap(here, "here", log)
    tap(run, "server", log)
    chan = run.loader((SID["1"], "nginx:1.27-bookworm", "a"), (SID["3"], "redis:7.4-bookworm", "c"))
    save = FakeSave(b"x" * 100)

    def open_channel(c):
        log.append(f"server: {shlex.join(transfer_commands.load_argv())}  # its stdin: the stream of docker save")
        return chan

    def start_save(argv):
        log.append(f"here: {shlex.join(argv)}  # streamed into docker load")
        return save(argv)

    ship.ship(ctx(tmp_path, run, project=goldens.GoldenProject(ROOT)), upstream=True, local_runner=here,
              open_channel=open_channel, start_save=start_save)
    text = "".join(line + "\n" for line in [
        "# `fab ship --upstream`: every command in order, here and on the server (tests/unit/test_ship.py).",
        "# The server has chromadb/chroma and, under another name (other/ollama:x), ollama/ollama: both under its own IDs.", *log])
    if os.environ.get("ONEVPS_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
    assert GOLDEN.exists(), f"{GOLDEN} is missing; create it with ONEVPS_UPDATE_GOLDEN=1"
    assert text == GOLDEN.read_text()
