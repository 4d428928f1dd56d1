"""Real Redis topologies on free loopback ports, for tests: a Sentinel set-up (a master, a
replica, three sentinels), a Redis Cluster (three masters, three replicas) and a single server.
Any of them can speak only TLS (a private CA made here, client certificates required, for
clients, replication, sentinels and the cluster bus alike). Every process is started by the
test and killed by `stop()`."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SENTINEL_DOWN_AFTER_MS = 1000
CLUSTER_NODE_TIMEOUT_MS = 1000


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed (scripts/test.sh installs redis-server)")
    return path


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (held open together while chosen, so that one
    set-up never gets the same port twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout} s")
        time.sleep(0.1)


@dataclass
class RedisProcesses:
    """redis-server processes started by one test, all killed by `stop()`."""

    directory: Path
    password: str
    tls: TlsFiles | None = None
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(
        self, port: int, *args: str, sentinel: bool = False, password: str | None = None
    ) -> None:
        command = [_binary("redis-server")]
        if sentinel:  # a sentinel needs a config file it can rewrite
            conf = self.directory / f"sentinel-{port}.conf"
            conf.write_text("\n".join(args) + "\n")
            command += [str(conf), "--sentinel"]
            args = ()
        else:  # a replica's first full sync starts at once (Redis waits 5 s by default)
            args = ("--repl-diskless-sync-delay", "0", *args)
        log = self.directory / f"redis-{port}.log"
        listen = ["--port", str(port)]
        if self.tls is not None:  # TLS only, for clients, replication and the cluster bus
            listen = ["--port", "0", "--tls-port", str(port), *self._server_tls()]
        self.processes[port] = subprocess.Popen(
            [*command, *listen, "--bind", "127.0.0.1", "--save", "", *args],
            cwd=self.directory,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        process = self.processes[port]

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"redis on {port} exited: {log.read_text()[-2000:]}")
            return self.cli(port, "PING", password=password) == "PONG"

        eventually(answers, f"redis on {port} did not start")

    def cli(self, port: int, *command: str, password: str | None = None) -> str:
        """One command through redis-cli; its output, or "" if the server did not answer."""
        auth = ("--no-auth-warning", "-a", password or self.password)
        result = subprocess.run(
            [_binary("redis-cli"), "-p", str(port), *self._client_tls(), *auth, *command],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return result.stdout.strip()

    def _server_tls(self) -> list[str]:
        assert self.tls is not None
        return [
            *("--tls-cert-file", str(self.tls.server_cert)),
            *("--tls-key-file", str(self.tls.server_key)),
            *("--tls-ca-cert-file", str(self.tls.ca)),
            *("--tls-auth-clients", "yes", "--tls-replication", "yes", "--tls-cluster", "yes"),
        ]

    def _client_tls(self) -> list[str]:
        if self.tls is None:
            return []
        tls = self.tls
        return [
            *("--tls", "--cacert", str(tls.ca)),
            *("--cert", str(tls.client_cert), "--key", str(tls.client_key)),
        ]

    def client_env(self) -> dict[str, str]:
        """reverb-py's TLS settings for these servers (none without TLS)."""
        if self.tls is None:
            return {}
        return {
            "REDIS_SCHEME": "tls",
            "REDIS_CA_FILE": str(self.tls.ca),
            "REDIS_CERT_FILE": str(self.tls.client_cert),
            "REDIS_KEY_FILE": str(self.tls.client_key),
        }

    def wait_synced(self, replica: int) -> None:
        """Until the replica holds the master's data: one that never synced cannot take over."""
        eventually(
            lambda: "master_link_status:up" in self.cli(replica, "INFO", "replication"),
            f"the replica on {replica} did not sync",
        )

    def kill(self, port: int) -> None:
        process = self.processes.pop(port)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill(port)


class SentinelSetup(RedisProcesses):
    """A password-protected master and replica watched by three password-protected sentinels
    (quorum 2), which fail over about 1 s after the master stops answering."""

    service = "reverb-test"

    def __init__(
        self, directory: Path, password: str, sentinel_password: str, tls: bool = False
    ) -> None:
        super().__init__(directory, password, make_tls_files(directory) if tls else None)
        self.sentinel_password = sentinel_password
        self.master, self.replica, *self.sentinels = free_ports(5)

    def start_all(self) -> None:
        auth = ("--requirepass", self.password, "--masterauth", self.password)
        self.start(self.master, *auth)
        self.start(self.replica, *auth, "--replicaof", "127.0.0.1", str(self.master))
        for port in self.sentinels:
            self.start(
                port,
                f"requirepass {self.sentinel_password}",
                f"sentinel monitor {self.service} 127.0.0.1 {self.master} 2",
                f"sentinel auth-pass {self.service} {self.password}",
                f"sentinel down-after-milliseconds {self.service} {SENTINEL_DOWN_AFTER_MS}",
                f"sentinel failover-timeout {self.service} 10000",
                sentinel=True,
                password=self.sentinel_password,
            )
        self.wait_synced(self.replica)
        # A failover needs the sentinels to know each other and the replica (hello messages).
        for port in self.sentinels:
            eventually(
                lambda port=port: (
                    self._sentinel(port, "SENTINEL", "SENTINELS", self.service).count("127.0.0.1")
                    == 2
                    and "127.0.0.1" in self._sentinel(port, "SENTINEL", "REPLICAS", self.service)
                ),
                "the sentinels did not discover each other and the replica",
            )

    def _sentinel(self, port: int, *command: str) -> str:
        return self.cli(port, *command, password=self.sentinel_password)

    def master_port(self) -> int | None:
        answer = self._sentinel(
            self.sentinels[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service
        ).split()
        return int(answer[1]) if len(answer) == 2 else None

    def env(self) -> dict[str, str]:
        """The reverb-py settings for this set-up."""
        return {
            "REDIS_URL": "",
            "REDIS_SENTINELS": ",".join(f"127.0.0.1:{port}" for port in self.sentinels),
            "REDIS_SENTINEL_SERVICE": self.service,
            "REDIS_SENTINEL_PASSWORD": self.sentinel_password,
            "REDIS_PASSWORD": self.password,
            **self.client_env(),
        }

    def kill_master(self) -> None:
        self.kill(self.master)

    def wait_for_new_master(self, timeout: float = 20.0) -> None:
        """Until the sentinels have promoted the replica."""
        eventually(
            lambda: (
                self.master_port() == self.replica
                and "role:master" in self.cli(self.replica, "INFO", "replication")
            ),
            "the sentinels did not promote the replica",
            timeout,
        )


class ClusterSetup(RedisProcesses):
    """Three masters with one replica each; a master that stops answering for 1 s is replaced
    by its replica."""

    def __init__(self, directory: Path, password: str, key: str, tls: bool = False) -> None:
        super().__init__(directory, password, make_tls_files(directory) if tls else None)
        ports = free_ports(12)
        self.nodes = ports[:6]
        self._bus_ports = dict(zip(self.nodes, ports[6:], strict=True))
        self.key = key
        self.dead: int | None = None

    def start_all(self) -> None:
        for port in self.nodes:
            self.start(
                port,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-port",
                str(self._bus_ports[port]),  # the default, port + 10000, may be taken or > 65535
                "--cluster-node-timeout",
                str(CLUSTER_NODE_TIMEOUT_MS),
                "--requirepass",
                self.password,
                "--masterauth",
                self.password,
            )
        addresses = [f"127.0.0.1:{port}" for port in self.nodes]
        created = self.cli(
            self.nodes[0],
            "--cluster",
            "create",
            *addresses,
            "--cluster-replicas",
            "1",
            "--cluster-yes",
        )
        assert "All 16384 slots covered" in created, created
        for port in self.nodes:
            eventually(
                lambda port=port: "cluster_state:ok" in self.cli(port, "CLUSTER", "INFO"),
                "the cluster did not form",
            )
            if "role:slave" in self.cli(port, "INFO", "replication"):
                self.wait_synced(port)

    def env(self) -> dict[str, str]:
        return {
            "REDIS_URL": "",
            "REDIS_CLUSTER_NODES": ",".join(f"127.0.0.1:{port}" for port in self.nodes),
            "REDIS_PASSWORD": self.password,
            **self.client_env(),
        }

    def owner(self, key: str) -> int | None:
        """The port of the master serving `key`'s hash slot (None while none does)."""
        alive = next(iter(self.processes))
        slot = int(self.cli(alive, "CLUSTER", "KEYSLOT", key))
        for line in self.cli(alive, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for interval in fields[8:]:
                low, _, high = interval.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return int(fields[1].split(":")[1].split("@")[0])
        return None

    def key_elsewhere(self, key: str) -> str:
        """A key served by another master than `key`."""
        owner = self.owner(key)
        return next(f"{key}-{n}" for n in range(1000) if self.owner(f"{key}-{n}") != owner)

    def kill_master(self) -> None:
        """Kill the master serving `key`'s slot."""
        self.dead = self.owner(self.key)
        assert self.dead is not None, "the cluster serves every slot before the kill"
        self.kill(self.dead)

    def wait_for_new_master(self, timeout: float = 20.0) -> None:
        """Until the killed master's replica serves its slots and the cluster is whole."""
        eventually(
            lambda: (
                all(
                    "cluster_state:ok" in self.cli(port, "CLUSTER", "INFO")
                    for port in self.processes
                )
                and self.owner(self.key) not in (self.dead, None)
            ),
            "the cluster did not promote the replica",
            timeout,
        )


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _certificate(
    subject: str,
    public_key: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None = None,
    usages: Sequence[x509.ObjectIdentifier] = (),
) -> x509.Certificate:
    """A CA certificate (no issuer: self-signed) or a leaf for 127.0.0.1 and localhost
    signed by the CA's key."""
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if not usages:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    else:
        builder = (
            builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                critical=False,
            )
        )
    return builder.sign(signer, hashes.SHA256())


def make_tls_files(directory: Path) -> TlsFiles:
    """A private CA, a server certificate for 127.0.0.1 and a client certificate."""
    names = ("ca.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem")
    files = TlsFiles(*(directory / name for name in names))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("reverb-py test CA", ca_key.public_key(), ca_key)
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server, client = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    leaves = [  # servers are clients too: of their master, and on the cluster bus
        ("127.0.0.1", (server, client), files.server_cert, files.server_key),
        ("reverb-py", (client,), files.client_cert, files.client_key),
    ]
    for subject, usages, cert_path, key_path in leaves:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(subject, key.public_key(), ca_key, ca.subject, usages)
        write_pem(cert, key, cert_path, key_path)
    return files


def write_pem(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_path: Path, key_path: Path
) -> None:
    """A certificate and its unencrypted private key as the PEM files servers load."""
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


class TlsServer(RedisProcesses):
    """A redis-server that speaks only TLS, requires a client certificate and a password."""

    def __init__(self, directory: Path, password: str) -> None:
        super().__init__(directory, password, make_tls_files(directory))
        (self.port,) = free_ports(1)

    def start_tls(self) -> None:
        self.start(self.port, "--requirepass", self.password)
