"""A whole deployment on this machine, as real processes on loopback.

Publisher (seal a model), key broker (``teellm kbs serve`` on a SQLite file) and
confidential server (``teellm serve --tee simulated``): what the demo, the
end-to-end tests and the benchmark run. Development only: the simulated TEE
protects nothing, and the broker's master key sits in a temp directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

from teellm.errors import TeellmError

DEFAULT_MODEL_ID = "tiny-llama"


class StackError(TeellmError):
    """A process of the local stack failed to start."""

    code = "stack_failed"


def free_port() -> int:
    """A port the kernel just had free on 127.0.0.1 (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Proc:
    """A child process with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        self._log.close()
        return self.popen.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def teellm_command(*args: str) -> list[str]:
    """The ``teellm`` CLI run by this interpreter."""
    return [sys.executable, "-m", "teellm.cli", *args]


def spawn(name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Proc:
    log_path = log_dir / f"{name}.log"
    log = log_path.open("wb")
    popen = subprocess.Popen(
        args,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    return Proc(name, popen, log_path, log)


def wait_http(url: str, proc: Proc, *, timeout: float = 60.0) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StackError(
                f"{proc.name} exited with status {proc.popen.returncode}; "
                f"see {proc.log_path.name}:\n{proc.log_text()[-2000:]}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.1)
    raise StackError(f"{proc.name} did not become ready within {timeout:.0f} s")


@dataclass
class Tenant:
    name: str
    models: list[str]
    token: str = field(repr=False)


class LocalStack:
    """Publisher, key broker and server on loopback, in ``root``.

    ``prepare()`` makes (or takes) a model, seals it, stores its key and a release
    policy admitting the simulated TEE in the broker's SQLite database and writes
    the access policy; ``start()`` runs ``teellm kbs serve`` and ``teellm serve``.
    """

    def __init__(
        self,
        root: Path,
        *,
        model_dir: Path | None = None,
        model_id: str = DEFAULT_MODEL_ID,
        tenants: dict[str, list[str]] | None = None,
        plain: bool = False,
        batch_size: int = 8,
        precision: str = "float32",
        max_input_length: int = 1024,
        rpm: int = 100_000,
        server_args: list[str] | None = None,
        server_env: dict[str, str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.model_dir = model_dir
        self.model_id = model_id
        self.tenant_models = tenants or {"demo": ["*"]}
        self.plain = plain
        self.batch_size = batch_size
        self.precision = precision
        self.max_input_length = max_input_length
        self.rpm = rpm
        self.server_args = list(server_args or [])
        self.server_env = dict(server_env or {})
        self.tenants: dict[str, Tenant] = {}
        self.procs: list[Proc] = []
        self.manifest: Any = None
        self.kbs_url = ""
        self.url = ""
        self._server_args: list[str] = []

    # ------------------------------------------------------------ paths

    @property
    def bundle_dir(self) -> Path:
        return self.root / "bundle"

    @property
    def publisher_key(self) -> Path:
        return self.root / "publisher.pem"

    @property
    def publisher_pub(self) -> Path:
        from teellm.bundle.keys import public_key_path

        return public_key_path(self.publisher_key)

    @property
    def kbs_db(self) -> str:
        return f"sqlite:///{self.root / 'kbs.db'}"

    @property
    def master_key_file(self) -> Path:
        return self.root / "kbs-master.key"

    @property
    def access_file(self) -> Path:
        return self.root / "access.yaml"

    # ------------------------------------------------------------ setup

    def prepare(self) -> LocalStack:
        """Model, sealed bundle, broker database, access policy."""
        from teellm.attestation.policy import AppraisalPolicy
        from teellm.bundle.keys import generate_signing_key, write_signing_key
        from teellm.bundle.seal import seal_model
        from teellm.kbs.broker import KeyBroker
        from teellm.kbs.masterkey import MasterKeyRing, generate_master_key_file
        from teellm.kbs.policy import ReleasePolicy
        from teellm.kbs.store import open_store
        from teellm.server.access import AccessPolicy, new_token
        from teellm.server.access import Tenant as AccessTenant

        self.root.mkdir(parents=True, exist_ok=True)
        if self.model_dir is None:
            from teellm.devmodel import make_model_dir

            self.model_dir = make_model_dir(self.root / "model")
        signing_key = generate_signing_key()
        write_signing_key(self.publisher_key, signing_key)
        sealed = seal_model(
            self.model_dir,
            self.bundle_dir,
            model_id=self.model_id,
            version=1,
            signing_key=signing_key,
        )
        self.manifest = sealed.manifest
        generate_master_key_file(self.master_key_file)
        store = open_store(self.kbs_db)
        try:
            broker = KeyBroker(store, MasterKeyRing.from_file(self.master_key_file))
            with sealed.content_key as key:
                broker.put_key(self.model_id, 1, key, manifest_digest=sealed.manifest.digest())
            # Development release policy: the simulated TEE is admitted explicitly.
            broker.set_policy(
                self.model_id,
                ReleasePolicy(
                    appraisal=AppraisalPolicy(allow_simulated=True, max_evidence_age_s=300)
                ),
            )
        finally:
            store.close()
        tenants = []
        for name, models in self.tenant_models.items():
            token, token_hash = new_token()
            self.tenants[name] = Tenant(name, models, token)
            tenants.append(
                AccessTenant(
                    name=name,
                    token_hashes=[token_hash],
                    models=models,
                    max_tokens=4096,
                    requests_per_minute=self.rpm,
                )
            )
        self.access_file.write_text(AccessPolicy(tenants=tenants).to_yaml())
        return self

    def start(self, *, timeout: float = 90.0) -> LocalStack:
        """Start the key broker, then the server; wait until both are ready."""
        kbs_port, port = free_port(), free_port()
        kbs = spawn(
            "kbs",
            teellm_command(
                "kbs", "serve", "--db", self.kbs_db,
                "--master-key-file", str(self.master_key_file),
                "--port", str(kbs_port),
            ),
            self.root,
        )  # fmt: skip
        self.procs.append(kbs)
        self.kbs_url = f"http://127.0.0.1:{kbs_port}"
        wait_http(self.kbs_url + "/healthz", kbs, timeout=timeout)
        args = [
            "serve", "--tee", "simulated",
            "--bundle", str(self.bundle_dir),
            "--trusted-publisher", str(self.publisher_pub),
            "--kbs", self.kbs_url,
            "--access", str(self.access_file),
            "--port", str(port),
            "--batch-size", str(self.batch_size),
            "--precision", self.precision,
            "--max-input-length", str(self.max_input_length),
        ]  # fmt: skip
        if self.plain:
            args.append("--plain")
        self._server_args = [*args, *self.server_args]
        self.url = f"http://127.0.0.1:{port}"
        self._start_server(timeout)
        return self

    def _start_server(self, timeout: float) -> None:
        server = spawn("server", teellm_command(*self._server_args), self.root, env=self.server_env)
        self.procs.append(server)
        wait_http(self.url + "/readyz", server, timeout=timeout)

    def restart_server(self, *, timeout: float = 90.0) -> int | None:
        """Stop the server and start a new one on the same port (fresh identity keys,
        key released again); the old process's exit status."""
        old = next(p for p in self.procs if p.name == "server")
        status = old.stop()
        self.procs.remove(old)
        old.log_path.rename(old.log_path.with_suffix(f".{old.popen.pid}.log"))
        self._start_server(timeout)
        return status

    def stop(self) -> dict[str, int | None]:
        """Stop every process (server first); their exit statuses by name."""
        statuses = {p.name: p.stop() for p in reversed(self.procs)}
        self.procs.clear()
        return statuses

    def __enter__(self) -> LocalStack:
        return self.prepare().start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------ client side

    def token(self, tenant: str | None = None) -> str:
        name = tenant or next(iter(self.tenants))
        return self.tenants[name].token

    def client_policy(self, **overrides: Any) -> Any:
        """The client policy a user of this stack would write (simulated TEE allowed)."""
        from teellm.attestation.policy import AppraisalPolicy
        from teellm.server.document import ClientPolicy

        fields: dict[str, Any] = {
            "attestation": AppraisalPolicy(allow_simulated=True, max_evidence_age_s=300),
            "model_id": self.model_id,
            "trusted_publishers": [self.manifest.publisher_key_id],
            "allow_plain_mode": self.plain,
        }
        fields.update(overrides)
        return ClientPolicy(**fields)

    def logs(self) -> str:
        """Every log this stack's processes wrote, restarted servers included."""
        return "".join(p.read_text(errors="replace") for p in sorted(self.root.glob("*.log")))
