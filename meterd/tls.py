"""https from a certificate and key file (`tls_cert_file`, `tls_key_file`) for the listeners
developers and browsers reach: `meterd serve`, `proxy` and `admin`. Claude Code refuses plain
http to a gateway that is not on loopback, and pins the leaf certificate it was shown, so every
node behind one hostname serves the same leaf (README, TLS)."""

from __future__ import annotations

import ssl
from pathlib import Path

from meterd.settings import Settings, SettingsError

_BOTH = "tls_cert_file and tls_key_file (MTD_TLS_CERT_FILE, MTD_TLS_KEY_FILE)"


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The server's TLS context, or None for plain http (neither file set). A SettingsError
    names what is wrong: one file without the other, a file that cannot be read, or a
    certificate and key that do not load or do not belong together."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if not cert and not key:
        return None
    if not cert or not key:
        raise SettingsError(f"settings {_BOTH}: set both or neither")
    for name, path in (("tls_cert_file", cert), ("tls_key_file", key)):
        try:
            Path(path).read_bytes()
        except OSError as exc:
            raise SettingsError(f"setting {name}: cannot read {path}: {exc.strerror}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise SettingsError(
            f"settings {_BOTH}: {cert} and {key} do not load as a PEM certificate (the leaf, "
            f"then its chain) and its unencrypted private key ({exc.reason or exc})") from None
    return context
