"""`cellctl sim opcua`: run the simulated OPC UA machine until SIGINT/SIGTERM.

Prints one flushed line once it listens, so scripts and tests can wait for it and read
the actual port (and, when secured, where the server certificate is):

    opcua opc.tcp://127.0.0.1:4840/cellctl-sim namespace urn:cellctl:sim:opcua-machine
    opcua opc.tcp://127.0.0.1:4840/cellctl-sim namespace ... secure cert /tmp/x/server-cert.der

Fault injection while it runs: SIGHUP restarts the server on the same port (sessions
die, the address space is rebuilt); SIGUSR1 toggles a stall (connections stay open,
nothing is answered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
from pathlib import Path

import click

from cellctl_sim.opcua.server import MIN_TICK, NAMESPACE, Security, SimOpcUaServer


def _parse_range(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[float, float]:
    low, sep, high = value.partition(":")
    try:
        bounds = (float(low), float(high))
    except ValueError:
        bounds = (1.0, 0.0)
    if not sep or not bounds[0] <= bounds[1]:
        raise click.BadParameter(f"{value!r} is not LOW:HIGH with LOW <= HIGH")
    return bounds


def _parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


async def _serve(sim: SimOpcUaServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    restarts: list[asyncio.Task[None]] = []

    def restart() -> None:
        if not any(not t.done() for t in restarts):
            restarts.append(loop.create_task(sim.restart(), name="opcua-sim-restart"))

    def toggle_stall() -> None:
        if sim.stalled:
            sim.resume()
        else:
            sim.stall()
        click.echo(f"stall {'on' if sim.stalled else 'off'}", err=True)

    loop.add_signal_handler(signal.SIGHUP, restart)
    loop.add_signal_handler(signal.SIGUSR1, toggle_stall)
    async with sim:
        line = f"opcua {sim.url} namespace {NAMESPACE}"
        if sim.security is not None:
            line += f" secure cert {sim.security.cert_path}"
        click.echo(line)
        sys.stdout.flush()
        if sim.security is not None and sim.security.trust_clients:
            trust = sim.security.client_trust
            click.echo(f"client certificates: trusted in {trust.trusted_dir}, refused ones saved in "
                       f"{trust.rejected_dir}", err=True)
        await stop.wait()
        for task in restarts:
            task.cancel()


@click.command("opcua")
@click.option(
    "--listen", default="127.0.0.1:4840", show_default=True, metavar="HOST:PORT",
    help="Listen address (port 0 = any free port; the line printed has the real one).",
)
@click.option("--tick", type=click.FloatRange(min=MIN_TICK), default=0.5, show_default=True,
              help="Seconds between machine updates.")
@click.option("--seed", type=int, default=None, help="Seed for a reproducible machine.")
@click.option("--secure", is_flag=True, help="Serve Sign/SignAndEncrypt endpoints with a generated certificate.")
@click.option("--cert-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="With --secure: where the server certificate lives (kept across runs); "
                   "default a temporary directory removed at exit.")
@click.option("--user", "user", default=None, help="With --secure: require this user name...")
@click.option("--password-file", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="...with the password in this file.")
@click.option("--allow-insecure", is_flag=True, help="With --secure: also offer the unsecured endpoint.")
@click.option("--trust-clients", is_flag=True,
              help="With --secure: accept only client certificates in CERT_DIR/pki/trusted/; "
                   "refused ones are saved in CERT_DIR/pki/rejected/.")
@click.option("--setpoint-range", default="0:1000", show_default=True, metavar="LOW:HIGH", callback=_parse_range,
              help="What Process/Setpoint accepts (its EURange); other writes get BadOutOfRange.")
@click.option("--namespace-shift", type=click.IntRange(0, 100), default=0,
              help="Register N other namespaces first, so the machine's index moves.")
@click.option("--bench", "bench_items", type=click.IntRange(0, 100_000), default=0, metavar="N",
              help="Add N Int64 bench nodes, all written with a µs time stamp...")
@click.option("--bench-rate", type=click.FloatRange(min=0.1, max=1000), default=10.0, show_default=True,
              help="...this many times per second.")
@click.option("--bench-jitter", type=click.FloatRange(0, 0.99), default=0.5, show_default=True,
              help="Vary each bench period by up to this fraction (same mean rate).")
@click.option("-v", "--verbose", is_flag=True, help="Log asyncua and simulator details to stderr.")
def opcua(
    *,
    listen: str,
    tick: float,
    seed: int | None,
    secure: bool,
    cert_dir: Path | None,
    user: str | None,
    password_file: Path | None,
    allow_insecure: bool,
    trust_clients: bool,
    setpoint_range: tuple[float, float],
    namespace_shift: int,
    bench_items: int,
    bench_rate: float,
    bench_jitter: float,
    verbose: bool,
) -> None:
    """A simulated machining centre over OPC UA: item state and operation mode, counters,
    temperatures, spindle, StartJob(jobId), a writable setpoint; faults on signals."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.ERROR, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    host, port = _parse_hostport(listen)
    if (user is None) != (password_file is None):
        raise click.UsageError("--user and --password-file go together")
    if not secure and (user or cert_dir or allow_insecure or trust_clients):
        raise click.UsageError("--user, --cert-dir, --allow-insecure and --trust-clients need --secure")
    with contextlib.ExitStack() as cleanup:
        security: Security | None = None
        if secure:
            users = {user: password_file.read_text(encoding="utf-8").rstrip("\r\n")} if user and password_file else {}
            if cert_dir is None:  # a certificate for this run only, removed at exit
                cert_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="cellctl-sim-opcua-")))
            security = Security(cert_dir, users=users, allow_insecure=allow_insecure, trust_clients=trust_clients)
        sim = SimOpcUaServer(
            host=host, port=port, tick=tick, seed=seed, security=security,
            namespace_shift=namespace_shift, bench_items=bench_items, bench_rate=bench_rate,
            bench_jitter=bench_jitter, setpoint_range=setpoint_range,
        )
        try:
            asyncio.run(_serve(sim))
        except OSError as exc:
            raise click.ClickException(str(exc)) from exc
