"""Local stand-ins for the services credential providers talk to, run inside the tests.

* :class:`VaultStandIn`: a real HTTP server on 127.0.0.1 that answers the requests hvac
  makes for Vault's database secrets engine (``GET /v1/<mount>/creds/<role>``,
  ``PUT /v1/sys/leases/renew``), checking ``X-Vault-Token``. Like Vault, it creates a
  real PostgreSQL role per lease (``CREATE ROLE ... LOGIN PASSWORD ... VALID UNTIL ...
  IN ROLE <group>``), moves ``VALID UNTIL`` on renewal, and on revocation revokes the
  role's privileges and drops it without ending its sessions.
* :class:`RdsStandIn`: what RDS does with an IAM token at login: it checks the SigV4
  signature (computed here from the AWS documentation, independently of botocore) and the
  expiry, then lets the token log in as the user (here: it becomes the role's password).
* :func:`scram_server`: one PostgreSQL with password authentication for these tests.

Nothing here reaches the network beyond the loopback interface.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote

import psycopg
from psycopg import sql

from channels_engines.postgres.embedded import EmbeddedPostgres

# -- PostgreSQL with passwords ---------------------------------------------------------


@functools.cache
def scram_server() -> EmbeddedPostgres:
    """A PostgreSQL that checks passwords (scram-sha-256), started once, stopped at exit."""
    return EmbeddedPostgres(auth="scram-sha-256", superuser_password=secrets.token_hex(12)).start()


def admin_execute(
    pg: EmbeddedPostgres, statement: sql.Composable | str, dbname: str = "postgres"
) -> None:
    """Run one statement as the superuser (over TCP, with its password)."""
    with psycopg.connect(pg.dsn(dbname), autocommit=True) as conn:
        conn.execute("SET log_statement = 'none'")  # passwords stay out of the server log
        conn.execute(statement)


def role_exists(pg: EmbeddedPostgres, role: str) -> bool:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        return (
            conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone() is not None
        )


def valid_until(pg: EmbeddedPostgres, role: str) -> datetime | None:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT rolvaliduntil FROM pg_roles WHERE rolname = %s", [role]
        ).fetchone()
    assert row is not None, f"no role {role}"
    return row[0]  # type: ignore[no-any-return]


# -- Vault -----------------------------------------------------------------------------


@dataclass
class Lease:
    lease_id: str
    role: str  # the Vault role
    username: str
    password: str
    expires_at: datetime
    max_expires_at: datetime
    renewable: bool
    revoked: bool = False
    renewals: int = 0


@dataclass
class VaultStandIn:
    """Vault's database secrets engine, over HTTP on 127.0.0.1, creating real roles.

    ``roles`` maps each Vault role to the PostgreSQL group role its users are created in
    (the privileges come from the group, as with Vault's usual creation statements).
    """

    pg: EmbeddedPostgres
    token: str
    roles: dict[str, str]
    mount: str = "database"
    ttl: int = 3600
    max_ttl: int = 86400
    renewable: bool = True
    namespace: str | None = None
    dbname: str = "postgres"
    leases: dict[str, Lease] = field(default_factory=dict)
    #: (method, path, status) of every request, in order.
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # Running it --------------------------------------------------------------------

    def __enter__(self) -> VaultStandIn:
        handler = functools.partial(_VaultHandler, self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        for lease in list(self.leases.values()):
            if not lease.revoked:
                self.revoke(lease.lease_id)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # What tests look at or do --------------------------------------------------------

    def count(self, method: str, path_part: str) -> int:
        return sum(
            1
            for m, path, status in self.requests
            if m == method and path_part in path and status == 200
        )

    @property
    def generated(self) -> int:
        return self.count("GET", "/creds/")

    @property
    def renewed(self) -> int:
        return self.count("PUT", "/sys/leases/renew")

    def lease_of(self, username: str) -> Lease:
        return next(lease for lease in self.leases.values() if lease.username == username)

    def revoke(self, lease_id: str) -> None:
        """What Vault's PostgreSQL plugin does on revocation (defaultDeleteUser): revoke
        everything, then DROP ROLE; it never ends the role's open sessions."""
        lease = self.leases[lease_id]
        lease.revoked = True
        name = sql.Identifier(lease.username)
        for statement in (
            "REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA public FROM {}",
            "REVOKE ALL PRIVILEGES ON ALL SEQUENCES IN SCHEMA public FROM {}",
            "REVOKE USAGE ON SCHEMA public FROM {}",
            "DROP ROLE IF EXISTS {}",
        ):
            admin_execute(self.pg, sql.SQL(statement).format(name), self.dbname)

    def cap(self, lease_id: str, seconds: float) -> None:
        """Bring the lease's max_ttl to ``seconds`` from now (renewals are cut to it)."""
        self.leases[lease_id].max_expires_at = _now() + timedelta(seconds=seconds)

    # Endpoints -----------------------------------------------------------------------

    def generate(self, role: str) -> tuple[int, dict[str, Any]]:
        group = self.roles.get(role)
        if group is None:
            return 400, {"errors": [f"unknown role: {role}"]}
        now = _now()
        username = f"v-token-{role}-{secrets.token_hex(6)}"[:63]
        password = "A1a-" + secrets.token_urlsafe(18)
        lease = Lease(
            lease_id=f"{self.mount}/creds/{role}/{secrets.token_hex(12)}",
            role=role,
            username=username,
            password=password,
            expires_at=now + timedelta(seconds=self.ttl),
            max_expires_at=now + timedelta(seconds=self.max_ttl),
            renewable=self.renewable,
        )
        admin_execute(
            self.pg,
            sql.SQL("CREATE ROLE {} WITH LOGIN PASSWORD {} VALID UNTIL {} IN ROLE {}").format(
                sql.Identifier(username),
                sql.Literal(password),
                sql.Literal(lease.expires_at.isoformat()),
                sql.Identifier(group),
            ),
            self.dbname,
        )
        with self._lock:
            self.leases[lease.lease_id] = lease
        return 200, {
            "request_id": secrets.token_hex(8),
            "lease_id": lease.lease_id,
            "renewable": lease.renewable,
            "lease_duration": self.ttl,
            "data": {"username": username, "password": password},
            "wrap_info": None,
            "warnings": None,
            "auth": None,
        }

    def renew(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        lease = self.leases.get(str(body.get("lease_id")))
        now = _now()
        if lease is None or lease.revoked or lease.expires_at <= now:
            return 400, {"errors": ["lease not found"]}
        if not lease.renewable:
            return 400, {"errors": ["lease is not renewable"]}
        increment = int(body.get("increment") or self.ttl)
        granted = min(float(increment), (lease.max_expires_at - now).total_seconds())
        granted = max(0, int(granted))
        lease.expires_at = now + timedelta(seconds=granted)
        lease.renewals += 1
        admin_execute(
            self.pg,
            sql.SQL("ALTER ROLE {} VALID UNTIL {}").format(
                sql.Identifier(lease.username), sql.Literal(lease.expires_at.isoformat())
            ),
            self.dbname,
        )
        return 200, {
            "request_id": secrets.token_hex(8),
            "lease_id": lease.lease_id,
            "renewable": True,
            "lease_duration": granted,
            "data": None,
        }


class _VaultHandler(BaseHTTPRequestHandler):
    def __init__(self, vault: VaultStandIn, *args: Any) -> None:
        self.vault = vault
        super().__init__(*args)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read ``vault.requests`` instead."""

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_POST(self) -> None:
        self._handle("PUT")

    def _handle(self, method: str) -> None:
        vault = self.vault
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}") if length else {}
        status, answer = self._answer(method, body)
        with vault._lock:
            vault.requests.append((method, self.path, status))
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _answer(self, method: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        vault = self.vault
        if self.headers.get("X-Vault-Token") != vault.token:
            return 403, {"errors": ["permission denied"]}
        if vault.namespace is not None and self.headers.get("X-Vault-Namespace") != vault.namespace:
            return 403, {"errors": ["permission denied"]}
        creds = f"/v1/{vault.mount}/creds/"
        if method == "GET" and self.path.startswith(creds):
            return vault.generate(self.path[len(creds) :])
        if method == "PUT" and self.path == "/v1/sys/leases/renew":
            return vault.renew(body)
        return 404, {"errors": []}


# -- RDS IAM ---------------------------------------------------------------------------


@dataclass
class RdsStandIn:
    """Checks RDS IAM tokens like RDS does, then lets them log in as their user."""

    pg: EmbeddedPostgres
    access_key: str
    secret_key: str
    region: str
    host: str
    port: int
    #: Tokens accepted, in order.
    accepted: list[str] = field(default_factory=list)

    def authorize(self, token: str, user: str) -> None:
        check_rds_token(
            token,
            host=self.host,
            port=self.port,
            user=user,
            region=self.region,
            access_key=self.access_key,
            secret_key=self.secret_key,
        )
        admin_execute(
            self.pg,
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(user), sql.Literal(token)),
        )
        self.accepted.append(token)


def rds_token_parameters(token: str) -> dict[str, str]:
    """The query parameters of a token (``host:port/?Action=connect&DBUser=...``)."""
    _, _, query = token.partition("/?")
    return {
        unquote(key): unquote(value)
        for key, _, value in (p.partition("=") for p in query.split("&"))
    }


def check_rds_token(
    token: str,
    *,
    host: str,
    port: int,
    user: str,
    region: str,
    access_key: str,
    secret_key: str,
    now: datetime | None = None,
) -> None:
    """Raise AssertionError unless ``token`` is a valid, unexpired SigV4 presigned
    ``connect`` request for ``user`` at ``host:port`` (AWS Signature Version 4, query
    string authentication; https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html)."""
    assert token.startswith(f"{host}:{port}/?"), "the token is not for this endpoint"
    params = rds_token_parameters(token)
    signature = params.pop("X-Amz-Signature")
    assert params["Action"] == "connect"
    assert params["DBUser"] == user
    assert params["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert params["X-Amz-Expires"] == "900"
    assert params["X-Amz-SignedHeaders"] == "host"
    key_id, day, token_region, service, terminator = params["X-Amz-Credential"].split("/")
    assert (key_id, token_region, service, terminator) == (
        access_key,
        region,
        "rds-db",
        "aws4_request",
    )
    signed_at = datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(
        tzinfo=timezone.utc
    )
    age = ((now or _now()) - signed_at).total_seconds()
    assert -300 <= age <= 900, f"the token is {age:.0f} s old"
    assert params["X-Amz-Date"].startswith(day)

    def encode(text: str) -> str:
        return quote(text, safe="-_.~")

    canonical_query = "&".join(f"{encode(k)}={encode(v)}" for k, v in sorted(params.items()))
    canonical_request = "\n".join(
        [
            "GET",
            "/",
            canonical_query,
            f"host:{host}:{port}\n",
            "host",
            hashlib.sha256(b"").hexdigest(),
        ]
    )
    scope = f"{day}/{region}/rds-db/aws4_request"
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            params["X-Amz-Date"],
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = ("AWS4" + secret_key).encode()
    for part in (day, region, "rds-db", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, signature), "the token's signature does not verify"


def _now() -> datetime:
    return datetime.now(timezone.utc)


# -- Observing ---------------------------------------------------------------------------


def users_of(pg: EmbeddedPostgres, app: str) -> list[str | None]:
    """The login of each session whose application_name is ``app`` (None: role dropped)."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT usename FROM pg_stat_activity WHERE application_name = %s ORDER BY pid",
            [app],
        ).fetchall()
    return [row[0] for row in rows]


@dataclass
class AppTables:
    """The engine's tables made by a DBA, used by a runtime group role that owns nothing."""

    pg: EmbeddedPostgres
    prefix: str
    group: str

    @classmethod
    @contextlib.contextmanager
    def create(cls, pg: EmbeddedPostgres) -> Iterator[AppTables]:
        from channels_engines.postgres.schema import Tables

        token = secrets.token_hex(4)
        tables = cls(pg, f"ce_cred_{token}_", f"ce_app_{token}")
        schema = Tables(None, tables.prefix, True)
        pg.execute(f"CREATE ROLE {tables.group} NOLOGIN")
        pg.execute(schema.create_script())
        pg.execute(schema.grant_script(tables.group))
        try:
            yield tables
        finally:
            pg.execute(
                f"DROP TABLE IF EXISTS {tables.prefix}message, {tables.prefix}group_member; "
                f"DROP OWNED BY {tables.group}; DROP ROLE {tables.group}"
            )
