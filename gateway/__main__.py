"""`python -m gateway`: the local gRPC-web gateway (settings in gateway/config.py)."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from gateway.config import GatewaySettings
from gateway.proxy import Gateway
from services.common import logs, tracing


async def main() -> None:
    settings = GatewaySettings.from_env()
    logs.configure("gateway", settings.log_level)
    tracing.configure("gateway")
    gateway = Gateway(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await gateway.start()
    try:
        await stop.wait()
    finally:
        await gateway.stop()
        tracing.shutdown()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
