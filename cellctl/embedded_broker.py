"""The demo's fallback broker when mosquitto is not installed: amqtt, a pure-Python MQTT
3.1.1 broker, run as its own process (`python -m cellctl.embedded_broker PORT`) so it is
started and stopped by PID like mosquitto. Loopback only, anonymous, for demos only:
it is much slower than mosquitto and not meant for production or benchmarks.
Needs the optional extra: pip install 'cellctl[embedded-broker]'."""

from __future__ import annotations

import asyncio
import signal
import sys


async def serve(port: int) -> None:
    from amqtt.broker import Broker

    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening 127.0.0.1:{port}", flush=True)
    await stop.wait()
    await broker.shutdown()


def main() -> None:
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit("usage: python -m cellctl.embedded_broker PORT")
    asyncio.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
