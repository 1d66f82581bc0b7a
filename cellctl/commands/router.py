"""The one router every command goes through, whatever its source.

`submit` (synchronous, from an MQTT callback) answers at once when the command is a
repeat (its first result), expired, or refused by the static policy (allow-lists, types,
limits, rate limits, a full queue); otherwise the command is *accepted* and queued for
its device. One worker per device runs its commands one at a time: the interlocks are
checked right then against the device's current state, and the command is executed
through the driver's capability (`Writer` via the device runner, `Caller`,
`JobControl`), a write then verified by reading back. The worker is an error boundary:
whatever the driver raises becomes a `failed` result with the device's reason.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from cellctl.commands.audit import Audit
from cellctl.commands.model import Command, CommandResult, FailureReason
from cellctl.commands.policy import (
    RateLimiter,
    Refusal,
    RequestMemory,
    call_args,
    check_write,
    interlock_problem,
)
from cellctl.config.commands import (
    CommandPolicy,
    CommandsConfig,
    Condition,
    DevicePolicy,
    PointPolicy,
)
from cellctl.config.loader import CompiledCell, CompiledDevice
from cellctl.config.profile import PointDef
from cellctl.driver import Caller, DeviceUnavailable, JobControl, WriteRejected
from cellctl.engine.runner import DeviceRunner

log = structlog.get_logger("cellctl.commands")

Reply = Callable[[CommandResult], None]
MAX_LOT_CHARS = 64  # a lot id in `job_start` args, as in the device config's `lots`


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _legacy_policy(dev: CompiledDevice) -> DevicePolicy:
    """`sparkplug.device_writes: allow` without `commands.enabled`: every writable point
    within the profile's limits, as before the policy existed (read-back verified)."""
    return DevicePolicy(points={p.id: PointPolicy() for p in dev.points if p.access != "r"})


def same_value(point: PointDef, written: Any, read: Any) -> bool:
    """Whether the device reports what was written (float32 and scaling round a little)."""
    if point.type in ("int", "float") and isinstance(read, (int, float)) and not isinstance(read, bool):
        tolerance = abs(point.scale or 0.0) / 2 + (0.5 * 10 ** -point.decimals if point.decimals is not None else 0.0)
        return math.isclose(float(read), float(written), rel_tol=1e-6, abs_tol=max(tolerance, 1e-9))
    return bool(read == written) and type(read) is type(written)


class CommandRouter:
    def __init__(
        self,
        compiled: CompiledCell,
        runners: Callable[[str], DeviceRunner | None],
        audit: Audit,
        *,
        folders: Mapping[str, Path] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config: CommandsConfig = compiled.config.commands
        self.sparkplug_writes = compiled.config.sparkplug.device_writes == "allow"
        self.devices = {d.config.id: d for d in compiled.devices}
        self.runners = runners
        self.audit = audit
        store = self.config.job_store
        self.job_store = None if store is None else store if store.is_absolute() else compiled.path.parent / store
        # device -> its job folder's running/ (cellctl/commands/folder.py): the files the
        # folder's job_start commands name, and the consent for that source
        self.folders: dict[str, Path] = dict(folders or {})
        self.limiter = RateLimiter(clock)
        self.memory = RequestMemory(self.config.idempotency_window, clock=clock)
        n = self.config.max_queued_per_device
        self.queues: dict[str, asyncio.Queue[tuple[Command, CommandResult, Reply | None]]] = {
            d: asyncio.Queue(maxsize=n) for d in self.devices
        }
        self._legacy = {d: _legacy_policy(dev) for d, dev in self.devices.items()}
        self._tg: asyncio.TaskGroup | None = None
        self._workers: dict[str, asyncio.Task[None]] = {}

    # -- intake (synchronous) --------------------------------------------------------------

    def submit(self, cmd: Command, reply: Reply | None = None) -> CommandResult:
        """Take one command; return where it stands now (final unless `accepted`). The
        reply callback gets every state it reaches from here, the first one included."""
        first = self.memory.get(cmd.request_id)
        if first is not None:
            result = first.again()
            self.audit.repeat(cmd, result)
            if reply is not None:
                reply(result)
            return result
        received = cmd.received_ms
        try:
            self._check(cmd)
        except Refusal as exc:
            return self._finish(cmd, self._refused(cmd, exc), reply)
        result = CommandResult(
            cmd.request_id, cmd.device_id, cmd.kind, "accepted", received, accepted_ms=now_ms(),
            validate_only=cmd.validate_only,
        )
        try:
            self.queues[cmd.device_id].put_nowait((cmd, result, reply))
        except asyncio.QueueFull:
            busy = Refusal("busy", f"device {cmd.device_id!r}: {self.config.max_queued_per_device} commands wait already")
            return self._finish(cmd, self._refused(cmd, busy), reply)
        self.memory.put(result)
        self.audit.accepted()
        if reply is not None:
            reply(result)
        return result

    def refuse(self, cmd: Command, refusal: Refusal, reply: Reply | None = None) -> CommandResult:
        """A source refuses a command before routing it (retained, malformed): audited
        the same way, but not remembered (its id may not even be its own)."""
        return self._finish(cmd, self._refused(cmd, refusal), reply, remember=False)

    def _refused(self, cmd: Command, exc: Refusal) -> CommandResult:
        return CommandResult(
            cmd.request_id, cmd.device_id, cmd.kind, "refused", cmd.received_ms, reason=exc.reason,
            message=str(exc), finished_ms=now_ms(), validate_only=cmd.validate_only,
        )

    def _policy(self, cmd: Command) -> DevicePolicy:
        if cmd.device_id not in self.devices:
            raise Refusal("unknown_device", f"no device {cmd.device_id!r} in this cell")
        if cmd.source.channel == "folder":
            return self._folder_policy(cmd)
        if self.config.enabled:
            policy = self.config.devices.get(cmd.device_id)
            if policy is None:
                raise Refusal("not_allowed", f"device {cmd.device_id!r} takes no commands (commands.devices)")
            return policy
        if cmd.source.channel == "sparkplug" and self.sparkplug_writes and cmd.kind == "write":
            return self._legacy[cmd.device_id]
        raise Refusal("disabled", "commands are disabled (commands.enabled)")

    def _folder_policy(self, cmd: Command) -> DevicePolicy:
        """The job folder's own consent: its configuration allows `job_start` from it,
        whatever `commands.enabled` says; the device's declared policy, when it has one,
        adds its interlocks and rate limits (the device's and job_start's)."""
        if cmd.device_id not in self.folders:
            raise Refusal("not_allowed", f"device {cmd.device_id!r} has no job folder")
        if cmd.kind != "job_start":
            raise Refusal("not_allowed", f"the job folder only starts jobs, not {cmd.kind!r}")
        declared = self.config.devices.get(cmd.device_id) or DevicePolicy()
        start = declared.commands.get("job_start") or CommandPolicy()
        return declared.model_copy(update={"commands": {**declared.commands, "job_start": start}})

    def _declared(self, cmd: Command) -> DevicePolicy | None:
        """The device's policy as the config declares it, if it applies to this source."""
        if cmd.source.channel == "folder":
            return self._folder_policy(cmd)
        return self.config.devices.get(cmd.device_id) if self.config.enabled else None

    def _check(self, cmd: Command) -> None:
        if cmd.expires_ms is not None and cmd.expires_ms < now_ms():
            raise Refusal("expired", f"the command expired at {cmd.expires_ms}")
        policy = self._policy(cmd)
        dev = self.devices[cmd.device_id]
        limits = [(cmd.device_id, policy.rate_limit)] if policy.rate_limit else []
        if cmd.kind == "write":
            point_id = cmd.args.get("point")
            point = next((p for p in dev.points if p.id == point_id), None)
            if point is None or point.access == "r":
                raise Refusal("not_writable", f"device {cmd.device_id!r} has no writable point {point_id!r}")
            pp = policy.points.get(point.id)
            if pp is None:
                raise Refusal("not_allowed", f"device {cmd.device_id!r}: point {point.id!r} is not on the allow-list")
            check_write(cmd.device_id, point, pp, cmd.args.get("value"))
            if pp.rate_limit:
                limits.append((f"{cmd.device_id}/{point.id}", pp.rate_limit))
        else:
            name = str(cmd.args.get("method")) if cmd.kind == "call" else cmd.kind
            if cmd.kind == "call":
                method = dev.profile.commands.get(name)
                if method is None:
                    raise Refusal("unknown_command", f"device {cmd.device_id!r} declares no command {name!r}")
            cp = policy.commands.get(name)
            if cp is None:
                raise Refusal("not_allowed", f"device {cmd.device_id!r}: command {name!r} is not on the allow-list")
            if cmd.kind == "call":
                call_args(cmd.device_id, name, dev.profile.commands[name], cmd.args.get("args", {}))
            elif cmd.kind == "job_start":
                self._check_job(cmd, dev)
            if cp.rate_limit:
                limits.append((f"{cmd.device_id}/{name}", cp.rate_limit))
        full = self.limiter.allow(limits)
        if full is not None:
            raise Refusal("rate_limited", f"rate limit of {full!r} reached")

    def _check_job(self, cmd: Command, dev: CompiledDevice) -> None:
        name, program = cmd.args.get("name"), cmd.args.get("program")
        if not isinstance(name, str) or not name or "/" in name or name.startswith(".") or len(name) > 255:
            raise Refusal("invalid", f"job name must be a plain file name, got {name!r}")
        if "lots" in cmd.args:
            check_lots(cmd.device_id, dev, cmd.args["lots"])
        if cmd.source.channel == "folder":
            if program is not None or dev.profile.jobs is not None:
                raise Refusal("not_supported", f"device {cmd.device_id!r} runs no programs from a folder")
            if not (self.folders[cmd.device_id] / name).is_file():
                raise Refusal("unknown_job", f"no job {name!r} in the job folder")
            return
        if len(name) > 128:
            raise Refusal("invalid", f"job name must be a plain file name, got {name!r}")
        if program is not None:
            if not isinstance(program, (str, bytes)):
                raise Refusal("wrong_type", f"job {name!r}: 'program' must be a string")
            size = len(program.encode() if isinstance(program, str) else program)
            if size > self.config.max_program_bytes:
                raise Refusal(
                    "too_large", f"job {name!r}: program of {size} bytes (at most {self.config.max_program_bytes})"
                )
            if dev.profile.jobs is not None:
                raise Refusal("not_supported", f"device {cmd.device_id!r} starts jobs by name only")
        elif dev.profile.jobs is None and (self.job_store is None or not (self.job_store / name).is_file()):
            raise Refusal("unknown_job", f"no job {name!r} in the job store")

    def _finish(
        self, cmd: Command, result: CommandResult, reply: Reply | None, *, remember: bool = True
    ) -> CommandResult:
        if remember:
            self.memory.put(result)
        self.audit.final(cmd, result)
        if reply is not None:
            try:
                reply(result)
            except Exception as exc:  # a source's reply path must not stop the router
                log.exception("command_reply_failed", error=repr(exc), id=cmd.request_id)
        return result

    # -- execution (one worker per device) ------------------------------------------------------

    async def run(self) -> None:
        """Run the device workers until cancelled."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            for device_id, queue in self.queues.items():
                self._workers[device_id] = tg.create_task(self._worker(queue), name=f"commands:{device_id}")

    def update_devices(self, compiled: CompiledCell) -> None:
        """A reload changed the devices (the `commands:` section itself did not change, or
        the daemon would have restarted its sessions): validate against the new profiles,
        give added devices a worker, stop the workers of removed ones."""
        self.devices = {d.config.id: d for d in compiled.devices}
        self._legacy = {d: _legacy_policy(dev) for d, dev in self.devices.items()}
        for device_id in [d for d in self.queues if d not in self.devices]:
            del self.queues[device_id]
            task = self._workers.pop(device_id, None)
            if task is not None:
                task.cancel()
        for device_id in self.devices:
            if device_id not in self.queues:
                queue: asyncio.Queue[tuple[Command, CommandResult, Reply | None]] = asyncio.Queue(
                    maxsize=self.config.max_queued_per_device
                )
                self.queues[device_id] = queue
                if self._tg is not None:
                    self._workers[device_id] = self._tg.create_task(self._worker(queue), name=f"commands:{device_id}")

    async def _worker(self, queue: asyncio.Queue[tuple[Command, CommandResult, Reply | None]]) -> None:
        while True:
            cmd, accepted, reply = await queue.get()
            try:
                result = await self._execute(cmd, accepted)
            except Exception as exc:  # the boundary: nothing a driver does ends the daemon
                log.exception("command_error", id=cmd.request_id, error=repr(exc))
                result = self._failed(accepted, "error", f"internal error: {exc!r}")
            self._finish(cmd, result, reply)

    def _conditions(self, cmd: Command) -> list[Condition]:
        policy = self._declared(cmd)
        if policy is None:
            return []
        out = list(policy.interlocks)
        if cmd.kind == "write":
            pp = policy.points.get(str(cmd.args.get("point")))
            out += pp.interlocks if pp else []
        else:
            cp: CommandPolicy | None = policy.commands.get(str(cmd.args.get("method")) if cmd.kind == "call" else cmd.kind)
            out += cp.interlocks if cp else []
        return out

    def _failed(self, accepted: CommandResult, reason: FailureReason, message: str, **extra: Any) -> CommandResult:
        return _with(accepted, state="failed", reason=reason, message=message, finished_ms=now_ms(), **extra)

    async def _execute(self, cmd: Command, accepted: CommandResult) -> CommandResult:
        runner = self.runners(cmd.device_id)
        if runner is None:
            return self._failed(accepted, "unavailable", f"device {cmd.device_id!r} is not running")
        problem = interlock_problem(self._conditions(cmd), runner.snapshot())
        if problem is not None:
            return _with(
                accepted, state="refused", reason="interlock", message=f"interlock: {problem}", finished_ms=now_ms()
            )
        if cmd.validate_only:
            return _with(accepted, state="done", finished_ms=now_ms())
        try:
            async with asyncio.timeout(self.config.execute_timeout):
                return await self._run(cmd, accepted, runner)
        except Refusal as exc:
            return _with(accepted, state="refused", reason=exc.reason, message=str(exc), finished_ms=now_ms())
        except WriteRejected as exc:
            return self._failed(accepted, "rejected", exc.reason)
        except DeviceUnavailable as exc:
            return self._failed(accepted, "unavailable", exc.reason)
        except TimeoutError:
            return self._failed(accepted, "timeout", f"no answer within {self.config.execute_timeout:g} s")
        except (ValueError, RuntimeError) as exc:  # the driver refused before sending (bad job, not ready)
            return self._failed(accepted, "rejected", str(exc))

    async def _run(self, cmd: Command, accepted: CommandResult, runner: DeviceRunner) -> CommandResult:
        dev = self.devices[cmd.device_id]
        if cmd.kind == "write":
            return await self._write(cmd, accepted, runner, dev)
        conn = runner.conn
        if conn is None:
            raise DeviceUnavailable(f"device {cmd.device_id!r} is not connected")
        if cmd.kind == "call" or (cmd.kind == "job_start" and dev.profile.jobs is not None):
            if not isinstance(conn, Caller):
                raise Refusal("not_supported", f"driver {dev.config.driver!r} cannot call methods")
            if cmd.kind == "call":
                name, named = str(cmd.args["method"]), cmd.args.get("args", {})
            else:
                assert dev.profile.jobs is not None
                name, named = dev.profile.jobs.start, {dev.profile.jobs.name_arg: cmd.args["name"]}
            method = dev.profile.commands[name]
            with _job_lots(cmd, runner):
                outputs = await conn.call(dict(method.address), call_args(cmd.device_id, name, method, named))
            result = {n: _plain(v) for n, v in zip(method.results, outputs, strict=False)}
            return _with(accepted, state="done", finished_ms=now_ms(), result=result)
        if not isinstance(conn, JobControl):
            raise Refusal("not_supported", f"driver {dev.config.driver!r} cannot run jobs")
        if cmd.kind == "job_start":
            name, program = str(cmd.args["name"]), cmd.args.get("program")
            if cmd.source.channel == "folder":
                content = await asyncio.to_thread((self.folders[cmd.device_id] / name).read_bytes)
            elif program is None:
                assert self.job_store is not None
                content = await asyncio.to_thread((self.job_store / name).read_bytes)
            else:
                content = program.encode() if isinstance(program, str) else program
            with _job_lots(cmd, runner):
                await conn.job_start(name, content)
        elif cmd.kind == "job_pause":
            await conn.job_pause()
        elif cmd.kind == "job_resume":
            await conn.job_resume()
        else:
            await conn.job_cancel()
        return _with(accepted, state="done", finished_ms=now_ms())

    async def _write(
        self, cmd: Command, accepted: CommandResult, runner: DeviceRunner, dev: CompiledDevice
    ) -> CommandResult:
        point_id, value = str(cmd.args["point"]), cmd.args["value"]
        await runner.write(point_id, value)
        policy = (self.config.devices.get(cmd.device_id) if self.config.enabled else None) or self._legacy[
            cmd.device_id
        ]
        pp = policy.points.get(point_id)
        if pp is None or pp.readback == "none":
            return _with(accepted, state="done", finished_ms=now_ms())
        point = next(p for p in dev.points if p.id == point_id)
        read: Any = None
        deadline = time.monotonic() + self.config.readback_timeout
        for _ in range(1000):  # bounded: one reading each, within the deadline
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                async with asyncio.timeout(left):
                    await runner.next_reading()
            except TimeoutError:
                break
            read, good = runner.point_value(point_id)
            if good and same_value(point, value, read):
                return _with(accepted, state="done", finished_ms=now_ms(), readback=read)
        return self._failed(
            accepted,
            "readback_mismatch",
            f"device {cmd.device_id!r}: point {point_id!r}: wrote {value!r}, the device reports {read!r}",
            readback=read,
        )


def check_lots(device_id: str, dev: CompiledDevice, lots: Any) -> None:
    """A `job_start`'s `lots`: {material: lot id}, materials the device's profile declares
    for its jobs, lot ids of 1-64 printable characters (as the device config's `lots`)."""
    if not isinstance(lots, Mapping):
        raise Refusal("invalid", f"args.lots: expected an object {{material: lot}}, got {lots!r}"[:300])
    known = dev.profile.job.materials if dev.profile.job is not None else {}
    for material, lot in lots.items():
        if material not in known:
            declared = ", ".join(sorted(known)) or "none"
            message = f"args.lots.{material}: device {device_id!r} has no job material {material!r}"
            raise Refusal("invalid", f"{message} (declared: {declared})"[:300])
        if not isinstance(lot, str) or not 1 <= len(lot) <= MAX_LOT_CHARS or not lot.isprintable():
            raise Refusal(
                "invalid", f"args.lots.{material}: a lot id is 1-{MAX_LOT_CHARS} printable characters, got {lot!r}"[:300]
            )


@contextmanager
def _job_lots(cmd: Command, runner: DeviceRunner) -> Iterator[None]:
    """The job a `job_start` starts takes the command's lots (its record and events carry
    them); a start that fails leaves them to no job."""
    lots, jobs, name = cmd.args.get("lots"), runner.jobs, str(cmd.args["name"])
    if not lots or jobs is None:
        yield
        return
    jobs.expect_lots(name, lots)
    try:
        yield
    except BaseException:
        jobs.forget_lots(name)
        raise


def _with(r: CommandResult, **changes: Any) -> CommandResult:
    return replace(r, **changes)


def _plain(value: Any) -> Any:
    """A method result as JSON can carry it."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)

