"""The Writer's control points and the job folder, at device level."""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from cellctl_gcode.device import open_device
from cellctl_gcode.job import JobState
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
        (job_dir / "b.nc").write_text("\n".join(grbl_job(2000, seed=41)))
        (job_dir / "a.nc").write_text("\n".join(grbl_job(20, seed=42)))
        await dev.write(idx["control_start"], "b.nc")  # b first, although a is older
        await until(lambda: dev.job is not None and dev.job.name == "b.nc" and dev.job.acked > 10, what="b.nc runs")
        job = dev.job
        assert job is not None
        await dev.write(idx["control_pause"], True)
        assert job.state == JobState.PAUSED
        await dev.write(idx["control_resume"], True)
        assert job.state == JobState.RUNNING
        await dev.write(idx["control_cancel"], True)
        assert job.state == JobState.CANCELLED
        await until((job_dir / "cancelled" / "b.nc").exists, what="b.nc filed as cancelled")
        await until((job_dir / "done" / "a.nc").exists, what="a.nc ran next")
        with pytest.raises(ValueError, match="field 'state' is read-only"):
            await dev.write(idx["state"], "Run")
        with pytest.raises(ValueError, match=r"job name must be a plain file name inside job_dir, got '\.\./x\.nc'"):
            await dev.write(idx["control_start"], "../x.nc")
        with pytest.raises(ValueError, match=r"no job 'nothing\.nc' waiting in"):
            await dev.write(idx["control_start"], "nothing.nc")


async def test_job_folder_files_results_and_never_restarts_an_interrupted_job(tmp_path: Path) -> None:
    job_dir = tmp_path / "jobs"
    (job_dir / "running").mkdir(parents=True)
    (job_dir / "running" / "half.nc").write_text("G0X1\n")  # a job cellctl was streaming when it died
    (job_dir / "notes.txt").write_text("not a job")
    (job_dir / "bad.nc").write_text("G1X" + "1" * 90 + "\n")
    async with GrblSim(speedup=math.inf) as sim, open_device(ctx(sim.path, job_dir=str(job_dir), dialect="grbl")):
        await until((job_dir / "failed" / "half.nc.result.json").exists, what="interrupted job filed")
        await until((job_dir / "failed" / "bad.nc.result.json").exists, what="bad job refused")
        tmp = tmp_path / "good.part"
        tmp.write_text("\n".join(grbl_job(100, seed=43)))
        os.replace(tmp, job_dir / "good.nc")
        # half.nc was filed before any job could start: had it been restarted, it would have
        # run before good.nc, so good.nc's result is the event that proves it was not
        await until((job_dir / "done" / "good.nc.result.json").exists, what="good job done")
    half = orjson.loads((job_dir / "failed" / "half.nc.result.json").read_bytes())
    assert half["error"].startswith("interrupted")
    bad = orjson.loads((job_dir / "failed" / "bad.nc.result.json").read_bytes())
    assert bad["error"] == "job 'bad.nc': line 1 is 93 characters long; GRBL's line buffer holds 80"
    assert (job_dir / "notes.txt").exists()  # not a job suffix: left alone
    assert "G0X1" not in sim.executed


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
