"""`make run` end to end: the launcher brings up all five services on a bare machine
(its own Postgres under the data dir), each reports SERVING and lists its aivera services
through reflection, a service that exits is restarted while the rest stays up, and Ctrl-C
leaves no process behind — Postgres included."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.devpg import free_port
from tests.helpers.faults import kill

EXPECTED = {
    "auth": {
        "aivera.auth.v1.AuthService",
        "aivera.auth.v1.AuthAdminService",
        "aivera.auth.v1.AuthInternalService",
    },
    "storage": {"aivera.storage.v1.StorageService"},
    "rag": {"aivera.rag.v1.RagService"},
    "chat": {"aivera.chat.v1.ChatService", "aivera.chat.v1.PromptAdminService"},
    "training": {
        "aivera.training.v1.TrainingService",
        "aivera.training.v1.DatasetService",
        "aivera.training.v1.ModelService",
        "aivera.training.v1.CloneService",
        "aivera.training.v1.NotificationService",
    },
}


def _reflected(port: int) -> set[str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
        stub = reflection_pb2_grpc.ServerReflectionStub(chan)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        for resp in stub.ServerReflectionInfo(iter([req]), timeout=10):
            return {s.name for s in resp.list_services_response.service}
    return set()


def _serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
        resp = health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


def _grpc_web_status(port: int, method: str) -> str:
    """grpc-status of an empty-request gRPC-web call (binary mode, trailers frame)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/{method}",
        data=b"\x00\x00\x00\x00\x00",
        headers={"Content-Type": "application/grpc-web+proto", "X-Grpc-Web": "1"},
        method="POST",
    )
    body = b""
    for _ in range(50):
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                body = resp.read()
            break
        except OSError:
            time.sleep(0.2)
    while body:
        flag, length = body[0], int.from_bytes(body[1:5], "big")
        frame, body = body[5 : 5 + length], body[5 + length :]
        if flag & 0x80:
            trailers = dict(
                line.split(":", 1) for line in frame.decode().strip().split("\r\n") if line
            )
            return trailers.get("grpc-status", "").strip()
    return ""


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,ppid"], capture_output=True, text=True).stdout
    pairs = [tuple(map(int, line.split())) for line in out.splitlines()[1:]]
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in pairs if pp == parent]
        found += kids
        frontier += kids
    return found


def _pid_of(root: int, module: str) -> int:
    """The launcher's child running `python -m <module>`."""
    for pid in _children_of(root):
        with contextlib.suppress(OSError):
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if module.encode() in args:
                return pid
    raise AssertionError(f"no {module} process")


def test_make_run_brings_up_the_mesh_and_stops_cleanly() -> None:
    # Not pytest's tmp_path: its parents are private to root, and Postgres runs as
    # the postgres user when the tests run as root.
    tmp_path = Path(tempfile.mkdtemp(prefix="aivera-run-"))
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(
        DATA_DIR=str(tmp_path / "data"),
        DEV_PG_PORT=str(free_port()),
        AIVERA_ENV="dev",
        GATEWAY_PORT=str(free_port()),
        GATEWAY_ADMIN_PORT=str(free_port()),
    )
    ports = {}
    for name in EXPECTED:
        ports[name] = free_port()
        env[f"{name.upper()}_PORT"] = str(ports[name])
        env[f"{name.upper()}_HTTP_PORT"] = str(free_port())
    os.chmod(tmp_path, 0o755)
    proc = subprocess.Popen(
        [sys.executable, "-m", "services"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        output = "".join(lines)
        assert "Aivera mesh is up" in output, output
        assert "Admin static token" in output
        for name, services in EXPECTED.items():
            assert _serving(ports[name]), name
            assert services <= _reflected(ports[name]), name
        # ...and the local gRPC-web gateway serves it, as a browser would call it.
        assert (
            _grpc_web_status(int(env["GATEWAY_PORT"]), "aivera.auth.v1.AuthService/GetJwks") == "0"
        )
        pg_pid_file = tmp_path / "data" / "postgres" / "postmaster.pid"
        assert pg_pid_file.exists()
        # A service that exits (here: SIGTERM to chat, as a rollout would) is started
        # again; the rest of the mesh stays up.
        chat = _pid_of(proc.pid, "services.chat")
        kill(chat, signal.SIGTERM)
        line = proc.stdout.readline()
        assert "chat exited with code 0; restarting" in line, line
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.RpcError):
                if _serving(ports["chat"]):
                    break
            time.sleep(0.5)
        assert _serving(ports["chat"]) and _pid_of(proc.pid, "services.chat") != chat
        assert _serving(ports["auth"])
        tree = _children_of(proc.pid)
        assert len(tree) >= 5
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert "postgres stopped" in rest
    time.sleep(0.5)
    alive = [pid for pid in tree if os.path.exists(f"/proc/{pid}")]
    assert alive == [], f"stray processes: {alive}"
    assert not pg_pid_file.exists()
    shutil.rmtree(tmp_path, ignore_errors=True)
