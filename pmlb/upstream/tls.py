"""TLS towards upstreams: the client-side context an upstream's config asks for."""

from __future__ import annotations

import ssl

from pmlb.config import UpstreamConfig


def upstream_ssl_context(config: UpstreamConfig) -> ssl.SSLContext:
    """A context that verifies the upstream (against ``tls_ca``, else the system's
    CAs) and presents ``tls_cert``/``tls_key`` when set (mutual TLS), speaking h2.

    Files are read on each call, so a reconnect picks up rotated certificates.
    Raises ``OSError`` or ``ssl.SSLError`` (which name no file content).
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=config.tls_ca or None)
    if config.tls_cert:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    context.set_alpn_protocols(["h2"])
    return context
