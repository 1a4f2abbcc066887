"""Run the real `fab` or `inv` command line, recording every command it sends.

    python recording_cli.py fab deploy --app=portfolio
    python recording_cli.py inv settings

Used by test_secrets.py. Before handing over to `fabric.main.program.run()` /
`invoke.main.program.run()` (exactly what the `fab` and `inv` console scripts
do), it wraps, for this process only:

- `onevps.runner.Runner.run`: every argv onevps runs, locally or on the server
  (RemoteRunner calls it with its `env K=V` prefix, so the argv recorded is
  the whole remote command line);
- `paramiko.channel.Channel.exec_command`: every command string sent over SSH
  (whatever sends it) and `onevps.session.ShellSession.run`: every command
  string sent to the server's one shell (on its stdin);
- `subprocess.Popen`: every local process started (invoke's local runner, git,
  `docker save` of fab ship).

Each record is one JSON line appended to the file named by ONEVPS_RECORD_FILE.
For an argv naming `--env-file PATH` the mode of PATH (when it exists here) is
recorded as well, at the moment the command is about to be sent: in the tests
the server is this machine, so that is the mode of the server's file while the
command reads it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time

_LOCK = threading.Lock()


def _record(entry: dict) -> None:
    line = json.dumps({**entry, "t": round(time.time(), 3)}) + "\n"
    with _LOCK:
        with open(os.environ["ONEVPS_RECORD_FILE"], "a", encoding="utf-8") as fh:
            fh.write(line)


def _env_files(argv: list[str]) -> list[dict]:
    found = []
    for flag, value in zip(argv, argv[1:]):
        if flag == "--env-file":
            try:
                mode = stat.S_IMODE(os.stat(value).st_mode)
            except OSError:
                mode = None
            found.append({"path": value, "mode": mode})
    return found


def install() -> None:
    # The repository the CLI runs in (a test's copy) comes first, as it does
    # when fabric/invoke load its fabfile.py or tasks.py.
    sys.path.insert(0, os.getcwd())
    from onevps import runner

    original_run = runner.Runner.run

    def run(self, argv, step, **kwargs):
        argv = [str(a) for a in argv]
        _record({"kind": "runner", "runner": type(self).__name__, "argv": argv, "step": step,
                 "env_files": _env_files(argv)})
        return original_run(self, argv, step, **kwargs)

    runner.Runner.run = run

    import paramiko.channel

    original_exec = paramiko.channel.Channel.exec_command

    def exec_command(self, command):
        _record({"kind": "ssh", "command": command if isinstance(command, str) else command.decode(errors="replace")})
        return original_exec(self, command)

    paramiko.channel.Channel.exec_command = exec_command

    from onevps import session

    original_session_run = session.ShellSession.run

    def session_run(self, command, **kwargs):
        _record({"kind": "ssh", "command": command})
        return original_session_run(self, command, **kwargs)

    session.ShellSession.run = session_run

    original_init = subprocess.Popen.__init__

    def popen_init(self, args, *a, **kwargs):
        shown = [str(x) for x in args] if isinstance(args, (list, tuple)) else [str(args)]
        _record({"kind": "local", "argv": shown})
        return original_init(self, args, *a, **kwargs)

    subprocess.Popen.__init__ = popen_init
    _record({"kind": "start", "onevps": runner.__file__, "argv": sys.argv[1:]})


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("fab", "inv"):
        sys.exit("usage: recording_cli.py fab|inv ARGS...")
    prog = sys.argv[1]
    sys.argv = [prog, *sys.argv[2:]]
    install()
    if prog == "fab":
        from fabric.main import program
    else:
        from invoke.main import program
    sys.exit(program.run())


if __name__ == "__main__":
    main()
