"""`make run`: the whole mesh on one machine.

Starts a local Postgres under .data/ when DATABASE_URL is unset, generates development
secrets once (kept in .data/dev-secrets.json, mode 0600), starts the five services, a
training worker and the local gRPC-web gateway as child processes, waits until they
report SERVING, and prints what runs where. A child that exits is started again (with a
growing delay while it keeps failing), so one service's restart does not stop the mesh.
Ctrl-C (or SIGTERM) stops every child and the Postgres it started; children also die with
this process (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import ports
from services.common.devpg import LocalPostgres
from services.common.identity import client_entry

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("DATA_DIR", ROOT / ".data")).resolve()
DEV_PG_PORT = int(os.environ.get("DEV_PG_PORT", "55432"))

DEFAULT_PORTS = {name: (p.grpc, p.http) for name, p in ports.SERVICES.items()}


def _port(var: str, default: int) -> int:
    return int(os.environ.get(var, default))


# name → (module args, grpc port, http port); ports follow the services' own env vars.
SERVICES: dict[str, tuple[list[str], int, int]] = {
    name: (
        [f"services.{name}"],
        _port(f"{name.upper()}_PORT", grpc_port),
        _port(f"{name.upper()}_HTTP_PORT", http_port),
    )
    for name, (grpc_port, http_port) in DEFAULT_PORTS.items()
}
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


# Which dev secret each process runs with (the worker has its own, as in deploy/k8s).
SERVICE_SECRET_OF = {
    name: f"SERVICE_SECRET_{name.upper().replace('-', '_')}"
    for name in ("chat", "rag", "storage", "training", "training-worker")
}


def service_clients(values: dict[str, str]) -> str:
    """AUTH_SERVICE_CLIENTS for the dev secrets: `<service>:<sha256>` per workload."""
    return ",".join(
        client_entry(name.removesuffix("-worker"), values[key])
        for name, key in SERVICE_SECRET_OF.items()
    )


def dev_secrets() -> dict[str, str]:
    """Secrets for local use only, generated on the first run and reused after."""
    path = DATA / "dev-secrets.json"
    if path.exists():
        values = dict(json.loads(path.read_text()))
        if all(key in values for key in SERVICE_SECRET_OF.values()):
            return values
        path.unlink()  # from before per-service credentials: make a new set
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    values = {
        "AIVERA_BOOTSTRAP_ADMIN_TOKEN": "avs_" + secrets.token_urlsafe(32),
        "JWT_PRIVATE_KEYS": pem,
        "MASTER_ENCRYPTION_KEY": "v1:" + base64.urlsafe_b64encode(os.urandom(32)).decode(),
    }
    # One credential per workload (services.common.identity); auth holds their SHA-256s.
    for workload in SERVICE_SECRET_OF.values():
        values[workload] = "svc_" + secrets.token_urlsafe(32)
    DATA.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(values, indent=2))
    return values


def wait_serving(port: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
        stub = health_pb2_grpc.HealthStub(chan)
        while time.monotonic() < end:
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass  # not listening yet: poll again
            time.sleep(0.3)
    return False


def main() -> int:
    DATA.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    dev = dev_secrets()
    for key, value in dev.items():
        if key not in SERVICE_SECRET_OF.values():
            env.setdefault(key, value)
    env.setdefault("AUTH_SERVICE_CLIENTS", service_clients(dev))
    env.setdefault("AIVERA_ENV", "dev")
    env.setdefault("GRPC_HOST", "127.0.0.1")
    env.setdefault("HTTP_HOST", "127.0.0.1")
    env.setdefault("GATEWAY_HOST", "127.0.0.1")  # the dev gateway: this machine only
    # Signed file URLs on the gateway's origin (it routes /files/ to storage's HTTP port):
    # the console at http://127.0.0.1:8080/ uploads and downloads without CORS.
    env.setdefault(
        "STORAGE_PUBLIC_URL", f"http://127.0.0.1:{env.get('GATEWAY_PORT', ports.GATEWAY_PUBLIC)}"
    )
    env.setdefault("DATA_DIR", str(DATA))
    env["PYTHONUNBUFFERED"] = "1"
    for name, (_, port, _) in SERVICES.items():
        env.setdefault(f"{name.upper()}_ADDR", f"127.0.0.1:{port}")

    pg: LocalPostgres | None = None
    if "DATABASE_URL" not in os.environ:
        pg = LocalPostgres(DATA / "postgres", DEV_PG_PORT)
        print(f"postgres: starting local cluster in {pg.datadir} on 127.0.0.1:{DEV_PG_PORT}")
        pg.start()
        env["DATABASE_URL"] = pg.create_database("aivera")

    logs = DATA / "logs"
    logs.mkdir(exist_ok=True)
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    commands: dict[str, list[str]] = {}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def spawn(name: str, args: list[str]) -> None:
        out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child
        own = env
        if name in SERVICE_SECRET_OF:
            own = {**env, "AIVERA_SERVICE_SECRET": dev[SERVICE_SECRET_OF[name]]}
        proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=ROOT,
            env=own,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
        )
        commands[name] = args
        children[:] = [(n, p) for n, p in children if n != name]
        children.append((name, proc))

    try:
        for name, (args, _, _) in SERVICES.items():
            spawn(name, args)
        if (ROOT / "services" / "training" / "worker.py").exists():
            spawn("training-worker", ["services.training", "worker"])
        if (ROOT / "gateway" / "__main__.py").exists():
            spawn("gateway", ["gateway"])

        ok = True
        for name, (_, port, _) in SERVICES.items():
            serving = wait_serving(port, 120)
            ok = ok and serving
            if not serving:
                print(f"  {name}: not SERVING; see {logs / (name + '.log')}")
        print()
        print("Aivera mesh" + (" is up:" if ok else " started with problems:"))
        for name, (_, port, http) in SERVICES.items():
            print(f"  {name:<9} grpc 127.0.0.1:{port}   http 127.0.0.1:{http}/metrics")
        if any(n == "gateway" for n, _ in children):
            gw, gw_admin = (
                env.get("GATEWAY_PORT", str(ports.GATEWAY_PUBLIC)),
                env.get("GATEWAY_ADMIN_PORT", str(ports.GATEWAY_ADMIN)),
            )
            print(f"  gateway   gRPC-web http://127.0.0.1:{gw}  (admin 127.0.0.1:{gw_admin})")
            print(f"  console   http://127.0.0.1:{gw}/  (built by make setup into web/dist)")
        if pg is not None:
            print(f"  postgres  {pg.dsn('aivera')}")
        print(f"  logs      {logs}/")
        admin = env.get("AIVERA_BOOTSTRAP_ADMIN_TOKEN", "")
        print(f"\nAdmin static token (local use only): {admin}")
        print("Ctrl-C stops everything.")

        # A child that exits (a crash, a SIGTERM of its own) is started again, with a
        # growing delay while it keeps failing fast; the rest of the mesh runs on.
        restarts: dict[str, tuple[int, float]] = {}  # name → (failures in a row, start)
        while not stopping:
            for name, proc in list(children):
                if proc.poll() is None:
                    continue
                failures, started = restarts.get(name, (0, 0.0))
                failures = 1 if time.monotonic() - started > 60 else failures + 1
                delay = min(0.5 * 2 ** (failures - 1), 30.0)
                print(
                    f"{name} exited with code {proc.returncode}; restarting in {delay:.1f}s "
                    f"(see {logs}/{name}.log)",
                    flush=True,
                )
                end = time.monotonic() + delay
                while not stopping and time.monotonic() < end:
                    time.sleep(0.1)
                if stopping:
                    break
                spawn(name, commands[name])
                restarts[name] = (failures, time.monotonic())
            time.sleep(0.5)
    finally:
        print("\nstopping...")
        for _, proc in children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 25
        for _, proc in children:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if pg is not None:
            pg.stop()
            print("postgres stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
