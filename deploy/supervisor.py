"""Run Switchboard's services where systemd does not run (a container, a dev box).

It reads the unit files deploy.sh wrote (switchboard-*.service) and runs exactly their
ExecStart= commands, as their User=/Group=, in their WorkingDirectory=, with their
EnvironmentFile= and Environment=, and keeps systemd's Restart=on-failure promise: a
service that exits with an error or is killed by a signal other than TERM, INT, HUP or
PIPE is started again after RestartSec=, up to BURST times in INTERVAL seconds. TERM
(or `stop`) stops them all: TERM to each service, KILL to what is left after its
TimeoutStopSec=.

Each service's standard output and error go to LOG_DIR/<service>.log, reopened when
logrotate has moved the file; the services themselves write their JSON log to
LOG_DIR/switchboard.log, so they are told LOG_STDOUT=false here (under systemd their
standard output goes to the journal instead).

    python3 supervisor.py start  --units DIR --run-dir DIR --log-dir DIR   # in the background
    python3 supervisor.py run    --units DIR --run-dir DIR --log-dir DIR   # in the foreground
    python3 supervisor.py stop   --run-dir DIR
    python3 supervisor.py status --run-dir DIR

Standard library only.
"""

from __future__ import annotations

import argparse
import grp
import json
import logging
import logging.handlers
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BURST, INTERVAL = 5, 60
CLEAN_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE}

log = logging.getLogger("supervisor")


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    user: str | None = None
    group: str | None = None
    cwd: str | None = None
    restart_on_failure: bool = False
    restart_sec: float = 1.0
    stop_timeout: float = 90.0
    process: subprocess.Popen | None = None
    starts: list[float] = field(default_factory=list)
    restart_at: float | None = None
    given_up: bool = False


def _env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as systemd reads them: comments and blanks skipped, one pair of
    surrounding quotes removed."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _seconds(value: str) -> float:
    value = value.strip()
    for suffix, factor in (("ms", 0.001), ("min", 60), ("s", 1)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def parse_unit(path: Path) -> Service:
    """The [Service] section of one unit file; systemd's `%%` becomes `%`."""
    section, options = "", {}
    environment, env_files = [], []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section != "Service" or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        value = value.replace("%%", "%")
        if key == "Environment":
            environment.extend(shlex.split(value))
        elif key == "EnvironmentFile":
            env_files.append(value)
        else:
            options[key] = value
    if "ExecStart" not in options:
        raise SystemExit(f"{path}: no ExecStart= in [Service]")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin", "LANG": "C.UTF-8"}
    for name in env_files:
        optional = name.startswith("-")
        file = Path(name.lstrip("-"))
        if file.exists() or not optional:
            env.update(_env_file(file))
    env.update(item.split("=", 1) for item in environment if "=" in item)
    if env.get("LOG_DIR"):
        env["LOG_STDOUT"] = "false"
    return Service(
        name=path.name.removeprefix("switchboard-").removesuffix(".service"),
        argv=shlex.split(options["ExecStart"].lstrip("@-:+!")),
        env=env,
        user=options.get("User"),
        group=options.get("Group"),
        cwd=options.get("WorkingDirectory"),
        restart_on_failure=options.get("Restart") in ("on-failure", "always"),
        restart_sec=_seconds(options.get("RestartSec", "1")),
        stop_timeout=_seconds(options.get("TimeoutStopSec", "90")),
    )


class Supervisor:
    def __init__(self, services: list[Service], run_dir: Path, log_dir: Path | None) -> None:
        self.services = services
        self.run_dir = run_dir
        self.log_dir = log_dir
        self.stopping = False
        self.outputs: dict[str, logging.Logger] = {}

    # -- output ----------------------------------------------------------------------

    def _output(self, service: Service) -> logging.Logger:
        if service.name not in self.outputs:
            logger = logging.getLogger(f"supervisor.output.{service.name}")
            logger.propagate = False
            handler: logging.Handler
            if self.log_dir is None:
                handler = logging.StreamHandler(sys.stdout)
            else:
                handler = logging.handlers.WatchedFileHandler(self.log_dir / f"{service.name}.log")
                self._own(self.log_dir / f"{service.name}.log", service)
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
            self.outputs[service.name] = logger
        return self.outputs[service.name]

    def _pump(self, service: Service, process: subprocess.Popen) -> None:
        output = self._output(service)
        for line in iter(process.stdout.readline, b""):
            output.warning(line.decode(errors="replace").rstrip("\n"))

    # -- processes -------------------------------------------------------------------

    def _own(self, path: Path, service: Service) -> None:
        if os.geteuid() == 0 and service.user:
            shutil.chown(path, service.user, service.group or None)

    def _identity(self, service: Service) -> dict:
        if os.geteuid() != 0 or not service.user or service.user == pwd.getpwuid(os.geteuid()).pw_name:
            return {}
        account = pwd.getpwnam(service.user)
        group = grp.getgrnam(service.group).gr_gid if service.group else account.pw_gid
        service.env.setdefault("HOME", account.pw_dir)
        service.env["USER"] = service.env["LOGNAME"] = service.user
        return {"user": account.pw_uid, "group": group, "extra_groups": []}

    def start(self, service: Service) -> None:
        service.starts = [t for t in service.starts if t > time.monotonic() - INTERVAL] + [time.monotonic()]
        service.restart_at = None
        process = subprocess.Popen(
            service.argv,
            env=service.env,
            cwd=service.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **self._identity(service),
        )
        service.process = process
        threading.Thread(target=self._pump, args=(service, process), daemon=True).start()
        log.info("started %s (pid %s): %s", service.name, process.pid, shlex.join(service.argv))
        self._write_state()

    def _exited(self, service: Service, code: int) -> None:
        service.process = None
        failed = code > 0 or (code < 0 and -code not in CLEAN_SIGNALS)
        how = f"code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        if self.stopping or not failed or not service.restart_on_failure:
            log.info("%s exited (%s)%s", service.name, how, "" if failed else "; not restarting a clean exit")
        elif len(service.starts) >= BURST:
            service.given_up = True
            log.error("%s failed (%s) %d times within %d s; giving up on it", service.name, how, BURST, INTERVAL)
        else:
            service.restart_at = time.monotonic() + service.restart_sec
            log.warning("%s failed (%s); restarting in %g s", service.name, how, service.restart_sec)
        self._write_state()

    def _write_state(self) -> None:
        state = {s.name: {"pid": s.process.pid if s.process else None, "given_up": s.given_up} for s in self.services}
        tmp = self.run_dir / "supervisor.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(self.run_dir / "supervisor.json")

    def stop_all(self) -> None:
        self.stopping = True
        running = [s for s in self.services if s.process is not None]
        for service in running:
            log.info("stopping %s (pid %s)", service.name, service.process.pid)
            service.process.terminate()
        for service in running:
            try:
                service.process.wait(timeout=service.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %g s; killing it", service.name, service.stop_timeout)
            # What the main process left behind goes too (KillMode=mixed).
            try:
                os.killpg(service.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            service.process.wait()
            service.process = None
        self._write_state()

    def prepare(self) -> None:
        """Per start, the metrics directory is emptied: values from processes of an
        earlier run would otherwise be added to this run's."""
        for service in self.services:
            metrics = service.env.get("PROMETHEUS_MULTIPROC_DIR")
            if metrics:
                shutil.rmtree(metrics, ignore_errors=True)
        for service in self.services:
            metrics = service.env.get("PROMETHEUS_MULTIPROC_DIR")
            if metrics:
                Path(metrics).mkdir(parents=True, exist_ok=True)
                self._own(Path(metrics), service)

    def run(self) -> int:
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        self.prepare()
        for service in self.services:
            self.start(service)
        while not stop.wait(0.2):
            for service in self.services:
                if service.process is not None and (code := service.process.poll()) is not None:
                    self._exited(service, code)
                if service.restart_at is not None and time.monotonic() >= service.restart_at:
                    self.start(service)
        self.stop_all()
        log.info("stopped")
        return 0


def _pid(run_dir: Path) -> int | None:
    try:
        pid = int((run_dir / "supervisor.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["run", "start", "stop", "status"])
    parser.add_argument("--units", type=Path, help="directory holding the switchboard-*.service files")
    parser.add_argument("--run-dir", type=Path, required=True, help="where the pid and state files go")
    parser.add_argument("--log-dir", type=Path, help="where each service's output goes (default: stdout)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s supervisor %(levelname)s %(message)s", stream=sys.stdout
    )
    args.run_dir.mkdir(parents=True, exist_ok=True)
    running = _pid(args.run_dir)

    if args.command == "status":
        if running is None:
            print("not running")
            return 3
        print(f"supervisor: pid {running}")
        for name, state in json.loads((args.run_dir / "supervisor.json").read_text()).items():
            shown = f"pid {state['pid']}" if state["pid"] else "gave up" if state["given_up"] else "stopped"
            print(f"{name}: {shown}")
        return 0
    if args.command == "stop":
        if running is None:
            print("not running")
            return 0
        os.kill(running, signal.SIGTERM)
        deadline = time.monotonic() + 180
        while _pid(args.run_dir) == running:
            if time.monotonic() > deadline:
                print(f"the supervisor (pid {running}) did not stop within 180 s", file=sys.stderr)
                return 1
            time.sleep(0.2)
        print(f"stopped (pid {running})")
        return 0

    if running is not None:
        print(f"already running (pid {running}); stop it first", file=sys.stderr)
        return 1
    if args.units is None:
        parser.error("--units is required for run and start")
    units = sorted(args.units.glob("switchboard-*.service"))
    if not units:
        print(f"no switchboard-*.service files in {args.units}", file=sys.stderr)
        return 1
    if args.command == "start":
        # Again, in the background, in a session of its own so it outlives this shell.
        out = (
            os.open(args.log_dir / "supervisor.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if args.log_dir
            else subprocess.DEVNULL
        )
        child = subprocess.Popen(
            [sys.executable, __file__, "run", "--units", str(args.units), "--run-dir", str(args.run_dir)]
            + (["--log-dir", str(args.log_dir)] if args.log_dir else []),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if args.log_dir:
            os.close(out)
        deadline = time.monotonic() + 10
        while _pid(args.run_dir) != child.pid:
            if child.poll() is not None or time.monotonic() > deadline:
                print(f"the supervisor did not start; see {args.log_dir or 'its output'}", file=sys.stderr)
                return 1
            time.sleep(0.1)
        print(f"started (pid {child.pid}): {', '.join(u.stem.removeprefix('switchboard-') for u in units)}")
        return 0

    (args.run_dir / "supervisor.pid").write_text(str(os.getpid()))
    try:
        return Supervisor([parse_unit(u) for u in units], args.run_dir, args.log_dir).run()
    finally:
        (args.run_dir / "supervisor.pid").unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
