import dataclasses
from pathlib import Path

import pytest

from onevps import config
from onevps.config import KEYS, load
from onevps.errors import ConfigError
from onevps.project import Project

ROOT = Path(__file__).resolve().parents[2]


def write_env(tmp_path, text):
    path = tmp_path / ".env"
    path.write_text(text)
    return path


def test_defaults_without_env_file(tmp_path):
    s = load(Project(tmp_path), environ={})
    assert (s.domain, s.http_port, s.https_port, s.network_prefix) == ("localhost", 8080, 8443, "172.20.0")
    assert s.project_name == "onevps" and s.bind_address == "127.0.0.1"
    assert s.subnet == "172.20.0.0/24" and s.address(10) == "172.20.0.10"
    assert s.app_url("blog") == "http://blog.localhost:8080/"
    assert s.env_file is None


def test_env_file_then_environment_override(tmp_path):
    write_env(tmp_path, "HTTP_PORT=9000\nDOMAIN=Example.COM\nHTTPS_PORT=9443\n")
    s = load(Project(tmp_path), environ={"HTTP_PORT": "9100"})
    assert s.http_port == 9100  # environment wins over .env
    assert s.https_port == 9443
    assert s.domain == "example.com"
    assert s.compose_env()["HTTP_PORT"] == "9100"
    assert s.env_file == tmp_path / ".env"


def test_port_80_url_has_no_port(tmp_path):
    s = load(Project(tmp_path), environ={"HTTP_PORT": "80", "HTTPS_PORT": "443"})
    assert s.app_url("kb") == "http://kb.localhost/"


@pytest.mark.parametrize("line, key", [
    ("HTTP_PORT=abc", "HTTP_PORT"),
    ("HTTP_PORT=70000", "HTTP_PORT"),
    ("HTTPS_PORT=0", "HTTPS_PORT"),
    ("BIND_ADDRESS=localhost", "BIND_ADDRESS"),
    ("NETWORK_PREFIX=172.20.0.0", "NETWORK_PREFIX"),
    ("NETWORK_PREFIX=8.8.8", "NETWORK_PREFIX"),
    ("NETWORK_PREFIX=172.20.300", "NETWORK_PREFIX"),
    ("DOMAIN=bad_domain!", "DOMAIN"),
    ("COMPOSE_PROJECT_NAME=Bad Name", "COMPOSE_PROJECT_NAME"),
    ("IMAGE_NAMESPACE=UPPER", "IMAGE_NAMESPACE"),
    ("TORCH_INDEX_URL=not-a-url", "TORCH_INDEX_URL"),
    ("UP_TIMEOUT=-5", "UP_TIMEOUT"),
    ("EXTRA_CA_DIR=/no/such/folder", "EXTRA_CA_DIR"),
    ("VPS_PATH=/", "VPS_PATH"),
    ("VPS_PATH=/opt", "VPS_PATH"),
    ("VPS_PATH=/etc/onevps", "VPS_PATH"),
    ("VPS_PATH=/var/lib/docker/apps", "VPS_PATH"),
    ("DOCKER_INSTALL=snap", "DOCKER_INSTALL"),
    ("TORCH_CUDA=maybe", "TORCH_CUDA"),
])
def test_malformed_value_names_key_and_line(tmp_path, line, key):
    write_env(tmp_path, "# settings\n" + line + "\n")
    with pytest.raises(ConfigError) as err:
        load(Project(tmp_path), environ={})
    message = err.value.message
    assert key in message
    assert "\n" not in message
    if "/no/such" not in line:
        assert ".env line 2" in message


def test_unparsable_line_is_named(tmp_path):
    write_env(tmp_path, "DOMAIN=localhost\nthis is not a setting\n")
    with pytest.raises(ConfigError, match=r"\.env line 2 cannot be parsed"):
        load(Project(tmp_path), environ={})


def test_unterminated_quote_is_named(tmp_path):
    write_env(tmp_path, 'HTTP_PORT=8080\nDOMAIN="example.com\n')
    with pytest.raises(ConfigError, match=r"line 2"):
        load(Project(tmp_path), environ={})


def test_same_http_and_https_port_refused(tmp_path):
    with pytest.raises(ConfigError, match="HTTP_PORT and HTTPS_PORT"):
        load(Project(tmp_path), environ={"HTTP_PORT": "8000", "HTTPS_PORT": "8000"})


def test_unknown_key_warns_but_loads(tmp_path):
    write_env(tmp_path, "HTTP_PROT=1\n")
    warnings = []
    load(Project(tmp_path), environ={}, warn=warnings.append)
    assert warnings == ["warning: .env line 1: unknown key HTTP_PROT (ignored; see .env.example)"]


def test_empty_value_takes_default(tmp_path):
    write_env(tmp_path, "HTTP_PORT=\n")
    assert load(Project(tmp_path), environ={}).http_port == 8080


def test_relative_folder_is_resolved_against_root(tmp_path):
    (tmp_path / "certs").mkdir()
    s = load(Project(tmp_path), environ={"EXTRA_CA_DIR": "certs"})
    assert s.extra_ca_dir == tmp_path / "certs"


def test_env_example_documents_every_key_with_its_default():
    from dotenv import dotenv_values

    example = dotenv_values(ROOT / ".env.example")
    assert set(example) == {k.name for k in KEYS}
    for key in KEYS:
        expected = config.PLACEHOLDER if key.name in config.SECRET_KEYS else key.default
        assert example[key.name] == expected, key.name
        assert key.help


def test_env_example_loads_cleanly():
    s = load(Project(ROOT), environ={}, env_file=ROOT / ".env.example")
    assert s.http_port == 8080


def test_settings_are_frozen(tmp_path):
    s = load(Project(tmp_path), environ={})
    with pytest.raises(Exception):
        s.http_port = 1  # type: ignore[misc]


def test_repo_root_points_at_the_repository():
    assert (config.REPO_ROOT / "compose" / "docker-compose.yml").is_file()


def test_secrets_are_required_where_needed(tmp_path):
    s = load(Project(tmp_path), environ={})
    with pytest.raises(ConfigError, match="REDIS_PASSWORD is not set in .env.*token_urlsafe"):
        config.require_secrets(s)
    s = load(Project(tmp_path), environ={"REDIS_PASSWORD": "change-me"})
    with pytest.raises(ConfigError, match="still the .env.example placeholder"):
        config.require_secrets(s)
    s = load(Project(tmp_path), environ={"REDIS_PASSWORD": "x" * 32})
    with pytest.raises(ConfigError, match="CHROMA_TOKEN is not set in .env"):
        config.require_secrets(s)
    s = load(Project(tmp_path), environ={"REDIS_PASSWORD": "x" * 32, "CHROMA_TOKEN": "change-me"})
    with pytest.raises(ConfigError, match="CHROMA_TOKEN in .env is still the .env.example placeholder"):
        config.require_secrets(s)
    config.require_secrets(load(Project(tmp_path), environ={"REDIS_PASSWORD": "x" * 32, "CHROMA_TOKEN": "y" * 32}))


def test_chroma_subnet_must_be_private_and_apart_from_app_network(tmp_path):
    assert load(Project(tmp_path), environ={}).raw["CHROMA_SUBNET"] == "172.20.1.0/28"
    for bad in ("172.20.1.0", "8.8.8.0/28", "172.20.1.5/28", "10.0.0.0/30"):
        with pytest.raises(ConfigError, match="CHROMA_SUBNET"):
            load(Project(tmp_path), environ={"CHROMA_SUBNET": bad})
    with pytest.raises(ConfigError, match="CHROMA_SUBNET=172.20.0.0/16 overlaps app-network 172.20.0.0/24"):
        load(Project(tmp_path), environ={"CHROMA_SUBNET": "172.20.0.0/16"})
    assert load(Project(tmp_path), environ={"NETWORK_PREFIX": "10.9.0", "CHROMA_SUBNET": "10.9.1.0/28"}) \
        .raw["CHROMA_SUBNET"] == "10.9.1.0/28"


def test_weak_or_url_breaking_secret_is_refused(tmp_path):
    for bad in ("short", "has spaces in it here!", "with@at-sign-and-more"):
        with pytest.raises(ConfigError, match="REDIS_PASSWORD"):
            load(Project(tmp_path), environ={"REDIS_PASSWORD": bad})


def test_first_run_creates_env_with_random_secret(tmp_path):
    (tmp_path / ".env.example").write_text((ROOT / ".env.example").read_text())
    path = config.create_env_file(tmp_path)
    assert path == tmp_path / ".env" and oct(path.stat().st_mode & 0o777) == "0o600"
    s = load(Project(tmp_path), environ={})
    config.require_secrets(s)
    assert len(s.raw["REDIS_PASSWORD"]) >= 40 and len(s.raw["CHROMA_TOKEN"]) >= 40
    assert s.raw["REDIS_PASSWORD"] != s.raw["CHROMA_TOKEN"]
    before = path.read_text()
    assert config.create_env_file(tmp_path) is None and path.read_text() == before  # never overwrites


@pytest.mark.parametrize("key, value", [("APP_MEM_LIMIT", "lots"), ("APP_CPUS", "0"), ("ML_APP_MEM_LIMIT", "0g")])
def test_bad_limits_name_the_key(tmp_path, key, value):
    with pytest.raises(ConfigError, match=key):
        load(Project(tmp_path), environ={key: value})


PIDS_KEYS = ("APP_PIDS_LIMIT", "ML_APP_PIDS_LIMIT", "NGINX_PIDS_LIMIT", "REDIS_PIDS_LIMIT", "CHROMA_PIDS_LIMIT",
             "CHROMA_AUTH_PIDS_LIMIT", "OLLAMA_PIDS_LIMIT", "WAKER_PIDS_LIMIT", "DOCKER_PROXY_PIDS_LIMIT",
             "CERTBOT_PIDS_LIMIT")


@pytest.mark.parametrize("key", PIDS_KEYS)
@pytest.mark.parametrize("value", ["0", "-1", "lots", "1.5", "256m", " "])
def test_a_bad_process_limit_names_the_key_and_where_it_came_from(tmp_path, key, value):
    """0 and -1 (no limit to Docker) are refused too: every container keeps a limit.
    A blank value takes the default, as for every key."""
    write_env(tmp_path, f"{key}={value}\n")
    if not value.strip():
        assert getattr(load(Project(tmp_path), environ={}), key.lower()) == int(next(k for k in KEYS
                                                                                     if k.name == key).default)
        return
    with pytest.raises(ConfigError) as err:
        load(Project(tmp_path), environ={})
    assert err.value.message.startswith(f"error: {key}={value!r} (.env line 1) must be a whole number of at least 1")


def test_process_limits_are_numbers_from_env_file_and_environment(tmp_path):
    write_env(tmp_path, "APP_PIDS_LIMIT=300\nNGINX_PIDS_LIMIT=1000\n")
    s = load(Project(tmp_path), environ={"ML_APP_PIDS_LIMIT": "2048", "NGINX_PIDS_LIMIT": "512"})
    assert (s.app_pids_limit, s.ml_app_pids_limit, s.nginx_pids_limit) == (300, 2048, 512)  # environment wins
    assert s.compose_env()["APP_PIDS_LIMIT"] == "300" and s.compose_env()["NGINX_PIDS_LIMIT"] == "512"


@pytest.mark.parametrize("key", ["REDIS_PASSWORD", "CHROMA_TOKEN"])
def test_a_rejected_secret_names_the_key_and_why_never_the_value(tmp_path, key):
    value = "short!secret"
    write_env(tmp_path, f"{key}={value}\n")
    with pytest.raises(ConfigError) as err:
        load(Project(tmp_path), environ={})
    message = err.value.message
    assert message.startswith(f"error: {key} (.env line 1) must be at least 16 characters")
    assert value not in message and "short" not in message


def test_secret_like_names():
    assert all(config.is_secret(k) for k in ("REDIS_PASSWORD", "CHROMA_TOKEN", "API_SECRET", "X_KEY", "db_password"))
    assert not any(config.is_secret(k) for k in ("DOMAIN", "VPS_HOST", "KEYRING_DIR"))


def test_the_env_file_made_on_the_first_run_is_private(tmp_path):
    (tmp_path / ".env.example").write_text("DOMAIN=localhost\nREDIS_PASSWORD=change-me\n")
    made = config.create_env_file(tmp_path)
    assert made == tmp_path / ".env" and (made.stat().st_mode & 0o777) == 0o600


def test_an_env_file_behind_a_folder_that_may_not_be_entered_is_one_line(tmp_path, monkeypatch):
    """Path.exists() raises PermissionError there (as a user who may not enter the folder)."""
    from pathlib import Path as P

    from onevps.errors import ConfigError

    env = tmp_path / "locked" / ".env"
    real_exists = P.exists

    def exists(self):
        if self == env:
            raise PermissionError(13, "Permission denied")
        return real_exists(self)

    monkeypatch.setattr(P, "exists", exists)
    with pytest.raises(ConfigError) as err:
        config.load(Project(tmp_path), environ={}, env_file=env)
    assert err.value.message.startswith(f"error: cannot read {env}") and "\n" not in err.value.message


# ------------------------------------------------- every key, one typed field --

# Each key's field type, spelled out: a new key must say what it becomes.
KEY_TYPES = {
    "DEPLOY_WATCH": int, "DEPLOY_WATCH_5XX": float, "WAKE_TIMEOUT": int,
    "WAKER_MEM_LIMIT": int, "DOCKER_PROXY_MEM_LIMIT": int,
    "APP_PIDS_LIMIT": int, "ML_APP_PIDS_LIMIT": int, "NGINX_PIDS_LIMIT": int, "REDIS_PIDS_LIMIT": int,
    "CHROMA_PIDS_LIMIT": int, "CHROMA_AUTH_PIDS_LIMIT": int, "OLLAMA_PIDS_LIMIT": int, "WAKER_PIDS_LIMIT": int,
    "DOCKER_PROXY_PIDS_LIMIT": int, "CERTBOT_PIDS_LIMIT": int,
    "COMPOSE_PROJECT_NAME": str, "DOMAIN": str, "BIND_ADDRESS": str, "HTTP_PORT": int, "HTTPS_PORT": int,
    "NETWORK_PREFIX": str, "CHROMA_SUBNET": str, "IMAGE_NAMESPACE": str, "TORCH_INDEX_URL": str,
    "TORCH_CUDA": bool, "TORCH_WHEEL_DIR": (Path, type(None)), "EXTRA_CA_DIR": (Path, type(None)),
    "OLLAMA_MODEL": str, "UP_TIMEOUT": int, "REDIS_PASSWORD": str, "CHROMA_TOKEN": str,
    "APP_MEM_LIMIT": int, "APP_CPUS": float, "ML_APP_MEM_LIMIT": int, "NGINX_MEM_LIMIT": int,
    "REDIS_MEM_LIMIT": int, "CHROMA_MEM_LIMIT": int, "CHROMA_AUTH_MEM_LIMIT": int, "OLLAMA_MEM_LIMIT": int,
    "NGINX_MAX_BODY": str, "NGINX_CONN_PER_CLIENT": int, "NGINX_RATE_PER_CLIENT": int,
    "NGINX_BURST_PER_CLIENT": int, "NGINX_CLIENT_TIMEOUT": int, "NGINX_MAX_TEMP_FILE": str,
    "HTTPS_REDIRECT": bool, "ACME_EMAIL": str, "ACME_SERVER": str, "ACME_CA_BUNDLE": str, "CERT_CRON_FILE": str,
    "PRUNE_ON_DEPLOY": bool, "BUILD_FREE_MB": int, "PRUNE_KEEP": int, "PRUNE_CACHE_MB": int,
    "VPS_HOST": str, "VPS_USER": str, "VPS_PORT": int, "VPS_PATH": str, "VPS_SSH_KEY": (Path, type(None)),
    "VPS_ENV_FILE": Path, "DOCKER_INSTALL": str, "DEPLOY_TIMEOUT": int, "REGISTRY": str, "SWARM_SUBNET": str,
    "SWARM_MANAGER": str, "SWARM_WORKERS": tuple, "SWARM_ADVERTISE_ADDR": str, "SWARM_REGISTRY_PORT": int,
}


def test_every_key_is_one_typed_field_of_settings(tmp_path):
    assert set(KEY_TYPES) == {k.name for k in KEYS}
    fields = {f.name for f in dataclasses.fields(config.Settings)}
    assert fields == {k.field_name for k in KEYS} | {"env_file", "raw"}  # nothing else travels in Settings
    s = load(Project(tmp_path), environ={})
    for key in KEYS:
        value = getattr(s, key.field_name)
        assert isinstance(value, KEY_TYPES[key.name]), key.name
        if KEY_TYPES[key.name] is int:
            assert not isinstance(value, bool), key.name


def test_typed_defaults(tmp_path):
    s = load(Project(tmp_path), environ={})
    assert (s.prune_on_deploy, s.torch_cuda, s.https_redirect) == (True, False, False)
    assert (s.build_free_mb, s.prune_keep, s.prune_cache_mb) == (1024, 3, 2000)
    assert (s.deploy_timeout, s.up_timeout) == (180, 900)
    assert s.app_mem_limit == 256 * 1024 ** 2 and s.ollama_mem_limit == 8 * 1024 ** 3 and s.app_cpus == 1.0
    assert (s.app_pids_limit, s.ml_app_pids_limit, s.nginx_pids_limit, s.redis_pids_limit, s.chroma_pids_limit,
            s.chroma_auth_pids_limit, s.ollama_pids_limit, s.waker_pids_limit, s.docker_proxy_pids_limit,
            s.certbot_pids_limit) == (256, 512, 256, 64, 512, 128, 1024, 64, 128, 64)
    assert (s.nginx_max_body, s.nginx_conn_per_client, s.nginx_rate_per_client, s.nginx_burst_per_client,
            s.nginx_client_timeout, s.nginx_max_temp_file) == ("20m", 100, 100, 400, 15, "256m")
    assert s.docker_install == "docker-repo" and s.cert_cron_file == "/etc/cron.d/onevps-certs"
    assert s.acme_email == "" and s.acme_ca_bundle == "" and s.acme_server.startswith("https://acme-v02.")
    assert s.chroma_subnet == "172.20.1.0/28" and s.vps_env_file == tmp_path / ".env"
    assert s.redis_password == "" and s.chroma_token == ""


def test_typed_values_from_env_file_and_environment(tmp_path):
    write_env(tmp_path, "PRUNE_ON_DEPLOY=OFF\nTORCH_CUDA=on\nBUILD_FREE_MB=2048\nAPP_MEM_LIMIT=512k\n"
                        "NGINX_MEM_LIMIT=1048576\nAPP_CPUS=0.5\nDOCKER_INSTALL=Distro\n")
    s = load(Project(tmp_path), environ={"HTTPS_REDIRECT": "on", "PRUNE_KEEP": "5", "ACME_EMAIL": "ops@example.com",
                                         "ACME_CA_BUNDLE": "/etc/ca/", "CERT_CRON_FILE": "/etc/cron.d/x"})
    assert (s.prune_on_deploy, s.torch_cuda, s.https_redirect) == (False, True, True)
    assert (s.build_free_mb, s.prune_keep) == (2048, 5)
    assert (s.app_mem_limit, s.nginx_mem_limit, s.app_cpus) == (512 * 1024, 1048576, 0.5)
    assert s.docker_install == "distro" and s.acme_email == "ops@example.com"
    assert (s.acme_ca_bundle, s.cert_cron_file) == ("/etc/ca", "/etc/cron.d/x")
    # raw keeps the normal form as text, for compose and `inv settings`
    assert (s.raw["PRUNE_ON_DEPLOY"], s.raw["APP_MEM_LIMIT"], s.raw["DOCKER_INSTALL"]) == ("off", "512k", "distro")
    assert s.compose_env()["TORCH_CUDA"] == "on" and s.compose_env()["BUILD_FREE_MB"] == "2048"


def test_secrets_are_fields_never_shown_in_repr(tmp_path):
    s = load(Project(tmp_path), environ={"REDIS_PASSWORD": "r" * 32, "CHROMA_TOKEN": "t" * 32})
    assert (s.redis_password, s.chroma_token) == ("r" * 32, "t" * 32)
    assert "r" * 32 not in repr(s) and "t" * 32 not in repr(s)


def test_local_paths_are_paths_against_the_root(tmp_path):
    (tmp_path / "wheels").mkdir()
    (tmp_path / "id_ed25519").write_text("key")
    s = load(Project(tmp_path), environ={"TORCH_WHEEL_DIR": "wheels", "VPS_SSH_KEY": "id_ed25519",
                                         "VPS_ENV_FILE": "server.env"})
    assert s.torch_wheel_dir == tmp_path / "wheels" and s.extra_ca_dir is None
    assert s.vps_ssh_key == tmp_path / "id_ed25519" and s.vps_env_file == tmp_path / "server.env"
    with pytest.raises(ConfigError, match=r"VPS_SSH_KEY='nokey' is not a file"):
        load(Project(tmp_path), environ={"VPS_SSH_KEY": "nokey"})


def test_the_project_root_travels_apart_from_the_settings(tmp_path):
    project = Project(tmp_path)
    assert project.compose_file == tmp_path / "compose" / "docker-compose.yml"
    assert project.env_file == tmp_path / ".env"
    write_env(tmp_path, "DOMAIN=example.com\n")
    s = load(project, environ={})
    assert s.domain == "example.com" and s.env_file == project.env_file
    assert not hasattr(s, "root") and not hasattr(s, "compose_file")
    assert load(environ={}, env_file=ROOT / ".env.example").vps_env_file == config.REPO.root / ".env"  # this checkout


def test_the_module_api_stays_importable():
    for name in ("KEYS", "KEY_NAMES", "Key", "PLACEHOLDER", "REPO_ROOT", "SECRET_HINT", "SECRET_KEYS",
                 "ConfigError", "Settings", "create_env_file", "is_secret", "load", "require_secrets"):
        assert hasattr(config, name), name
    from onevps import settings_keys

    assert settings_keys._domain("Example.COM.") == "example.com"


def test_a_line_holding_only_a_value_is_never_shown(tmp_path):
    """A secret pasted alone on a line (no KEY=) is warned about by its line number only."""
    (tmp_path / ".env").write_text("DOMAIN=example.com\nsk-live-0123456789abcdef\n")
    warnings: list[str] = []
    s = load(Project(tmp_path), environ={}, warn=warnings.append)
    assert s.domain == "example.com"
    assert warnings == ["warning: .env line 2 is not KEY=value (ignored; its text is not shown)"]
    assert not any("sk-live" in w for w in warnings)


# ------------------------------------ values with shell characters (issue 24, item 6) --

SHELLISH = "p$a`id`;b'c\"d#e f\\g $(touch /tmp/onevps-pwned) ${HOME}"


def single_quoted(value: str) -> str:
    """How a value is written so compose and onevps read it alike: in single quotes, a ' as \\'."""
    return "'" + value.replace("'", "\\'") + "'"


def test_a_value_with_shell_characters_in_single_quotes_is_read_as_written(tmp_path):
    write_env(tmp_path, f"OLLAMA_MODEL={single_quoted(SHELLISH)}\nBLOG_TOKEN={single_quoted(SHELLISH)}\n")
    s = load(Project(tmp_path), environ={}, warn=lambda msg: None)
    assert s.ollama_model == SHELLISH
    assert s.compose_env()["OLLAMA_MODEL"] == SHELLISH
    assert config.env_file_values(tmp_path / ".env") == {"OLLAMA_MODEL": SHELLISH, "BLOG_TOKEN": SHELLISH}


@pytest.mark.parametrize("line", ['REDIS_PASSWORD=pa$word', 'REDIS_PASSWORD="pa$word"', "REDIS_PASSWORD=pa${HOME}x",
                                  'BLOG_TOKEN=a$$b', "REDIS_PASSWORD=  pa$word # comment"])
def test_a_dollar_outside_single_quotes_is_refused_as_compose_would_read_a_variable(tmp_path, line):
    write_env(tmp_path, f"DOMAIN=example.com\n{line}\n")
    with pytest.raises(ConfigError) as err:
        load(Project(tmp_path), environ={}, warn=lambda msg: None)
    key = line.split("=")[0]
    assert err.value.what == (f".env line 2: the value of {key} holds a $ outside single quotes, "
                                 "which compose reads as a variable")
    assert f"{key}='...'" in err.value.hint
    assert "word" not in err.value.message and "$$b" not in err.value.message


def test_literal_env_lines_refuse_line_breaks_and_bad_names_without_showing_the_value():
    assert config.literal_env_text({"A": SHELLISH, "B": "", "C": None}, "x") == f"A={SHELLISH}\nB=\nC\n"
    with pytest.raises(ConfigError) as err:
        config.literal_env_text({"TOKEN": "secret-one\nsecret-two"}, "the server's settings")
    assert "TOKEN of the server's settings holds a line break" in err.value.what
    assert "secret-" not in err.value.message
    with pytest.raises(ConfigError, match="is not a variable name"):
        config.literal_env_text({"A B": "x"}, "x")


@pytest.mark.parametrize("line, shown", [
    ("NGINX_MAX_BODY=20mb", "must be a size as nginx writes it"),
    ("NGINX_MAX_BODY=-1", "must be a size as nginx writes it"),
    ("NGINX_MAX_BODY=21m", "from 1k to 20m"),
    ("NGINX_MAX_BODY=0", "from 1k to 20m"),
    ("NGINX_MAX_TEMP_FILE=1.5g", "must be a size as nginx writes it"),
    ("NGINX_CONN_PER_CLIENT=0", "at least 1"),
    ("NGINX_RATE_PER_CLIENT=ten", "at least 1"),
    ("NGINX_BURST_PER_CLIENT=-5", "0 or more"),
    ("NGINX_CLIENT_TIMEOUT=0", "at least 1"),
])
def test_a_bad_client_limit_is_one_line_naming_the_key(tmp_path, line, shown):
    write_env(tmp_path, line + "\n")
    with pytest.raises(ConfigError) as err:
        load(Project(tmp_path), environ={})
    key = line.split("=")[0]
    assert err.value.what.startswith(f"{line.split('=')[0]}={line.split('=', 1)[1]!r} (.env line 1) ")
    assert shown in err.value.what and key in err.value.hint


def test_client_limits_accept_what_nginx_accepts(tmp_path):
    write_env(tmp_path, "NGINX_MAX_BODY=512K\nNGINX_MAX_TEMP_FILE=0\nNGINX_BURST_PER_CLIENT=0\n")
    s = load(Project(tmp_path), environ={})
    assert (s.nginx_max_body, s.nginx_max_temp_file, s.nginx_burst_per_client) == ("512k", "0", 0)


def test_two_backslashes_in_single_quotes_are_refused_as_compose_reads_them_differently(tmp_path):
    write_env(tmp_path, "DOMAIN=example.com\nBLOG_TOKEN='a\\\\b'\n")
    with pytest.raises(ConfigError) as err:
        load(Project(tmp_path), environ={}, warn=lambda msg: None)
    assert err.value.what == (".env line 2: the value of BLOG_TOKEN holds \\\\ in single quotes, which compose "
                              "reads as two backslashes and onevps as one")
    write_env(tmp_path, "BLOG_TOKEN=a\\\\b\nOLLAMA_MODEL='a\\b\\'c'\n")  # unquoted; one \ and \' in quotes
    assert config.env_file_values(tmp_path / ".env") == {"BLOG_TOKEN": "a\\\\b", "OLLAMA_MODEL": "a\\b'c"}


def test_nginx_body_limit_never_exceeds_what_the_waker_takes():
    from onevps.settings_keys import WAKER_MAX_BODY
    text = (ROOT / "dockerfiles" / "waker" / "onevps_waker_http.py").read_text()
    assert "MAX_BODY = 20 * 1024 * 1024" in text and WAKER_MAX_BODY == 20 * 1024 * 1024
