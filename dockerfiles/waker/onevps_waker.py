"""The waker (issue 15): holds requests for a sleeping app, wakes it once, answers
them all; puts idle sleep-enabled apps (label onevps.sleep_after) to sleep.

    python /opt/onevps/waker/onevps_waker.py   (one process: the state is in it; port 8080)

nginx sends a request for a sleeping app (flag file STATE_DIR/asleep/NAME) here
with `X-Onevps-App: NAME`; GET /_onevps/state (no such header) answers the apps'
states. Docker is reached only through the filtering proxy's socket. Env (see
Settings.from_env): ONEVPS_PROJECT, ONEVPS_PROXY_SOCKET, ONEVPS_STATE_DIR,
WAKE_TIMEOUT, SLEEP_CHECK_EVERY, APP_PORT, ACTIVITY_PORT, APP_HOST, WAKER_CLIENTS,
WAKER_MAX_CONNECTIONS, WAKER_MAX_HELD. Only WAKER_CLIENTS (nginx) and 127.0.0.1 are
served: an app container's connection is reset unread. stdout holds
one line per wake and per sleep and a failed wake's last app log lines; never a
request's headers or body. Standard library only (asyncio streams): its modules
onevps_waker_http (HTTP/1.1) and onevps_waker_parts (pure parts) lie beside it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from urllib.parse import urlencode

from onevps_waker_http import (FAILURES, MAX_HEAD, BadMessage, Request, fetch, header, open_answer, refusal, relay,
                               respond, serve, websocket_close)
from onevps_waker_parts import (PROJECT_LABEL, App, AccessLog, Settings, container_app, demux_logs, forwardable,
                                network_ip, should_sleep, starting, wants_page)

PORT = 8080
HEALTH_EVERY = 0.05  # seconds between /health probes while waking
LOG_TAIL = 50  # app log lines printed when a wake fails
BROWSER_WAIT = 1.5  # seconds a browser waits before it gets the "waking up" page
DOCKER_TIMEOUT = 30.0  # seconds one call through the proxy may take
ANSWER_WAIT = 75.0  # seconds an app may take to send its answer's head (nginx: proxy_read_timeout 75s)
DOCKER_ANSWER = 4 << 20  # bytes of a Docker proxy answer read at most (the proxy's own limit)
APP_ANSWER = 64 << 10  # bytes of an app's /health or /activity answer read at most
WAKING_PAGE = (b"<!doctype html><meta http-equiv=refresh content=1><title>Waking up</title>"
               b"<p>Waking up the app&hellip; this page reloads by itself.")


class DockerError(Exception):
    """The proxy refused or the engine failed a call."""


class Docker:
    """The Docker Engine API through the filtering proxy's socket (nothing else is reachable)."""

    def __init__(self, socket_path: str, project: str) -> None:
        self.socket_path, self.project = socket_path, project

    def connect(self):
        return asyncio.open_unix_connection(self.socket_path, limit=MAX_HEAD)

    async def call(self, method: str, path: str, **params: str) -> bytes:
        """The answer's body; DockerError unless 200, 204 or 304."""
        target = path + (f"?{urlencode(params)}" if params else "")
        status, body = await fetch(self.connect, method, target, [(b"Host", b"docker")], DOCKER_TIMEOUT, DOCKER_ANSWER)
        if status not in (200, 204, 304):
            raise DockerError(f"{method} {path}: {status} {body[:200].decode('utf-8', 'replace').strip()}")
        return body

    async def apps(self) -> list[dict]:
        """The project's app containers (the proxy lists nothing else), running or not."""
        labels = [f"{PROJECT_LABEL}={self.project}"] if self.project else []
        return json.loads(await self.call("GET", "/containers/json", all="1", filters=json.dumps({"label": labels})))

    async def ip(self, cid: str) -> str:
        return network_ip(json.loads(await self.call("GET", f"/containers/{cid}/json")))

    async def logs(self, cid: str) -> str:
        return demux_logs(await self.call("GET", f"/containers/{cid}/logs", stdout="1", stderr="1", tail=str(LOG_TAIL)))


class Waker:
    """Requests for sleeping apps and GET /_onevps/state (handle), and the sleep loop."""

    def __init__(self, settings: Settings, say=None) -> None:
        self.s = settings
        self.say = say or (lambda line: print(line, flush=True))
        self.apps: dict[str, App] = {}
        self.starting: list[str] = []  # app containers whose Docker health is still "starting"
        self.docker = Docker(settings.proxy_socket, settings.project)
        self.log = AccessLog(settings.state_dir / "access.log", self.say)

    def flag(self, name: str):
        return self.s.state_dir / "asleep" / name

    def address(self, app: App, port: int):
        """(host, port, a connect function) of one of the app's ports; a new connection per
        request: an idle one held here would count as the app's activity."""
        host = self.s.app_host or app.ip
        return host, port, lambda: asyncio.open_connection(host, port, limit=MAX_HEAD)

    async def get(self, app: App, port: int, path: str, timeout: float) -> tuple[int, bytes]:
        host, port, connect = self.address(app, port)
        return await fetch(connect, "GET", path, [(b"Host", f"{host}:{port}".encode())], timeout, APP_ANSWER)

    async def handle(self, request: Request, writer) -> bool:
        """Answer one request; whether its connection stays open."""
        name = (header(request.headers, b"x-onevps-app") or b"").decode("latin-1")
        if request.websocket:  # wake the app, close with 1013 (try again later): the client connects again
            return await self.websocket(name, request, writer)
        if not name and request.path == "/_onevps/state":
            now = time.time()
            return await respond(writer, request, 200, {"apps": {n: a.view(now) for n, a in sorted(self.apps.items())}})
        app = await self.find(name)
        if app is None:
            return await respond(writer, request, 404, {"message": f"no sleep-enabled app named {name!r}"})
        if app.state != "awake" and self.held() >= self.s.max_held:  # each held request holds a connection
            self.say(f"{self.s.max_held} requests already wait for sleeping apps: one for {name} got 503")
            return await respond(writer, request, 503, {"message": "too many requests wait for sleeping apps, "
                                                        "try again"}, [(b"retry-after", b"5")])
        wake, gone = asyncio.ensure_future(self.ensure_awake(app)), asyncio.ensure_future(request.client_gone())
        try:
            done, _ = await asyncio.wait([wake, gone], return_when=asyncio.FIRST_COMPLETED,
                                         timeout=BROWSER_WAIT if wants_page(request.method, request.headers) else None)
        finally:
            gone.cancel()
        if gone in done:  # held, then the client went away: the wake goes on, the request is dropped
            self.say(f"a client went away while {name} woke: its request dropped")
            return False
        if not done:  # a browser: the page reloads itself while the wake goes on
            return await respond(writer, request, 503, WAKING_PAGE, [
                (b"content-type", b"text/html"), (b"retry-after", b"1"), (b"cache-control", b"no-store")])
        if not wake.result():
            return await respond(writer, request, 503, {"message": f"{name} is waking up slowly, try again"},
                                 [(b"retry-after", b"10")])
        return await self.forward(app, request, writer)

    async def websocket(self, name: str, request: Request, writer) -> bool:
        key = header(request.headers, b"sec-websocket-key")
        if not key:
            await respond(writer, request, 400, {"message": "a WebSocket handshake needs Sec-WebSocket-Key"})
            return False
        app = await self.find(name)
        ok = app is not None and await self.ensure_awake(app)
        writer.write(websocket_close(key, 1013 if ok else 1011))
        await writer.drain()
        return False

    def held(self) -> int:
        """Requests waiting for an app to wake, all apps together."""
        return sum(a.held for a in self.apps.values())

    async def forward(self, app: App, request: Request, writer) -> bool:
        """The request to the app (its body streamed from the client as it is read), the
        answer's head within ANSWER_WAIT seconds of the body's end (else 504), its body
        streamed back (a stalled step closes the connection: see relay). A body that fails
        on the client's side (408, 413, 400) is answered so and never reaches the app whole."""
        host, port, connect = self.address(app, self.s.app_port)
        headers = forwardable(request.headers)
        if header(headers, b"host") is None:
            headers.insert(0, (b"Host", f"{host}:{port}".encode()))
        try:
            answer = await open_answer(connect, request.method, request.target, headers, request,
                                       answer_wait=ANSWER_WAIT)
        except BadMessage as exc:
            if exc is not request.error:  # the app's answer is malformed
                return await respond(writer, request, 502, {"message": f"{app.name} did not answer"})
            await respond(writer, request, exc.status, refusal(exc))
            return False
        except TimeoutError:
            return await respond(writer, request, 504, {"message": f"{app.name} did not answer in time"})
        except FAILURES:
            return await respond(writer, request, 502, {"message": f"{app.name} did not answer"})
        try:
            return await relay(answer, request, writer)
        finally:
            answer.close()

    async def find(self, name: str) -> App | None:
        if name and name not in self.apps:
            try:
                await self.refresh()
            except (*FAILURES, DockerError) as exc:
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
                    if time.monotonic() - started > self.s.wake_timeout:  # even if a cancellation was lost
                        raise TimeoutError
                    await asyncio.sleep(HEALTH_EVERY)
            app.state, app.wakes, app.last_activity = "awake", app.wakes + 1, time.time()
            app.last_wake_seconds = time.monotonic() - started
            self.flag(app.name).unlink(missing_ok=True)
            self.say(f"woke {app.name} in {app.last_wake_seconds:.2f} s ({app.held} requests held)")
            return True
        except (*FAILURES, DockerError) as exc:
            late = isinstance(exc, TimeoutError)
            self.say(f"{app.name} {f'did not wake in {self.s.wake_timeout:g} s' if late else f'failed to wake ({exc})'}"
                     f"; its last {LOG_TAIL} log lines:")
            app.state, app.stop_task = "stopping", asyncio.create_task(self.after_failed(app))
            return False
        finally:
            app.wake_task = None

    async def healthy(self, app: App) -> bool:
        try:
            return (await self.get(app, self.s.app_port, "/health", 1.0))[0] == 200
        except FAILURES:
            return False

    async def activity(self, app: App) -> dict | None:
        """The app's activity answer (onevps_serve); None when it has none (it then never sleeps)."""
        try:
            got = json.loads((await self.get(app, self.s.activity_port, "/activity", 2.0))[1])
            return {k: float(got[k]) for k in ("connections", "idle", "requests")}
        except (*FAILURES, KeyError, TypeError):
            return None

    async def after_failed(self, app: App) -> None:
        """The app's last log lines to the log, then it sleeps again (flag kept): the next request wakes it anew."""
        try:
            for line in (await self.docker.logs(app.id)).splitlines()[-LOG_TAIL:]:
                self.say(f"{app.name} | {line}")
            await self.docker.call("POST", f"/containers/{app.id}/stop", t="10")
        except (*FAILURES, DockerError) as exc:
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
        except (*FAILURES, DockerError) as exc:
            self.say(f"{app.name} stays awake: {exc}")
            flag.unlink(missing_ok=True)
            app.state = "awake"
        finally:
            app.stop_task = None

    async def sleep_loop(self) -> None:
        while True:
            try:
                await self.check_sleep()
            except (*FAILURES, DockerError) as exc:
                self.say(f"sleep check failed: {exc}")
            await asyncio.sleep(self.s.sleep_check_every)


async def run(settings: Settings) -> None:
    """Serve on PORT and run the sleep loop until SIGTERM or SIGINT."""
    waker, stop = Waker(settings), asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    server = await serve(waker.handle, "0.0.0.0", PORT, settings.clients, settings.max_connections)
    sleeping = asyncio.create_task(waker.sleep_loop())
    waker.say(f"onevps waker: port {PORT} for {', '.join(sorted(settings.clients))} only (at most "
              f"{settings.max_connections} connections, {settings.max_held} held requests), project "
              f"{settings.project or '(any)'}, docker via {settings.proxy_socket}")
    await stop.wait()
    sleeping.cancel()
    server.close()


def main() -> None:
    try:
        settings = Settings.from_env(dict(os.environ))
    except ValueError as exc:
        sys.exit(f"onevps_waker: {exc}")
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
