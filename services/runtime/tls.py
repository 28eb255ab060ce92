"""TLS and mutual TLS for every server and client, from PEM files (as mounted from a Kubernetes Secret).

Off by default (local runs use plaintext on loopback). One CA per deployment signs every server's and
every client's certificate:

    server   --tls-cert server.crt --tls-key server.key [--tls-ca ca.crt]      LEAP_TLS_CERT / _KEY / _CA
             with --tls-ca the server demands a client certificate signed by that CA (mutual TLS);
             --tls-client-auth none keeps TLS but accepts clients without one.
    client   --tls-ca ca.crt [--tls-client-cert client.crt --tls-client-key client.key]
             LEAP_TLS_CA, LEAP_TLS_CLIENT_CERT, LEAP_TLS_CLIENT_KEY, LEAP_TLS_SERVER_NAME

A process that is both (the teacher calls the environment; the orchestrator calls everyone) uses the
same CA for both roles. Clients made with services.runtime.channels.make_channel use the process's
client settings (`configure_client_tls`, else the LEAP_TLS_* variables), so every client of the code
base speaks TLS once they are set, without a parameter threaded through each one.

The server rereads its certificate, key and CA when the files change (checked at each new connection),
so a rotated Secret (cert-manager) takes effect without a restart; a half-written file keeps the old
certificate in service. Clients read their files when a channel is made.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import grpc

log = logging.getLogger("leap.tls")

CLIENT_AUTH_CHOICES = ("require", "none")


class TLSConfigError(ValueError):
    """TLS settings that cannot work (a missing or unreadable file, a key without a certificate, ...)."""


def _read_pem(path: str, what: str) -> bytes:
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise TLSConfigError(f"{what} {path} is not a PEM file (no '-----BEGIN' line)")
    return data


# --- servers --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServerTLS:
    """A server's certificate and key files, and the CA its clients' certificates must chain to."""

    cert: str
    key: str
    ca: str = ""
    client_auth: str = "require"  # with a CA: "require" a client certificate, or accept clients without ("none")

    def __post_init__(self):
        if not self.cert or not self.key:
            raise TLSConfigError("TLS needs both --tls-cert and --tls-key (LEAP_TLS_CERT, LEAP_TLS_KEY)")
        if self.client_auth not in CLIENT_AUTH_CHOICES:
            raise TLSConfigError(f"--tls-client-auth must be one of {', '.join(CLIENT_AUTH_CHOICES)}")

    @property
    def mutual(self) -> bool:
        """True when clients must present a certificate signed by the CA."""
        return bool(self.ca) and self.client_auth == "require"

    def _load(self) -> tuple[bytes, bytes, bytes | None]:
        return (_read_pem(self.key, "TLS key"), _read_pem(self.cert, "TLS certificate"),
                _read_pem(self.ca, "TLS CA") if self.ca else None)

    def _stamp(self) -> tuple:
        stamps = []
        for path in (self.cert, self.key, self.ca):
            if not path:
                continue
            try:
                st = os.stat(Path(path).expanduser())
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that reload the files when they change (checked per new connection)."""
        key, cert, ca = self._load()  # fail now, with a clear message, rather than at the first handshake
        lock = threading.Lock()
        state = {"stamp": self._stamp()}

        def fetch():
            stamp = self._stamp()
            with lock:
                if stamp == state["stamp"]:
                    return None
                try:
                    new_key, new_cert, new_ca = self._load()
                    config = grpc.ssl_server_certificate_configuration([(new_key, new_cert)], new_ca)
                except (TLSConfigError, ValueError) as exc:
                    log.warning("TLS files changed but cannot be loaded; keeping the current certificate",
                                extra={"error": str(exc)})
                    return None
                state["stamp"] = stamp
                log.info("TLS certificate reloaded", extra={"cert": self.cert})
                return config

        initial = grpc.ssl_server_certificate_configuration([(key, cert)], ca)
        return grpc.dynamic_ssl_server_credentials(initial, fetch, require_client_authentication=self.mutual)


def server_tls(cert: str, key: str, ca: str = "", client_auth: str = "require") -> ServerTLS | None:
    """ServerTLS when a certificate or key is given, None for plaintext; TLSConfigError when half-set."""
    if not cert and not key:
        if ca:
            raise TLSConfigError("--tls-ca on a server needs --tls-cert and --tls-key as well")
        return None
    tls = ServerTLS(cert, key, ca, client_auth)
    tls._load()  # every file readable and PEM, or a clear error before anything binds
    return tls


# --- clients --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClientTLS:
    """What a client needs for TLS: the CA that signed the servers (empty: the system's roots), and for
    mutual TLS its own certificate and key. server_name overrides the name checked in the server's
    certificate (when the address is not a name the certificate holds)."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    server_name: str = ""

    def __post_init__(self):
        if bool(self.cert) != bool(self.key):
            raise TLSConfigError("a client certificate needs its key and a key its certificate "
                                 "(--tls-client-cert and --tls-client-key, LEAP_TLS_CLIENT_CERT / _KEY)")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read_pem(self.ca, "TLS CA") if self.ca else None,
            private_key=_read_pem(self.key, "TLS client key") if self.key else None,
            certificate_chain=_read_pem(self.cert, "TLS client certificate") if self.cert else None,
        )

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "ClientTLS | None":
        """From LEAP_TLS_CA, LEAP_TLS_CLIENT_CERT, LEAP_TLS_CLIENT_KEY, LEAP_TLS_SERVER_NAME; None when
        none of the first three is set (plaintext)."""
        env = os.environ if environ is None else environ
        ca, cert, key = (env.get(name, "").strip() for name in
                         ("LEAP_TLS_CA", "LEAP_TLS_CLIENT_CERT", "LEAP_TLS_CLIENT_KEY"))
        if not (ca or cert or key):
            return None
        return cls(ca, cert, key, env.get("LEAP_TLS_SERVER_NAME", "").strip())


_client_default: ClientTLS | None = None
_client_default_set = False


def configure_client_tls(tls: ClientTLS | None) -> None:
    """Set this process's client TLS (from command-line flags); None turns it back to the environment's."""
    global _client_default, _client_default_set
    _client_default, _client_default_set = tls, tls is not None


def default_client_tls() -> ClientTLS | None:
    """The process's client TLS: configure_client_tls()'s, else the LEAP_TLS_* variables', else None."""
    return _client_default if _client_default_set else ClientTLS.from_env()


# --- command-line flags ---------------------------------------------------------------------------------

def add_client_tls_arguments(parser) -> None:
    """--tls-ca, --tls-client-cert, --tls-client-key, --tls-server-name (defaults from LEAP_TLS_*)."""
    g = parser.add_argument_group("TLS (client)")
    g.add_argument("--tls-ca", default=os.environ.get("LEAP_TLS_CA", ""), metavar="FILE",
                   help="CA certificate (PEM) that signed the servers; turns TLS on [LEAP_TLS_CA]")
    g.add_argument("--tls-client-cert", default=os.environ.get("LEAP_TLS_CLIENT_CERT", ""), metavar="FILE",
                   help="this client's certificate, for servers that demand one (mutual TLS) [LEAP_TLS_CLIENT_CERT]")
    g.add_argument("--tls-client-key", default=os.environ.get("LEAP_TLS_CLIENT_KEY", ""), metavar="FILE",
                   help="the key of --tls-client-cert [LEAP_TLS_CLIENT_KEY]")
    g.add_argument("--tls-server-name", default=os.environ.get("LEAP_TLS_SERVER_NAME", ""), metavar="NAME",
                   help="name to check in the server's certificate when the address is not one of its names "
                        "[LEAP_TLS_SERVER_NAME]")


def client_tls_from_args(args) -> ClientTLS | None:
    """ClientTLS from the flags of add_client_tls_arguments (None: plaintext)."""
    ca, cert, key = (getattr(args, name, "") or "" for name in ("tls_ca", "tls_client_cert", "tls_client_key"))
    if not (ca or cert or key):
        return None
    tls = ClientTLS(ca, cert, key, getattr(args, "tls_server_name", "") or "")
    tls.credentials()  # every file readable and PEM, or a clear error now
    return tls
