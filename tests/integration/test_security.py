"""Running a server for a team: API keys (right, wrong, none), TLS and mutual TLS handshakes
with throwaway certificates, message size and stream limits, and deadlines."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stateward.client import Client
from stateward.exceptions import ResourceExhausted, ServerUnavailable, Unauthenticated
from stateward.states import ResultData, State, StateType
from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import orchestration_pb2_grpc
from tests.integration.test_damaged_databases import start as start_refused
from tests.support import ROOT, ServerProcess, wait_until

KEY = "s3cret-team-key"


# --- API keys ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory):
    server = ServerProcess(
        tmp_path_factory.mktemp("auth") / "auth.db", env={"STATEWARD_API_KEY": KEY}
    ).start()
    yield server
    server.stop()


def test_the_right_key_is_let_in(keyed_server):
    with Client(keyed_server.target, api_key=KEY) as client:
        run = client.create_flow_run("authed", state=State(StateType.PENDING))
        assert client.get_flow_run(run.id).flow_name == "authed"


def test_a_missing_or_wrong_key_is_unauthenticated_and_changes_nothing(keyed_server):
    stub = keyed_server.stub()
    request = pb.CreateFlowRunRequest()
    request.flow_run.flow_name = "intruder"
    for metadata, words in (
        ((), "needs an API key"),
        ((("authorization", "Bearer wrong-key"),), "not this server's"),
        ((("authorization", KEY),), "not this server's"),  # no "Bearer " prefix
    ):
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateFlowRun(request, metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert words in caught.value.details()
        with pytest.raises(grpc.RpcError) as streamed:
            next(stub.WatchTransitions(pb.WatchTransitionsRequest(), metadata=metadata))
        assert streamed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with Client(keyed_server.target, api_key=KEY) as client:
        assert list(client.list_flow_runs(flow_names=["intruder"])) == []
    with Client(keyed_server.target, api_key="wrong") as client, pytest.raises(Unauthenticated):
        client.create_flow_run("intruder")


def test_the_health_check_needs_no_key(keyed_server):
    health = health_pb2_grpc.HealthStub(keyed_server.channel())
    answer = health.Check(health_pb2.HealthCheckRequest())
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert "an API key is required" in keyed_server.output()


def test_the_sdk_and_the_cli_send_the_key_from_the_environment(keyed_server, tmp_path):
    env = {**os.environ, "STATEWARD_API_URL": keyed_server.target, "STATEWARD_API_KEY": KEY}
    program = (
        "from stateward import flow\n@flow(name='keyed-sdk')\ndef f():\n    return 1\nprint(f())\n"
    )
    sdk = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert sdk.returncode == 0 and sdk.stdout == "1\n", sdk.stderr
    cli = subprocess.run(
        [sys.executable, "-m", "stateward", "flow-run", "ls", "--flow", "keyed-sdk"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert cli.returncode == 0 and "keyed-sdk" in cli.stdout
    env.pop("STATEWARD_API_KEY")
    refused = subprocess.run(
        [sys.executable, "-m", "stateward", "flow-run", "ls"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert refused.returncode == 1 and "needs an API key" in refused.stderr


def test_without_a_key_the_server_says_it_listens_on_loopback_only(server):
    assert server.says("no API key") and server.says("loopback only")


def test_listening_beyond_loopback_without_a_key_is_warned_about(tmp_path):
    server = ServerProcess(tmp_path / "open.db", args=["--host", "0.0.0.0"]).start()
    try:
        # Said after the ready line (which `start` waits for), so perhaps not yet written.
        wait_until(
            lambda: "WARNING: no API key, and listening on 0.0.0.0" in server.output(),
            what="the warning",
        )
    finally:
        server.stop()


# --- TLS -----------------------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    hosts: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA, a server certificate for localhost/127.0.0.1, and a client certificate."""
    folder = tmp_path_factory.mktemp("certs")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("stateward-test-ca", ca_key, None, ca=True)
    files: dict[str, Path] = {"ca": folder / "ca.pem"}
    files["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(
            f"stateward-{role}", key, (ca_cert.subject, ca_key), hosts=role == "server"
        )
        files[f"{role}_cert"] = folder / f"{role}.pem"
        files[f"{role}_key"] = folder / f"{role}.key"
        files[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, files[f"{role}_key"])
    other_key = ec.generate_private_key(ec.SECP256R1())
    files["other_ca"] = folder / "other-ca.pem"
    files["other_ca"].write_bytes(
        _certificate("someone-else", other_key, None, ca=True).public_bytes(
            serialization.Encoding.PEM
        )
    )
    return files


def tls_env(files: dict[str, Path], *, client_cert: bool = False, ca: str = "ca") -> dict[str, str]:
    env = {"STATEWARD_TLS_CA": str(files[ca])}
    if client_cert:
        env["STATEWARD_TLS_CERT"] = str(files["client_cert"])
        env["STATEWARD_TLS_KEY"] = str(files["client_key"])
    return env


def client_with(monkeypatch, target: str, env: dict[str, str]) -> Client:
    for key in ("STATEWARD_TLS_CA", "STATEWARD_TLS_CERT", "STATEWARD_TLS_KEY"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Client(target, timeout=5)


def test_a_tls_handshake(certificates, tmp_path, monkeypatch):
    args = [
        "--tls-cert",
        str(certificates["server_cert"]),
        "--tls-key",
        str(certificates["server_key"]),
    ]
    server = ServerProcess(tmp_path / "tls.db", args=args).start()
    try:
        assert server.says("transport: TLS")
        with client_with(monkeypatch, server.target, tls_env(certificates)) as client:
            run = client.create_flow_run("over-tls", state=State(StateType.PENDING))
            assert client.list_states(run.id)[0].name == "Pending"
        with client_with(monkeypatch, server.target, {}) as plain, pytest.raises(ServerUnavailable):
            plain.create_flow_run("plaintext")  # a plaintext client cannot talk to it
        untrusting = tls_env(certificates, ca="other_ca")
        with (
            client_with(monkeypatch, server.target, untrusting) as wrong,
            pytest.raises(ServerUnavailable),
        ):
            wrong.create_flow_run("untrusted")  # nor one that does not trust its CA
    finally:
        server.stop()


def test_a_mutual_tls_handshake(certificates, tmp_path, monkeypatch):
    args = [
        "--tls-cert", str(certificates["server_cert"]),
        "--tls-key", str(certificates["server_key"]),
        "--tls-client-ca", str(certificates["ca"]),
    ]  # fmt: skip
    server = ServerProcess(tmp_path / "mtls.db", args=args).start()
    try:
        assert server.says("TLS with client certificates"), server.output()
        env = tls_env(certificates, client_cert=True)
        with client_with(monkeypatch, server.target, env) as client:
            assert client.create_flow_run("mutual").flow_name == "mutual"
        anonymous_env = tls_env(certificates)
        with (
            client_with(monkeypatch, server.target, anonymous_env) as anonymous,
            pytest.raises(ServerUnavailable),
        ):
            anonymous.create_flow_run("no-client-cert")
    finally:
        server.stop()


def test_tls_settings_that_do_not_fit_are_a_clear_error(certificates, tmp_path):
    server = ServerProcess(
        tmp_path / "half.db", args=["--tls-cert", str(certificates["server_cert"])]
    )
    with pytest.raises(RuntimeError, match="needs both --tls-cert and --tls-key"):
        server.start()


def test_tls_files_that_are_wrong_are_named(certificates, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    missing = tmp_path / "missing.pem"
    cert, key = str(certificates["server_cert"]), str(certificates["server_key"])
    other_key = str(certificates["client_key"])
    for args, named in (
        (["--tls-cert", str(garbage), "--tls-key", key], f"--tls-cert {garbage}"),
        (["--tls-cert", cert, "--tls-key", str(garbage)], f"--tls-key {garbage}"),
        (["--tls-cert", cert, "--tls-key", other_key], f"--tls-key {other_key}"),
        (["--tls-cert", str(missing), "--tls-key", key], f"--tls-cert {missing}"),
        (
            ["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", str(garbage)],
            f"--tls-client-ca {garbage}",
        ),
    ):
        code, lines = start_refused(tmp_path / "tls.db", *args)
        assert code != 0 and len(lines) == 1 and named in lines[0], lines
        assert "cannot listen" not in lines[0]


# --- limits and deadlines ------------------------------------------------------------------------


def test_messages_over_the_size_limit_are_resource_exhausted(tmp_path):
    server = ServerProcess(tmp_path / "size.db", args=["--max-message-bytes", "65536"]).start()
    try:
        with Client(server.target) as client:
            run = client.create_flow_run("sized", state=State(StateType.RUNNING))
            small = State(StateType.COMPLETED, data=ResultData(json='"' + "x" * 1000 + '"'))
            big = State(StateType.COMPLETED, data=ResultData(json='"' + "x" * 100_000 + '"'))
            with pytest.raises(ResourceExhausted):
                client.set_state(run.id, big)
            assert client.list_states(run.id)[-1].type is StateType.RUNNING  # nothing written
            assert client.set_state(run.id, small).accepted
    finally:
        server.stop()


def test_the_default_limit_is_4_mib(server):
    with Client(server.target) as client:
        run = client.create_flow_run("default-size", state=State(StateType.RUNNING))
        over = State(StateType.COMPLETED, data=ResultData(json='"' + "x" * (4 * 1024 * 1024) + '"'))
        with pytest.raises(ResourceExhausted):
            client.set_state(run.id, over)


def test_deadlines_end_calls_and_streams(server):
    """A watch without a deadline streams until the client leaves: this one, given half a
    second, ends DEADLINE_EXCEEDED once that passed. The upper bound is not the deadline's
    precision but a stream that never ended: a minute, however loaded the machine."""
    stub = server.stub()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.WatchTransitions(pb.WatchTransitionsRequest(), timeout=0.5))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Not before the deadline (less the two clocks' granularity), and not never.
    assert 0.4 < time.monotonic() - started < 60


def test_streams_per_connection_are_capped(tmp_path):
    server = ServerProcess(
        tmp_path / "streams.db", args=["--max-streams-per-connection", "2"]
    ).start()
    try:
        channel = grpc.insecure_channel(server.target)
        stub = orchestration_pb2_grpc.OrchestrationServiceStub(channel)
        first = stub.WatchTransitions(pb.WatchTransitionsRequest())
        second = stub.WatchTransitions(pb.WatchTransitionsRequest())
        first.initial_metadata()
        second.initial_metadata()
        third = stub.WatchTransitions(pb.WatchTransitionsRequest(), timeout=1.0)
        with pytest.raises(grpc.RpcError) as caught:
            third.initial_metadata()  # waits for a free stream on this connection
            next(third)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        first.cancel()
        fourth = stub.WatchTransitions(pb.WatchTransitionsRequest(), timeout=5)
        assert fourth.initial_metadata() is not None  # a slot was freed
        second.cancel()
        fourth.cancel()
        channel.close()
    finally:
        server.stop()
