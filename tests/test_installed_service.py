"""The installed service, started the way its unit starts it, without systemd as PID 1.

install.sh runs for real into a throwaway root; systemd-sysusers applies the installed
sysusers.d file there (against a copy of this machine's user database, so the new uid
is free here too). Then everything systemd would do for `systemctl start cellctl` is read
FROM THE INSTALLED UNIT and done by hand: the state and configuration directories with
their modes and owners, the credentials of LoadCredential=, the environment (the unit's
Environment= lines, STATE_DIRECTORY, CONFIGURATION_DIRECTORY, CREDENTIALS_DIRECTORY,
NOTIFY_SOCKET, WATCHDOG_USEC, HOME/USER), ExecStartPre, then ExecStart as User=/Group=/
SupplementaryGroups= with UMask=, WorkingDirectory=, NoNewPrivileges=, an empty
CapabilityBoundingSet=, MemoryDenyWriteExecute= (prctl) and ProtectSystem=strict
(Landlock: writes only beneath the state directory and /dev) via cellctl.testing.confine.
Against a simulated energy meter and a mosquitto that wants a password, the daemon must
tell systemd READY=1, publish, write its state as the cellctl user and stop cleanly on
SIGTERM within TimeoutStopSec=. A [Service] key this test does not know fails it: a unit
change must be looked at here.

Needs root (it changes users and owners). CI sets CELLCTL_REQUIRE_INSTALLED_RUN=1 (.ci/run):
there it fails instead of skipping.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cellctl_sim.modbus.server import SimModbusServer

from cellctl.localbroker import free_port
from cellctl.testing import Collector, Mosquitto, modbus_device
from cellctl.testing.confine import landlock_abi, mdwe_supported

REPO = Path(__file__).resolve().parents[1]
REQUIRED = os.environ.get("CELLCTL_REQUIRE_INSTALLED_RUN") == "1"
CONFINE = [sys.executable, "-m", "cellctl.testing.confine"]
MQTT_USER, MQTT_PASSWORD = "cell-1", "installed-s3cret"
# both build cellctl from this checkout (in-tree build/ and *.egg-info): one at a time
pytestmark = [pytest.mark.timeout(600), pytest.mark.xdist_group("install")]

# [Service] keys and what becomes of them here. Emulated ones are read from the unit and
# applied; the others are systemd's alone (namespaces, seccomp, restart policy): the unit
# tests check them with systemd-analyze (tests/test_unit_file.py).
EMULATED = {
    "Type", "ExecStartPre", "ExecStart", "User", "Group", "SupplementaryGroups", "LoadCredential",
    "StateDirectory", "StateDirectoryMode", "ConfigurationDirectory", "ConfigurationDirectoryMode",
    "UMask", "WorkingDirectory", "Environment", "NoNewPrivileges", "CapabilityBoundingSet",
    "AmbientCapabilities", "ProtectSystem", "ReadWritePaths", "MemoryDenyWriteExecute",
    "WatchdogSec", "TimeoutStopSec",
}  # fmt: skip
SYSTEMD_ONLY = {
    "ExecReload", "Restart", "RestartSec", "RestartSteps", "RestartMaxDelaySec", "RestartPreventExitStatus",
    "ProtectHome", "PrivateTmp", "PrivateIPC", "RemoveIPC", "ProtectKernelTunables", "ProtectKernelModules",
    "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname", "ProtectProc",
    "ProcSubset", "DevicePolicy", "DeviceAllow", "RestrictAddressFamilies", "RestrictNamespaces",
    "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality", "SystemCallArchitectures",
    "SystemCallFilter", "SystemCallErrorNumber",
}  # fmt: skip


def _not_possible(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"CELLCTL_REQUIRE_INSTALLED_RUN=1 but {reason}")
    pytest.skip(reason)


def _usable_python() -> str | None:
    """A Python 3.11+ with venv that another user can run (the distribution's, as on a
    fresh machine; a pyenv under /root is not reachable by the cellctl user)."""
    for candidate in ("/usr/bin/python3", sys.executable):
        path = Path(candidate).resolve()
        reachable = all(os.stat(p).st_mode & stat.S_IXOTH for p in [path, *path.parents])
        if not reachable:
            continue
        probe = subprocess.run(
            [str(path), "-c", "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))"],
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        if probe.returncode == 0:
            return str(path)
    return None


def service_section(unit: Path) -> dict[str, list[str]]:
    """[Service] keys -> every value given, in order (keys repeat in systemd units)."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def _one(service: dict[str, list[str]], key: str, default: str | None = None) -> str:
    given = service.get(key)
    if not given:
        assert default is not None, f"the unit has no {key}="
        return default
    return given[-1]


def _ids(root: Path, database: str, name: str) -> int:
    for line in (root / "etc" / database).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise AssertionError(f"no {name!r} in {root}/etc/{database}")


def _memberships(root: Path, user: str) -> list[int]:
    groups = (line.split(":") for line in (root / "etc/group").read_text().splitlines())
    return [int(g[2]) for g in groups if len(g) == 4 and user in g[3].split(",")]


@dataclass
class Installed:
    root: Path
    service: dict[str, list[str]]
    uid: int
    gid: int
    groups: list[int]

    @property
    def home(self) -> Path:
        """The user's home from the user database (sysusers.d says /var/lib/cellctl)."""
        for line in (self.root / "etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == _one(self.service, "User"):
                return self.host(fields[5])
        raise AssertionError("the unit's user is not in the user database")

    def host(self, path: str) -> Path:
        """Where a path of the installed system is in the throwaway root."""
        assert path.startswith("/"), path
        return self.root / path.lstrip("/")

    def command(self, line: str) -> list[str]:
        """An Exec line's argv with the program resolved through the root the way the
        kernel would (/usr/bin/cellctl -> the release's script -> its #! interpreter)."""
        argv = shlex.split(line.lstrip("-@:+!"))
        program = self.host(argv[0])
        while program.is_symlink():
            target = os.readlink(program)
            program = self.host(target) if target.startswith("/") else program.parent / target
        shebang = program.read_text(errors="replace").splitlines()[0]
        assert shebang.startswith("#!/"), shebang
        interpreter = self.host(shebang[2:].split()[0])
        args = [str(self.host(a)) if a.startswith("/") and self.host(a).exists() else a for a in argv[1:]]
        return [str(interpreter), str(program), *args]


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    if os.geteuid() != 0:
        _not_possible("the installed service test needs root (it creates a user and changes owners)")
    if shutil.which("systemd-sysusers") is None:
        _not_possible("systemd-sysusers is missing (apt-get install systemd)")
    python = _usable_python()
    if python is None:
        _not_possible(
            "no Python 3.11+ with venv that the cellctl user can run (apt-get install python3-venv)"
        )
        return
    root = Path(tempfile.mkdtemp(prefix="cellctl-installed-"))
    root.chmod(0o755)  # the service user must reach the release, as it reaches / on a machine
    try:
        proc = subprocess.run(
            [str(REPO / "install.sh"), "--root", str(root), "--python", python],
            capture_output=True, text=True, timeout=500, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for database in ("passwd", "group", "shadow", "gshadow"):
            if Path("/etc", database).exists():
                shutil.copy2(Path("/etc", database), root / "etc" / database)
        sysusers = subprocess.run(
            ["systemd-sysusers", f"--root={root}", str(root / "usr/lib/sysusers.d/cellctl.conf")],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert sysusers.returncode == 0, sysusers.stdout + sysusers.stderr
        service = service_section(root / "etc/systemd/system/cellctl.service")
        unknown = set(service) - EMULATED - SYSTEMD_ONLY
        assert not unknown, (
            f"the unit has [Service] keys this test does not know: {sorted(unknown)}; emulate them "
            "(cellctl.testing.confine) or list them as systemd's alone"
        )
        user, group = _one(service, "User"), _one(service, "Group", _one(service, "User"))
        uid, gid = _ids(root, "passwd", user), _ids(root, "group", group)
        # initgroups() as systemd does for User=: the primary group, the user's memberships
        # in the group database (sysusers' `m cellctl dialout`), then SupplementaryGroups=
        extra = [gid, *_memberships(root, user)]
        extra += [_ids(root, "group", g) for v in service.get("SupplementaryGroups", []) for g in v.split()]
        yield Installed(root, service, uid, gid, extra)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _systemd_start_setup(inst: Installed, invocation: str) -> tuple[dict[str, str], Path]:
    """What systemd does before ExecStart: directories, credentials, environment.
    Returns the environment and the credentials directory."""
    s = inst.service
    # the owners install.sh sets on a live install (it does not chown below --root)
    etc = inst.host("/etc/cellctl")
    for path in (etc, etc / "cell.yaml", etc / "profiles", *(etc / "profiles").iterdir()):
        os.chown(path, 0, inst.gid)
    env: dict[str, str] = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
        "INVOCATION_ID": invocation,
    }
    env |= {
        "HOME": str(inst.home),
        "USER": _one(s, "User"),
        "LOGNAME": _one(s, "User"),
        "SHELL": "/usr/sbin/nologin",
    }
    state_dirs: list[str] = []
    for name in " ".join(s.get("StateDirectory", [])).split():
        d = inst.host(f"/var/lib/{name}")
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, inst.uid, inst.gid)  # StateDirectory= is owned by the unit's user
        d.chmod(int(_one(s, "StateDirectoryMode", "0755"), 8))
        state_dirs.append(str(d))
    env["STATE_DIRECTORY"] = ":".join(state_dirs)
    config_dirs: list[str] = []
    for name in " ".join(s.get("ConfigurationDirectory", [])).split():
        d = inst.host(f"/etc/{name}")
        d.mkdir(parents=True, exist_ok=True)  # owned by root (install.sh gave it group cellctl)
        d.chmod(int(_one(s, "ConfigurationDirectoryMode", "0755"), 8))
        config_dirs.append(str(d))
    env["CONFIGURATION_DIRECTORY"] = ":".join(config_dirs)
    # LoadCredential=ID:PATH: a file is the credential ID; a directory gives ID_<file> each
    creds = inst.host("/run/credentials/cellctl.service")
    creds.mkdir(parents=True)
    for spec in s.get("LoadCredential", []):
        cred_id, _, source = spec.partition(":")
        src = inst.host(source)
        files = {cred_id: src} if src.is_file() else {f"{cred_id}_{f.name}": f for f in sorted(src.iterdir())}
        for name, f in files.items():
            (creds / name).write_bytes(f.read_bytes())
            (creds / name).chmod(0o400)
            os.chown(creds / name, inst.uid, inst.gid)
    creds.chmod(0o500)
    os.chown(creds, inst.uid, inst.gid)
    env["CREDENTIALS_DIRECTORY"] = str(creds)
    for line in s.get("Environment", []):
        for assignment in shlex.split(line):
            key, _, value = assignment.partition("=")
            assert "%" not in value, f"specifiers are not emulated: {assignment}"
            env[key] = value
    if "WatchdogSec" in s:
        env["WATCHDOG_USEC"] = str(int(float(_one(s, "WatchdogSec")) * 1_000_000))
    return env, creds


def _confinement(inst: Installed) -> list[str]:
    """The cellctl.testing.confine options for the unit's user and hardening."""
    s = inst.service
    assert _one(s, "ProtectSystem") == "strict", "the write scope below assumes ProtectSystem=strict"
    groups = ",".join(map(str, sorted(set(inst.groups))))
    options = ["--uid", str(inst.uid), "--gid", str(inst.gid), "--groups", groups]
    options += ["--umask", _one(s, "UMask", "0022")]
    workdir = _one(s, "WorkingDirectory", "/")  # a system service's default is /
    options += ["--chdir", str(inst.home if workdir == "~" else inst.host(workdir))]
    if _one(s, "NoNewPrivileges", "no") == "yes":
        options.append("--no-new-privileges")
    if _one(s, "CapabilityBoundingSet", "~") == "":
        options.append("--no-capabilities")
    assert _one(s, "AmbientCapabilities", "") == ""
    if _one(s, "MemoryDenyWriteExecute", "no") == "yes":  # as systemd: the prctl where the kernel has it
        options.append("--mdwe" if mdwe_supported() else "--mdwe-seccomp")
    if landlock_abi() < 1:
        warnings.warn(
            "no Landlock in this kernel: the ProtectSystem= write scope is not enforced", stacklevel=1
        )
    else:
        state = [str(inst.host(f"/var/lib/{n}")) for n in " ".join(s.get("StateDirectory", [])).split()]
        extra = [str(inst.host(p)) for v in s.get("ReadWritePaths", []) for p in v.split()]
        for path in [*state, *extra, "/dev"]:  # /dev: ProtectSystem= leaves it to DevicePolicy=
            options += ["--writable", path]
    return options


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


PROBE = """import sys
for d in sys.argv[1:]:
    try:
        open(d + "/probe", "w").close()
        print(d, "ok")
    except OSError as e:
        print(d, e.strerror)
"""


def _writes_only_beneath_the_state_dir(inst: Installed, confine: list[str], env: dict[str, str]) -> None:
    """The control for the write scope: confined as the daemon is, the installed Python
    can write in the state directory and not in /tmp (world-writable, so only the
    ProtectSystem= emulation stops it)."""
    python = inst.command(_one(inst.service, "ExecStart"))[0]
    state_dir = env["STATE_DIRECTORY"].split(":")[0]
    writes = subprocess.run(
        [*confine, python, "-c", PROBE, "/tmp", state_dir],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert writes.stdout.splitlines() == ["/tmp Permission denied", f"{state_dir} ok"], (
        writes.stdout + writes.stderr
    )
    Path(state_dir, "probe").unlink()


@pytest.fixture
async def meter_port() -> AsyncIterator[int]:
    async with SimModbusServer({1: "energy-meter"}, tick=0.05, seed=12) as sim:
        yield await sim.serve_tcp()


@pytest.fixture
def auth_broker() -> Iterator[Mosquitto]:
    with Mosquitto(users={MQTT_USER: MQTT_PASSWORD, "consumer": "consumer-pw"}) as b:
        yield b


def _configure(inst: Installed, broker_port: int, meter_port: int, cell: str) -> None:
    """What docs/install.md asks of the operator: the password into credentials/, the
    identity, backbone and devices into /etc/cellctl/cell.yaml (a profile of the site's
    own into /etc/cellctl/profiles/)."""
    secret = inst.host("/etc/cellctl/credentials/mqtt-password")
    secret.write_text(MQTT_PASSWORD + "\n")
    secret.chmod(0o600)
    profile = REPO / "sim_devices/cellctl_sim/profiles/sim-energy-meter.yaml"
    shutil.copy(profile, inst.host("/etc/cellctl/profiles") / profile.name)
    config_path = inst.host("/etc/cellctl/cell.yaml")
    config: dict[str, Any] = yaml.safe_load(config_path.read_text())
    config["identity"]["cell"] = cell
    config["backbone"] = {
        "host": "127.0.0.1", "port": broker_port, "username": MQTT_USER, "password_file": "mqtt-password",
        "reconnect_min": 0.2, "reconnect_max": 1,
    }  # fmt: skip
    config["metrics"] = {"listen": f"127.0.0.1:{free_port()}"}
    config["profile_dirs"] = [str(inst.host("/etc/cellctl/profiles"))]
    config["devices"] = [modbus_device("meter-1", "sim-energy-meter", meter_port, 1, poll_interval=0.2)]
    config_path.write_text(yaml.safe_dump(config))


async def test_installed_cellctl_runs_as_the_units_user_with_its_environment(
    installed: Installed, auth_broker: Mosquitto, meter_port: int, unique: str
) -> None:
    inst, s = installed, installed.service
    _configure(inst, auth_broker.port, meter_port, unique)
    env, creds = _systemd_start_setup(inst, secrets.token_hex(16))
    notify_dir = inst.host("/run/systemd")
    notify_dir.mkdir(parents=True, exist_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_dir / "notify"))
    (notify_dir / "notify").chmod(0o777)  # as systemd's: any service may write to it
    notify.settimeout(1)
    env["NOTIFY_SOCKET"] = str(notify_dir / "notify")
    confine = [*CONFINE, *_confinement(inst), "--"]
    assert _one(s, "Type") == "notify"

    if landlock_abi() >= 1:
        await asyncio.to_thread(_writes_only_beneath_the_state_dir, inst, confine, env)

    # ExecStartPre: the config check, as the service user (it must read the config)
    for line in s.get("ExecStartPre", []):
        pre = await asyncio.to_thread(
            subprocess.run,
            [*confine, *inst.command(line)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert pre.returncode == 0, f"ExecStartPre={line}: {pre.stdout}{pre.stderr}"

    consumer = Collector(
        auth_broker.port, f"uns/v1/+/+/+/+/{unique}/#", username="consumer", password="consumer-pw"
    )
    log_path = inst.root / "daemon.log"
    with log_path.open("wb") as log:
        daemon = await asyncio.to_thread(
            subprocess.Popen, [*confine, *inst.command(_one(s, "ExecStart"))], env=env, stdout=log, stderr=log
        )
    received: list[str] = []
    try:

        def ready() -> bool:
            while "READY=1" not in received and daemon.poll() is None:
                try:
                    received.append(notify.recv(4096).decode())
                except TimeoutError:
                    return False
            return "READY=1" in received

        async with asyncio.timeout(60):
            while not await asyncio.to_thread(ready):
                assert daemon.poll() is None, log_path.read_text(errors="replace")[-3000:]
        # the process is what the unit asks for
        status = _status(daemon.pid)
        assert status["Uid"].split() == [str(inst.uid)] * 4
        assert status["Gid"].split() == [str(inst.gid)] * 4
        dialout = _ids(inst.root, "group", "dialout")  # serial ports
        assert sorted(map(int, status["Groups"].split())) == sorted({inst.gid, dialout})
        assert status["Umask"] == _one(s, "UMask")
        assert status["NoNewPrivs"] == "1"
        assert int(status["CapBnd"], 16) == 0
        assert int(status["CapEff"], 16) == 0
        # data arrives on MQTT through the password the credential handed over
        await consumer.until(
            lambda _: len(consumer.on("/meter-1/data")) >= 3, timeout=45, what="the installed daemon's data"
        )
        await consumer.until(
            lambda _: (consumer.latest("/meter-1/state") or {}).get("available"),
            timeout=30,
            what="meter available",
        )
    finally:
        if daemon.poll() is None:
            daemon.send_signal(15)  # systemctl stop: SIGTERM (KillSignal= default)
        stop_within = float(_one(s, "TimeoutStopSec", "90"))
        try:
            code = await asyncio.to_thread(daemon.wait, stop_within)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(10)
            raise
        finally:
            consumer.close()
    while True:  # what the daemon said on its way out
        try:
            received.append(notify.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            break
    notify.close()
    output = log_path.read_text(errors="replace")
    assert code == 0, output[-3000:]
    assert received[-1] == "STOPPING=1", received
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert events, output[-2000:]
    problems = [e for e in events if e.get("level") in ("error", "critical")]
    assert not problems, problems

    await asyncio.to_thread(
        _state_written_by_the_service_user_alone, inst, Path(env["STATE_DIRECTORY"]), creds
    )
    assert MQTT_PASSWORD not in output


def _state_written_by_the_service_user_alone(inst: Installed, state_dir: Path, creds: Path) -> None:
    """The state directory holds the outbox, owned by the unit's user and private as its
    UMask= says; nothing else in the installed system belongs to that user."""
    written = list(state_dir.rglob("*"))
    assert any(p.name.startswith("outbox") for p in written), written
    umask = int(_one(inst.service, "UMask"), 8)
    for p in written:
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == (inst.uid, inst.gid), p
        assert stat.S_IMODE(st.st_mode) & umask == 0, f"{p} is {oct(st.st_mode)}"
    owned = [p for p in inst.root.rglob("*") if p.lstat().st_uid == inst.uid]
    outside = [
        p for p in owned if p != state_dir and state_dir not in p.parents and creds not in (p, *p.parents)
    ]
    assert not outside, outside
    # the password was never readable on disk by the service user, only as a credential
    assert stat.S_IMODE(inst.host("/etc/cellctl/credentials").stat().st_mode) == 0o700
