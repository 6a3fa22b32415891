"""Keys, the network authority, certificates and trust stores on disk; ``python -m node keys``.

Files (docs/peer-config.md, "Trust"):

* a key file: an Ed25519 private key, PEM (PKCS#8), mode 0600 in a 0700 folder;
* a certificate: one line of base64 (the 125-byte record of gossip.auth), issued by an
  authority: "peer ID holds public key K until T";
* a trust store: TOML, ``authorities = [KEY, ...]`` and ``[peers] ID = KEY`` (base64 public
  keys). A store that lists an authority accepts every peer it certified, so a new peer is
  admitted by issuing it a certificate, without editing anyone's store.

``provision`` is what scripts/launch.py and ``--emit-configs`` use: one authority per run, a key
and a certificate per peer, one store that lists the authority.
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gossip.auth import (
    Certificate,
    Identity,
    TrustStore,
    create_key,
    decode_key,
    encode_key,
    issue_certificate,
    load_key,
    load_or_create_key,
    public_bytes,
)
from node.peer.checkpoint import private_folder, write_private

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

KEY_NAME = "identity.key"
AUTHORITY_KEY = "authority.key"
STORE_NAME = "trust.toml"
DEFAULT_VALID_DAYS = 365.0


def write_private_text(path: Path, text: str) -> None:
    """A file only its owner can read (0600) in a 0700 folder, replacing an earlier one."""
    private_folder(path.parent)
    write_private(path, text.encode())


def write_certificate(path: str | Path, cert: Certificate) -> None:
    write_private_text(Path(path), base64.b64encode(cert.to_bytes()).decode() + "\n")


def read_certificate(path: str | Path) -> Certificate:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read the certificate {path}: {exc.strerror}") from None
    try:
        return Certificate.from_bytes(base64.b64decode(text.strip(), validate=True))
    except ValueError as exc:
        raise ValueError(f"{path} is not a certificate: {exc}") from None


def store_text(*, authorities: Sequence[bytes] = (), peers: dict[int, bytes] | None = None
               ) -> str:
    lines = ["# decent trust store: the keys this deployment's peers accept",
             "authorities = [" + ", ".join(f'"{encode_key(k)}"' for k in authorities) + "]",
             "", "[peers]"]
    lines += [f'{i} = "{encode_key(k)}"' for i, k in sorted((peers or {}).items())]
    return "\n".join(lines) + "\n"


def read_trust_store(path: str | Path, *, mode: str = "signed") -> TrustStore:
    """The TrustStore in ``path``; ValueError naming the file and the entry on a bad one."""
    path = Path(path)
    try:
        table = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read the trust store {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"trust store {path} is not TOML: {exc}") from None
    unknown = sorted(set(table) - {"authorities", "peers"})
    if unknown:
        raise ValueError(f"trust store {path}: unknown key {unknown[0]!r} (expected "
                         "authorities and [peers])")
    store = TrustStore(mode=mode)
    authorities = table.get("authorities", [])
    if not isinstance(authorities, list):
        raise ValueError(f"trust store {path}: authorities must be a list of keys")
    for i, text in enumerate(authorities):
        store.add_authority(decode_key(str(text), what=f"trust store {path}: authorities[{i}]"))
    peers = table.get("peers", {})
    if not isinstance(peers, dict):
        raise ValueError(f"trust store {path}: [peers] must be a table of ID = KEY")
    for key, text in peers.items():
        if not str(key).isdigit():
            raise ValueError(f"trust store {path}: [peers] key {str(key)[:20]!r} is not a "
                             "peer id")
        store.peers[int(key)] = decode_key(str(text), what=f"trust store {path}: peers.{key}")
    return store


def default_key_file(config: Any) -> Path:
    return Path(config.trust.key_file or Path(config.peer.state_dir) / KEY_NAME)


def identity_for(config: Any) -> tuple[Identity, bool]:
    """(the peer's Identity from its [trust] section, whether its key was just created)."""
    key, created = load_or_create_key(default_key_file(config))
    certificate = read_certificate(config.trust.certificate) if config.trust.certificate \
        else None
    return Identity(config.peer.id, key, certificate), created


def trust_store_for(config: Any) -> TrustStore:
    t = config.trust
    return read_trust_store(t.store, mode=t.mode) if t.store else TrustStore(mode=t.mode)


def provision(configs: list[Any], folder: Path, *,
              key_path: Callable[[Any], Path] | None = None,
              cert_path: Callable[[Any], Path] | None = None,
              relative_to: Path | None = None,
              valid_days: float = DEFAULT_VALID_DAYS) -> list[Any]:
    """Keys for a deployment: an authority in ``folder``, a key (at ``key_path(config)``,
    default the peer's default key file) and a certificate (default next to the key) per peer,
    and ``folder/trust.toml`` listing the authority. Returns the configs with their [trust]
    section pointing at these files (relative to ``relative_to`` when given, for configs that
    travel to other machines). Existing peer keys are kept."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    authority_file = folder / AUTHORITY_KEY
    authority = load_key(authority_file) if authority_file.exists() else \
        create_key(authority_file)
    store = folder / STORE_NAME
    write_private_text(store, store_text(authorities=[public_bytes(authority.public_key())]))
    out = []
    for config in configs:
        key_file = key_path(config) if key_path else default_key_file(config)
        cert_file = cert_path(config) if cert_path else key_file.with_suffix(".cert")
        key, _ = load_or_create_key(key_file)
        write_certificate(cert_file, issue_certificate(
            authority, peer=config.peer.id, public_key=public_bytes(key.public_key()),
            valid_s=valid_days * 86400))

        def shown(path: Path) -> str:
            return str(path.relative_to(relative_to)) if relative_to else str(path)

        out.append(config.updated(trust_mode="signed", key_file=shown(key_file),
                                  certificate=shown(cert_file), trust_store=shown(store)))
    return out


# -- python -m node keys -----------------------------------------------------------------------


def _public_of(text: str) -> bytes:
    """A base64 public key, or the public key of a key file."""
    if Path(text).exists():
        return public_bytes(load_key(text).public_key())
    return decode_key(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m node keys", allow_abbrev=False,
        description="Identities for peers: Ed25519 keys, a network authority that certifies "
                    "peers, and trust stores. A peer accepts messages only from senders whose "
                    "key its trust store lists or whose certificate an authority in it signed.",
        epilog="Typical deployment: keys authority net/ ; for each peer: keys new "
               "peerI.key, keys issue --authority net/authority.key --peer-id I --key "
               "peerI.key --out peerI.cert ; every peer's config: [trust] key_file, "
               "certificate, store = net/trust.toml.")
    sub = p.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new", help="create a peer key file (0600) and print its public key")
    new.add_argument("file")
    pub = sub.add_parser("public", help="print the public key of a key file")
    pub.add_argument("file")
    auth = sub.add_parser("authority", help="create a network authority in DIR: "
                          "DIR/authority.key and DIR/trust.toml listing it")
    auth.add_argument("dir")
    issue = sub.add_parser("issue", help="issue a peer certificate signed by an authority")
    issue.add_argument("--authority", required=True, metavar="FILE",
                       help="the authority's key file")
    issue.add_argument("--peer-id", required=True, type=int, metavar="N")
    who = issue.add_mutually_exclusive_group(required=True)
    who.add_argument("--key", metavar="FILE", help="the peer's key file")
    who.add_argument("--public-key", metavar="BASE64", help="the peer's public key")
    issue.add_argument("--days", type=float, default=DEFAULT_VALID_DAYS,
                       help=f"validity in days (default {DEFAULT_VALID_DAYS:g})")
    issue.add_argument("--out", required=True, metavar="FILE")
    store = sub.add_parser("store", help="write a trust store")
    store.add_argument("file")
    store.add_argument("--authority", action="append", default=[], metavar="KEY",
                       help="an authority's public key (base64) or key file; repeatable")
    store.add_argument("--peer", action="append", default=[], metavar="ID=KEY",
                       help="a peer's public key (base64) or key file; repeatable")
    show = sub.add_parser("show", help="describe a certificate or a trust store")
    show.add_argument("file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "new":
            key = create_key(args.file)
            print(encode_key(public_bytes(key.public_key())))
        elif args.command == "public":
            print(encode_key(public_bytes(load_key(args.file).public_key())))
        elif args.command == "authority":
            folder = Path(args.dir)
            key = create_key(folder / AUTHORITY_KEY)
            write_private_text(folder / STORE_NAME,
                               store_text(authorities=[public_bytes(key.public_key())]))
            print(f"authority {folder / AUTHORITY_KEY}; trust store {folder / STORE_NAME}; "
                  f"public key {encode_key(public_bytes(key.public_key()))}")
        elif args.command == "issue":
            public = _public_of(args.key) if args.key else decode_key(args.public_key)
            cert = issue_certificate(load_key(args.authority), peer=args.peer_id,
                                     public_key=public, valid_s=args.days * 86400)
            write_certificate(args.out, cert)
            print(f"certificate for peer {args.peer_id} in {args.out}, valid until "
                  f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(cert.not_after))}")
        elif args.command == "store":
            peers = {}
            for item in args.peer:
                peer, sep, text = item.partition("=")
                if not sep or not peer.strip().isdigit():
                    parser.error(f"--peer expects ID=KEY, got {item[:40]!r}")
                peers[int(peer)] = _public_of(text.strip())
            write_private_text(Path(args.file), store_text(
                authorities=[_public_of(a) for a in args.authority], peers=peers))
            print(f"trust store {args.file}: {len(args.authority)} authorities, "
                  f"{len(peers)} peers")
        elif args.command == "show":
            print(_describe(Path(args.file)))
    except (ValueError, FileExistsError) as exc:
        text = f"{exc.filename} exists; refusing to overwrite a key" \
            if isinstance(exc, FileExistsError) else str(exc)
        print(f"python -m node keys: error: {text}", file=sys.stderr)
        return 2
    return 0


def _describe(path: Path) -> str:
    if path.suffix == ".toml":
        store = read_trust_store(path)
        return (f"trust store {path}: {len(store.authorities)} authorities, peers "
                f"{sorted(store.peers) or 'none listed'}")
    cert = read_certificate(path)
    left = cert.not_after - time.time()
    return (f"certificate: peer {cert.peer}, key {encode_key(cert.public_key)}, authority "
            f"{cert.authority.hex()}, valid until "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(cert.not_after))}"
            f"{'' if left > 0 else ' (EXPIRED)'}")
