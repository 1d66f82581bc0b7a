"""The Writer's control points and the JobControl/JobWatcher methods, at device level (the
job folder is the core's: test_gcode_folder.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from cellctl_gcode.device import open_device
from cellctl_gcode.job import Job, JobState
from cellctl_gcode.program import Program
from cellctl_sim.grbl import GrblSim
from gcode_testutil import ctx, grbl_job, points, until

pytestmark = pytest.mark.timeout(60)


async def test_control_points_pause_resume_cancel_and_start(grbl_factory: Any, tmp_path: Path) -> None:
    sim: GrblSim = await grbl_factory(speedup=50.0)
    job_dir = tmp_path / "jobs"
    job_dir.mkdir()
    pts = points("state", "control.pause", "control.resume", "control.cancel", "control.start")
    idx = {p.id: p.index for p in pts}
    async with open_device(ctx(sim.path, pts, job_dir=str(job_dir))) as dev:
        (job_dir / "b.nc").write_text("\n".join(grbl_job(20, seed=41)))
        await dev.write(idx["control_start"], "b.nc")  # the oldest file: the core's folder runs it next
        assert (job_dir / "b.nc").stat().st_mtime == 0
        job = Job(Program.from_lines(grbl_job(2000, seed=42), dialect="grbl", name="long.nc"))
        assert dev.job_not_ready() is None
        dev.start_job(job)
        assert dev.job_not_ready() is not None  # the folder holds its queue meanwhile
        await until(lambda: job.acked > 10, what="the job runs")
        await dev.write(idx["control_pause"], True)
        assert job.state == JobState.PAUSED
        await dev.write(idx["control_resume"], True)
        assert job.state == JobState.RUNNING
        await dev.write(idx["control_cancel"], True)
        assert job.state == JobState.CANCELLED
        assert (await dev.job_wait("long.nc"))["state"] == "cancelled"  # what the folder files
        with pytest.raises(LookupError):
            await dev.job_wait("never.nc")
        with pytest.raises(ValueError, match="field 'state' is read-only"):
            await dev.write(idx["state"], "Run")
        with pytest.raises(ValueError, match=r"job name must be a plain file name inside job_dir, got '\.\./x\.nc'"):
            await dev.write(idx["control_start"], "../x.nc")
        with pytest.raises(ValueError, match=r"no job 'nothing\.nc' waiting in"):
            await dev.write(idx["control_start"], "nothing.nc")


async def test_job_control_methods_for_the_command_router(grbl: GrblSim) -> None:
    async with open_device(ctx(grbl.path, dialect="grbl")) as dev:
        await dev.job_start("x.nc", b"G21 G90\nG0 X1 ; go\nG0 X2\n")
        job = dev.job
        assert job is not None
        await asyncio.wait_for(asyncio.shield(job.done), 5)
        assert job.state == JobState.COMPLETED
        assert grbl.executed[-3:] == ["G21G90", "G0X1", "G0X2"]
        with pytest.raises(ValueError, match="line 1 is 83 characters long"):
            await dev.job_start("long.nc", b"G1X" + b"1" * 80)
        await dev.job_pause()  # no job running: nothing to do
        await dev.job_resume()
        await dev.job_cancel()
