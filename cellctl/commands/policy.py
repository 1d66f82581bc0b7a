"""The checks the policy makes, as pure functions and small stateful helpers with an
injectable clock: value checks with no silent coercion, argument mapping, interlocks on
a device snapshot, sliding-window rate limits, and the request-id memory."""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cellctl.commands.model import CommandResult, RefusalReason
from cellctl.config.commands import Condition, PointPolicy, RateLimit
from cellctl.config.profile import ArgDef, MethodDef, PointDef
from cellctl.model import DeviceSnapshot, Quality

MAX_STRING_CHARS = 1024


class Refusal(Exception):
    """A command refused before it reached the machine: `reason` for programs, the
    message (naming the object, quoting the value) for people."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason: RefusalReason = reason


def _typed(what: str, type_: str, value: Any, max_length: int = MAX_STRING_CHARS) -> None:
    """The value has the point's or argument's type exactly (an int is a float's value
    too; nothing else is converted)."""
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "string": isinstance(value, str),
    }[type_]
    if not ok:
        raise Refusal("wrong_type", f"{what}: {value!r} is not a {type_}")
    if isinstance(value, float) and not math.isfinite(value):
        raise Refusal("out_of_range", f"{what}: {value!r} is not a finite number")
    if isinstance(value, str) and len(value) > max_length:
        raise Refusal("out_of_range", f"{what}: {len(value)} characters (at most {max_length})")


def _bounds(what: str, value: Any, low: float | None, high: float | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise Refusal("out_of_range", f"{what}: {value!r} is outside [{lo}, {hi}]")


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same kind: True is not 1, "1" is not 1; 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and bool(a == b)


def check_write(device_id: str, point: PointDef, policy: PointPolicy, value: Any) -> None:
    """Refusal unless `value` may be written to `point` under `policy`."""
    what = f"device {device_id!r}: point {point.id!r}"
    _typed(what, point.type, value)
    _bounds(what, value, point.min, point.max)
    _bounds(what, value, policy.min, policy.max)
    if policy.one_of is not None and not any(_same(v, value) for v in policy.one_of):
        raise Refusal("not_allowed_value", f"{what}: {value!r} is not one of {policy.one_of}")
    if policy.step is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        base = policy.min if policy.min is not None else 0.0
        k = (value - base) / policy.step
        if not math.isclose(k, round(k), rel_tol=0, abs_tol=1e-9):
            raise Refusal("not_allowed_value", f"{what}: {value!r} is not {base:g} + a multiple of {policy.step:g}")


def check_arg(device_id: str, method: str, arg: ArgDef, value: Any) -> None:
    what = f"device {device_id!r}: command {method!r}: argument {arg.name!r}"
    _typed(what, arg.type, value, arg.max_length)
    _bounds(what, value, arg.min, arg.max)


def call_args(device_id: str, name: str, method: MethodDef, args: Any) -> list[Any]:
    """A call's named arguments, checked and in the method's declaration order."""
    if not isinstance(args, Mapping):
        raise Refusal("invalid", f"device {device_id!r}: command {name!r}: 'args' must be an object")
    declared = {a.name for a in method.args}
    unknown = sorted(str(k) for k in args if k not in declared)
    if unknown:
        raise Refusal("invalid", f"device {device_id!r}: command {name!r} has no argument(s) {unknown}")
    out = []
    for a in method.args:
        if a.name not in args:
            raise Refusal("invalid", f"device {device_id!r}: command {name!r}: argument {a.name!r} is missing")
        check_arg(device_id, name, a, args[a.name])
        out.append(args[a.name])
    return out


def _holds(c: Condition, snap: DeviceSnapshot) -> str | None:
    """None when the condition holds, else what is wrong (for the refusal)."""
    m = snap.machine
    if c.point is not None:
        state = next((p for p in snap.points if p.id == c.point), None)
        if state is None or state.quality != Quality.GOOD:
            return f"point {c.point!r} has no good value"
        v = state.value
        if c.equals is not None and v != c.equals:
            return f"point {c.point!r} is {v!r}, needs {c.equals!r}"
        if c.one_of is not None and v not in c.one_of:
            return f"point {c.point!r} is {v!r}, needs one of {c.one_of}"
        numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
        if c.min is not None and not (numeric and v >= c.min):
            return f"point {c.point!r} is {v!r}, needs at least {c.min:g}"
        if c.max is not None and not (numeric and v <= c.max):
            return f"point {c.point!r} is {v!r}, needs at most {c.max:g}"
        return None
    if m is None:
        return "the device has no machine state"
    for name, allowed, actual in (
        ("item_state", c.item_state, m.item_state),
        ("operation_mode", c.operation_mode, m.operation_mode),
        ("execution", c.execution, m.execution),
    ):
        if allowed is not None and actual not in allowed:
            return f"{name} is {actual.value!r}, needs {[a.value for a in allowed]}"
    if c.alarms == "none" and m.alarms:
        return f"{len(m.alarms)} alarm(s) active ({m.alarms[0].code})"
    return None


def interlock_problem(conditions: Sequence[Condition], snap: DeviceSnapshot) -> str | None:
    """The first condition that does not hold, said for a person; None when all hold."""
    for c in conditions:
        problem = _holds(c, snap)
        if problem is not None:
            return problem
    return None


class RateLimiter:
    """Sliding windows per key: `allow` records an attempt only when it is allowed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._seen: dict[str, deque[float]] = {}

    def allow(self, checks: Sequence[tuple[str, RateLimit]]) -> str | None:
        """None (and every key charged) when every limit has room, else the key that has none."""
        now = self.clock()
        for key, limit in checks:
            q = self._seen.setdefault(key, deque())
            while q and q[0] <= now - limit.per:
                q.popleft()
            if len(q) >= limit.count:
                return key
        for key, _ in checks:
            self._seen[key].append(now)
        return None


class RequestMemory:
    """Results by request id for `window` seconds (bounded: the oldest go first), so a
    repeated request gets its first result and runs nothing."""

    def __init__(self, window: float, *, limit: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.limit = limit
        self.clock = clock
        self._results: OrderedDict[str, tuple[float, CommandResult]] = OrderedDict()

    def _expire(self) -> None:
        cutoff = self.clock() - self.window
        while self._results:
            key, (at, _) = next(iter(self._results.items()))
            if at > cutoff and len(self._results) <= self.limit:
                break
            del self._results[key]

    def get(self, request_id: str) -> CommandResult | None:
        self._expire()
        found = self._results.get(request_id)
        return None if found is None else found[1]

    def put(self, result: CommandResult) -> None:
        """First seen (with the time then); later states of it replace the result only."""
        found = self._results.get(result.request_id)
        at = found[0] if found is not None else self.clock()
        self._results[result.request_id] = (at, result)
        self._expire()
