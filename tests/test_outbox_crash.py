"""kill -9 of a process that is appending and acking: after reopening, nothing it reported
as committed is lost, nothing it reported as acknowledged comes back, and transactions
are whole (a batch is all there or not at all)."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cellctl.outbox import Outbox

pytestmark = pytest.mark.timeout(90)

BATCH = 20
REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import sys
    from cellctl.outbox import Outbox, Record

    path, fsync, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ob = Outbox(path, max_bytes=1 << 30, max_age_s=86400, fsync=fsync)
    out = sys.stdout
    for i in range(1_000_000):  # bounded; the parent kills us long before
        recs = [Record(f"dev{k % 3}", f"t/dev{k % 3}", f"b{i}r{k}".encode() * 20) for k in range(batch)]
        ids = ob.append_many(recs).ids
        out.write(f"C {i} {ids.start} {ids.stop - 1}\\n")
        out.flush()
        if i >= 2 and i % 2 == 0:
            old = range(ids.start - 2 * batch, ids.start - batch)
            ob.ack(old)
            out.write(f"A {old.start} {old.stop - 1}\\n")
            out.flush()
    """
)


def run_and_kill(path: Path, fsync: str, *, min_commits: int) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), fsync, str(BATCH)], stdout=subprocess.PIPE, env=env, cwd=REPO
    )
    assert proc.stdout is not None
    lines: list[str] = []
    buf = b""
    deadline = time.monotonic() + 30
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while sum(1 for ln in lines if ln.startswith("C")) < min_commits:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError(f"child made too little progress: {lines[-3:]}, rc={proc.poll()}")
            if sel.select(timeout=1.0):
                chunk = os.read(proc.stdout.fileno(), 65536)
                buf += chunk
                *complete, buf = buf.split(b"\n")
                lines += [c.decode() for c in complete]
        os.kill(proc.pid, signal.SIGKILL)  # mid-write, most likely: the child never pauses
        proc.wait(timeout=10)
        rest = proc.stdout.read()
        complete = (buf + rest).split(b"\n")[:-1]  # a torn last line is not a report
        lines += [c.decode() for c in complete]
    finally:
        sel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return lines


@pytest.mark.parametrize("fsync", ["always", "batch"])
def test_kill_9_loses_nothing_committed_and_resends_nothing_acked(tmp_path: Path, fsync: str) -> None:
    path = tmp_path / "outbox.sqlite"
    lines = run_and_kill(path, fsync, min_commits=40)
    committed: dict[int, tuple[int, int]] = {}
    acked: set[int] = set()
    for ln in lines:
        kind, *nums = ln.split()
        if kind == "C":
            committed[int(nums[0])] = (int(nums[1]), int(nums[2]))
        else:
            acked.update(range(int(nums[0]), int(nums[1]) + 1))
    reported = {i for a, b in committed.values() for i in range(a, b + 1)}

    with Outbox(path, max_bytes=1 << 30, max_age_s=86400) as ob:
        rows = ob.pending(1_000_000)
    ids = [m.id for m in rows]
    assert ids == sorted(ids)
    present = set(ids)
    assert reported - acked <= present, "a committed, unacknowledged message was lost"
    assert not (acked & present), "an acknowledged message came back"
    # content intact and in order per stream
    for batch_no, (first, _) in committed.items():
        for k in range(BATCH):
            row_id = first + k
            if row_id in present:
                m = rows[ids.index(row_id)]
                assert m.payload == f"b{batch_no}r{k}".encode() * 20
                assert m.stream == f"dev{k % 3}"
    # what the child committed but could not report before dying is whole batches only
    last_reported = max(reported)
    unreported = [i for i in ids if i > last_reported]
    assert len(unreported) in (0, BATCH)
