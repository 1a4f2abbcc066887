"""The waker (issue 15): holds requests for a sleeping app, wakes it once, answers
them all; puts idle sleep-enabled apps (label onevps.sleep_after) to sleep.

    python -m onevps_waker      (one process, one worker: the state is in it; port 8080)

nginx sends a request for a sleeping app (flag file STATE_DIR/asleep/NAME) here
with `X-Onevps-App: NAME`; GET /_onevps/state (no such header) answers the apps'
states. Docker is reached only through the filtering proxy's socket. Env (see
Settings.from_env): ONEVPS_PROJECT, ONEVPS_PROXY_SOCKET, ONEVPS_STATE_DIR,
WAKE_TIMEOUT, SLEEP_CHECK_EVERY, APP_PORT, ACTIVITY_PORT, APP_HOST. stdout holds
one line per wake and per sleep and a failed wake's last app log lines; never a
request's headers or body.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import struct
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import uvicorn

SLEEP_LABEL = "onevps.sleep_after"
SERVICE_LABEL = "com.docker.compose.service"
PROJECT_LABEL = "com.docker.compose.project"
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
                        b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"})
HEALTH_EVERY = 0.05  # seconds between /health probes while waking
LOG_MAX = 1 << 20  # the access log is truncated past this many bytes
LOG_TAIL = 50  # app log lines printed when a wake fails
BROWSER_WAIT = 1.5  # seconds a browser waits before it gets the "waking up" page
WAKING_PAGE = (b"<!doctype html><meta http-equiv=refresh content=1><title>Waking up</title>"
               b"<p>Waking up the app&hellip; this page reloads by itself.")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")


# --- pure parts ---------------------------------------------------------------

def parse_duration(text: str) -> float:
    """Seconds in "15m", "90s", "2h", "1d" or "45" (seconds), as onevps.sleep.parse_duration
    writes and checks them; ValueError otherwise."""
    m = _DURATION.fullmatch(str(text).strip().lower())
    if not m:
        raise ValueError(f"{text!r} is not a duration (15m, 90s, 2h, 1d or 45)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def access_line(line: str) -> tuple[str, float] | None:
    """(app, epoch seconds) of one line of nginx's `log_format onevps`; None for anything else."""
    try:
        d = json.loads(line)
        return str(d["host"]).split(".", 1)[0].lower(), datetime.fromisoformat(d["time"]).timestamp()
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def should_sleep(now: float, last_activity: float, sleep_after: float, connections: int) -> bool:
    """Idle for sleep_after seconds and no connection open."""
    return connections == 0 and now - last_activity >= sleep_after


def forwardable(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """headers without the hop-by-hop ones (and those Connection names) and Content-Length
    (the body is sent whole, its length set anew); Host and X-Forwarded-* stay."""
    named = {t.strip().lower() for k, v in headers if k.lower() == b"connection" for t in v.split(b",")}
    drop = HOP_BY_HOP | named | {b"content-length"}
    return [(k, v) for k, v in headers if k.lower() not in drop]


def demux_logs(raw: bytes) -> str:
    """Docker's log stream (8-byte frame headers unless the container has a TTY) as text."""
    out, i = [], 0
    while len(raw) - i >= 8 and raw[i] in (0, 1, 2) and raw[i + 1:i + 4] == b"\0\0\0":
        size = struct.unpack(">I", raw[i + 4:i + 8])[0]
        out.append(raw[i + 8:i + 8 + size])
        i += 8 + size
    return (b"".join(out) + raw[i:]).decode("utf-8", "replace")


def wants_page(method: str, headers: list[tuple[bytes, bytes]]) -> bool:
    """A browser's GET (Accept names text/html): it may get the "waking up" page."""
    return method == "GET" and any(k.lower() == b"accept" and b"text/html" in v for k, v in headers)


def container_app(c: dict, network_suffix: str = "app-network") -> tuple[str, str, float, bool, str] | None:
    """(service, id, sleep_after, running, ip) of a listed container with a valid sleep label."""
    labels = c.get("Labels") or {}
    try:
        after = parse_duration(labels[SLEEP_LABEL])
    except (KeyError, ValueError):
        return None
    return labels.get(SERVICE_LABEL, ""), c["Id"], after, c.get("State") == "running", network_ip(c, network_suffix)


def starting(c: dict) -> bool:
    """A listed container that runs but has not passed its first Docker health check yet."""
    return c.get("State") == "running" and "(health: starting)" in str(c.get("Status", ""))


def network_ip(c: dict, network_suffix: str = "app-network") -> str:
    """A listed or inspected container's IP on the network whose name ends with network_suffix."""
    nets = (c.get("NetworkSettings") or {}).get("Networks") or {}
    return next((n.get("IPAddress") or "" for name, n in nets.items() if name.endswith(network_suffix)), "")


@dataclass
class Settings:
    """The waker's environment (see from_env)."""

    project: str = ""
    proxy_socket: str = "/run/onevps-docker/docker.sock"
    state_dir: Path = Path("/run/onevps")
    wake_timeout: float = 60.0
    sleep_check_every: float = 5.0
    app_port: int = 8000
    activity_port: int = 8001
    app_host: str = ""  # "" = the container's IP on app-network (tests: 127.0.0.1)

    @classmethod
    def from_env(cls, env: dict) -> "Settings":
        """ONEVPS_PROJECT, ONEVPS_PROXY_SOCKET, ONEVPS_STATE_DIR, WAKE_TIMEOUT, SLEEP_CHECK_EVERY,
        APP_PORT, ACTIVITY_PORT, APP_HOST; ValueError naming the bad one."""
        d = cls()
        out = {"project": env.get("ONEVPS_PROJECT", d.project), "app_host": env.get("APP_HOST", d.app_host),
               "proxy_socket": env.get("ONEVPS_PROXY_SOCKET", d.proxy_socket),
               "state_dir": Path(env.get("ONEVPS_STATE_DIR", str(d.state_dir)))}
        for key, name, kind in (("wake_timeout", "WAKE_TIMEOUT", parse_duration),
                                ("sleep_check_every", "SLEEP_CHECK_EVERY", parse_duration),
                                ("app_port", "APP_PORT", int), ("activity_port", "ACTIVITY_PORT", int)):
            try:
                out[key] = kind(env.get(name, getattr(d, key)))
            except ValueError:
                raise ValueError(f"{name}={env.get(name)!r} is not valid (a number)") from None
        return cls(**out)


@dataclass
class App:
    """One sleep-enabled app as the waker knows it."""

    name: str
    id: str
    sleep_after: float
    ip: str = ""
    state: str = "awake"  # sleeping | awake | waking | stopping | stopped
    wakes: int = 0
    last_wake_seconds: float = 0.0
    last_activity: float = 0.0  # epoch seconds; the log, the app and wakes move it on
    held: int = 0  # requests waiting for it
    wake_task: asyncio.Task | None = None
    stop_task: asyncio.Task | None = None

    def view(self, now: float) -> dict:
        return {"state": self.state, "sleep_after": self.sleep_after, "idle": round(now - self.last_activity, 3),
                "wakes": self.wakes, "last_wake_seconds": round(self.last_wake_seconds, 3)}


# --- I/O ----------------------------------------------------------------------

class DockerError(Exception):
    """The proxy refused or the engine failed a call."""


class Docker:
    """The Docker Engine API through the filtering proxy's socket (nothing else is reachable)."""

    def __init__(self, socket_path: str, project: str) -> None:
        self.project = project
        self.http = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=socket_path),
                                      base_url="http://docker", timeout=30.0, trust_env=False)

    async def call(self, method: str, path: str, **params: str) -> httpx.Response:
        r = await self.http.request(method, path, params=params)
        if r.status_code not in (200, 204, 304):
            raise DockerError(f"{method} {path}: {r.status_code} {r.text[:200].strip()}")
        return r

    async def apps(self) -> list[dict]:
        """The project's app containers (the proxy lists nothing else), running or not."""
        labels = [f"{PROJECT_LABEL}={self.project}"] if self.project else []
        return (await self.call("GET", "/containers/json", all="1", filters=json.dumps({"label": labels}))).json()

    async def ip(self, cid: str) -> str:
        return network_ip((await self.call("GET", f"/containers/{cid}/json")).json())

    async def logs(self, cid: str) -> str:
        r = await self.call("GET", f"/containers/{cid}/logs", stdout="1", stderr="1", tail=str(LOG_TAIL))
        return demux_logs(r.content)


class AccessLog:
    """nginx's activity log: read on from where the last read ended, truncated past LOG_MAX."""

    def __init__(self, path: Path, say) -> None:
        self.path, self.say, self.offset, self.warned = path, say, 0, False

    def read(self) -> dict[str, float]:
        """{app: time of its last new line}."""
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                self.offset = 0 if size < self.offset else self.offset
                f.seek(self.offset)
                data = f.read(size - self.offset)
        except FileNotFoundError:
            return {}
        data = data[:data.rfind(b"\n") + 1]  # a line nginx is still writing waits for the next read
        self.offset += len(data)
        last: dict[str, float] = {}
        for hit in filter(None, map(access_line, data.decode("utf-8", "replace").splitlines())):
            last[hit[0]] = max(last.get(hit[0], 0.0), hit[1])
        if self.offset > LOG_MAX:
            try:
                os.truncate(self.path, 0)
                self.offset = 0
            except OSError as exc:
                if not self.warned:
                    self.say(f"cannot truncate {self.path} ({exc}): it grows")
                self.warned = True
        return last


async def respond(send, status: int, body: bytes | dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """A whole answer: JSON for a dict."""
    if isinstance(body, dict):
        body, headers = json.dumps(body).encode(), [(b"content-type", b"application/json"), *headers]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


class Waker:
    """The ASGI app: requests for sleeping apps, GET /_onevps/state, and (lifespan) the sleep loop."""

    def __init__(self, settings: Settings, say=None) -> None:
        self.s = settings
        self.say = say or (lambda line: print(line, flush=True))
        self.apps: dict[str, App] = {}
        self.starting: list[str] = []  # app containers whose Docker health is still "starting"
        self.docker = Docker(settings.proxy_socket, settings.project)
        # no keep-alive to the apps: an idle connection held here would count as the app's activity
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), trust_env=False,
                                      limits=httpx.Limits(max_connections=None, max_keepalive_connections=0))
        self.log = AccessLog(settings.state_dir / "access.log", self.say)

    def flag(self, name: str) -> Path:
        return self.s.state_dir / "asleep" / name

    def url(self, app: App, port: int, path: str) -> str:
        return f"http://{self.s.app_host or app.ip}:{port}{path}"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await self.lifespan(receive, send)
        headers = scope["headers"]
        name = next((v.decode("latin-1") for k, v in headers if k.lower() == b"x-onevps-app"), "")
        if scope["type"] != "http":  # a WebSocket: wake the app, the client connects again
            app = await self.find(name)
            ok = app is not None and await self.ensure_awake(app)
            return await send({"type": "websocket.close", "code": 1013 if ok else 1011})
        if not name and scope["path"] == "/_onevps/state":
            now = time.time()
            return await respond(send, 200, {"apps": {n: a.view(now) for n, a in sorted(self.apps.items())}})
        app = await self.find(name)
        if app is None:
            return await respond(send, 404, {"message": f"no sleep-enabled app named {name!r}"})
        body = await read_body(receive)
        wake = asyncio.ensure_future(self.ensure_awake(app))
        done, _ = await asyncio.wait([wake], timeout=BROWSER_WAIT if wants_page(scope["method"], headers) else None)
        if not done:  # a browser: the page reloads itself while the wake goes on
            return await respond(send, 503, WAKING_PAGE, [(b"content-type", b"text/html"), (b"retry-after", b"1"),
                                                          (b"cache-control", b"no-store")])
        if not wake.result():
            return await respond(send, 503, {"message": f"{name} is waking up slowly, try again"},
                                 [(b"retry-after", b"10")])
        await self.forward(app, scope, body, send)

    async def forward(self, app: App, scope, body: bytes, send) -> None:
        """The request to the app, its answer streamed back."""
        target = (scope.get("raw_path") or scope["path"].encode()) + (
            b"?" + scope["query_string"] if scope.get("query_string") else b"")
        request = self.http.build_request(scope["method"], self.url(app, self.s.app_port, target.decode("latin-1")),
                                          headers=forwardable(scope["headers"]), content=body or None)
        try:
            answer = await self.http.send(request, stream=True)
        except httpx.HTTPError:
            return await respond(send, 502, {"message": f"{app.name} did not answer"})
        try:
            kept = [(k, v) for k, v in answer.headers.raw if k.lower() not in HOP_BY_HOP]
            await send({"type": "http.response.start", "status": answer.status_code, "headers": kept})
            async for chunk in answer.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await answer.aclose()

    async def find(self, name: str) -> App | None:
        if name and name not in self.apps:
            try:
                await self.refresh()
            except (httpx.HTTPError, DockerError) as exc:
                self.say(f"cannot list the apps: {exc}")
        return self.apps.get(name) if name else None

    async def refresh(self) -> None:
        """The sleep-enabled apps from the proxy's list; flags made true (a running app has none)."""
        listed, every = {}, await self.docker.apps()
        # An app still starting (`inv up`, a deploy): no app goes to sleep meanwhile, or `compose up
        # --wait` would see a container stop under it.
        self.starting = sorted(c.get("Id", "")[:12] for c in every if starting(c))
        for c in every:
            found = container_app(c)
            if found and found[0]:
                listed[found[0]] = found
        for name, (_, cid, after, running, ip) in listed.items():
            app = self.apps.setdefault(name, App(name, cid, after))
            app.id, app.sleep_after, app.ip = cid, after, ip or app.ip
            if app.wake_task or app.stop_task:
                continue
            flagged = self.flag(name).exists()
            if running and flagged:  # woken by someone else (fab deploy --wake)
                self.flag(name).unlink(missing_ok=True)
            app.state = "awake" if running else "sleeping" if flagged else "stopped"
        for gone in [n for n, a in self.apps.items() if n not in listed and not (a.wake_task or a.stop_task)]:
            del self.apps[gone]

    async def ensure_awake(self, app: App) -> bool:
        """True once the app answers /health: one wake at a time; a sleep under way finishes first."""
        app.held += 1
        try:
            while app.stop_task:
                await asyncio.wait([app.stop_task])
            if app.state == "awake":
                return True
            if app.wake_task is None:
                app.wake_task = asyncio.create_task(self.wake(app))
            return await asyncio.shield(app.wake_task)
        finally:
            app.held -= 1

    async def wake(self, app: App) -> bool:
        started, app.state = time.monotonic(), "waking"
        try:
            async with asyncio.timeout(self.s.wake_timeout):
                await self.refresh()  # the app's current container (a deploy may have replaced it)
                await self.docker.call("POST", f"/containers/{app.id}/start")
                app.ip = app.ip if self.s.app_host else await self.docker.ip(app.id)
                while not await self.healthy(app):
                    await asyncio.sleep(HEALTH_EVERY)
            app.state, app.wakes, app.last_activity = "awake", app.wakes + 1, time.time()
            app.last_wake_seconds = time.monotonic() - started
            self.flag(app.name).unlink(missing_ok=True)
            self.say(f"woke {app.name} in {app.last_wake_seconds:.2f} s ({app.held} requests held)")
            return True
        except (TimeoutError, httpx.HTTPError, DockerError) as exc:
            late = isinstance(exc, TimeoutError)
            self.say(f"{app.name} {f'did not wake in {self.s.wake_timeout:g} s' if late else f'failed to wake ({exc})'}"
                     f"; its last {LOG_TAIL} log lines:")
            app.state, app.stop_task = "stopping", asyncio.create_task(self.after_failed(app))
            return False
        finally:
            app.wake_task = None

    async def healthy(self, app: App) -> bool:
        try:
            return (await self.http.get(self.url(app, self.s.app_port, "/health"), timeout=1.0)).status_code == 200
        except httpx.HTTPError:
            return False

    async def activity(self, app: App) -> dict | None:
        """The app's activity answer (onevps_serve); None when it has none (it then never sleeps)."""
        try:
            got = (await self.http.get(self.url(app, self.s.activity_port, "/activity"), timeout=2.0)).json()
            return {k: float(got[k]) for k in ("connections", "idle", "requests")}
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None

    async def after_failed(self, app: App) -> None:
        """The app's last log lines to the log, then it sleeps again (flag kept): the next request wakes it anew."""
        try:
            for line in (await self.docker.logs(app.id)).splitlines()[-LOG_TAIL:]:
                self.say(f"{app.name} | {line}")
            await self.docker.call("POST", f"/containers/{app.id}/stop", t="10")
        except (httpx.HTTPError, DockerError) as exc:
            self.say(f"{app.name}: {exc}")
        finally:
            app.state, app.stop_task = "sleeping", None

    async def check_sleep(self) -> list[asyncio.Task]:
        """One round of the sleep loop: the sleeps it started."""
        await self.refresh()
        seen, now, started = self.log.read(), time.time(), []
        if self.starting:
            return started
        for app in list(self.apps.values()):
            app.last_activity = max(app.last_activity, seen.get(app.name, 0.0))
            if app.state != "awake" or app.wake_task or app.stop_task:
                continue
            act = await self.activity(app)
            if act is not None:
                app.last_activity = max(app.last_activity, now - act["idle"])
                if should_sleep(now, app.last_activity, app.sleep_after, act["connections"]):
                    app.stop_task = asyncio.create_task(self.put_to_sleep(app, act))
                    started.append(app.stop_task)
        return started

    async def put_to_sleep(self, app: App, before: dict) -> None:
        """Flag first (nginx sends new requests here), ask again, then stop; else it stays awake."""
        app.state, flag = "stopping", self.flag(app.name)
        try:
            flag.parent.mkdir(parents=True, exist_ok=True)
            flag.touch()
            again = await self.activity(app)
            if app.held or not again or again["connections"] or again["requests"] != before["requests"]:
                flag.unlink(missing_ok=True)
                app.state, app.last_activity = "awake", time.time()
                return
            await self.docker.call("POST", f"/containers/{app.id}/stop", t="10")
            app.state = "sleeping"
            self.say(f"{app.name} asleep after {time.time() - app.last_activity:.0f} s idle")
        except (httpx.HTTPError, DockerError, OSError) as exc:
            self.say(f"{app.name} stays awake: {exc}")
            flag.unlink(missing_ok=True)
            app.state = "awake"
        finally:
            app.stop_task = None

    async def sleep_loop(self) -> None:
        while True:
            try:
                await self.check_sleep()
            except (httpx.HTTPError, DockerError, OSError) as exc:
                self.say(f"sleep check failed: {exc}")
            await asyncio.sleep(self.s.sleep_check_every)

    async def lifespan(self, receive, send) -> None:
        loop_task = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                loop_task = asyncio.create_task(self.sleep_loop())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if loop_task:
                    loop_task.cancel()
                await self.http.aclose()
                await self.docker.http.aclose()
                return await send({"type": "lifespan.shutdown.complete"})


def main() -> None:
    try:
        settings = Settings.from_env(dict(os.environ))
    except ValueError as exc:
        sys.exit(f"onevps_waker: {exc}")
    uvicorn.run(Waker(settings), host="0.0.0.0", port=8080, workers=1, access_log=False,
                proxy_headers=False, lifespan="on", log_level="info")


if __name__ == "__main__":
    main()
