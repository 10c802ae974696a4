"""`binome-backup-server`: run and administer a backup server, and restore without a cluster.

Owns the command line of the server role (`binome.backup.server`): `serve`, `init`,
`fingerprint`, `datastore-create`, `token-create`, `token-remove`, and the disaster
tools that need nothing but the server's data directory: `list` (the backups of a
datastore) and `restore-file` (a disk image, checked chunk by chunk, or the guest
config of a backup; an encrypted one with `--keyfile`, the storage's key file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from pathlib import Path

from binome.backup.crypt import CryptError, load_key
from binome.backup.datastore import DatastoreError
from binome.backup.dumpstore import backup_name, ref_of_name
from binome.backup.reader import RestoreError, restore_image
from binome.backup.server import (
    DEFAULT_PORT,
    ServerError,
    TokenStore,
    certificate_fingerprint,
    create_datastore,
    ensure_certificate,
    ensure_data_dir,
    open_datastore,
    serve,
    snapshot_entry,
)

DEFAULT_DATA_DIR = "/var/lib/binome-backup"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="binome-backup-server",
        description="An independent binome backup server (datastores over HTTPS).")
    parser.add_argument("--data-dir", type=Path, default=Path(DEFAULT_DATA_DIR),
                        help=f"server directory (default {DEFAULT_DATA_DIR})")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run the server")
    run.add_argument("--listen", default="0.0.0.0", help="address to listen on")
    run.add_argument("--port", type=int, default=DEFAULT_PORT)
    commands.add_parser("init", help="create the directory and certificate; print the "
                                     "fingerprint")
    commands.add_parser("fingerprint", help="print the certificate's SHA-256 fingerprint")
    store = commands.add_parser("datastore-create", help="create a datastore")
    store.add_argument("name")
    token = commands.add_parser("token-create",
                                help="create (or renew) an API token; prints its secret once")
    token.add_argument("token_id", metavar="USER@REALM!NAME")
    untoken = commands.add_parser("token-remove", help="remove an API token")
    untoken.add_argument("token_id", metavar="USER@REALM!NAME")
    listing = commands.add_parser("list", help="list the backups of a datastore")
    listing.add_argument("--datastore", required=True)
    restore = commands.add_parser(
        "restore-file", help="restore one disk (or the guest config) of a backup from the "
                             "server directory alone")
    restore.add_argument("--datastore", required=True)
    restore.add_argument("backup", help="backup name, vzdump-qemu-<vmid>-<time>.binome (or "
                                        "its volume id)")
    restore.add_argument("disk", help="disk key (e.g. virtio0, scsi0) or 'config'")
    restore.add_argument("output", type=Path, help="raw image file or block device to write "
                                                   "(or the config file)")
    restore.add_argument("--keyfile", type=Path,
                         help="the storage's encryption key file, for an encrypted backup "
                              "(the key is read on this machine only)")
    return parser


def _restore_file(data_dir: Path, datastore: str, backup: str, disk: str,
                  output: Path, keyfile: Path | None = None) -> str:
    store = open_datastore(data_dir, datastore)
    if keyfile is not None:
        store.crypt = load_key(keyfile.read_text())
    ref = ref_of_name(backup.rpartition("backup/")[2] if "backup/" in backup else backup)
    # an encrypted backup: the key's fingerprint and the manifest's signature first
    try:
        manifest = store.authenticated_manifest(ref)
    except CryptError as error:
        hint = "" if keyfile is not None else " (give the storage's key file: --keyfile)"
        raise CryptError(f"{error}{hint}") from None
    if disk == "config":
        output.write_text(store.guest_config(ref))
        return f"wrote the guest config of {backup_name(ref)} to {output}"
    name = disk if disk.endswith(".fidx") else f"drive-{disk}.img.fidx"
    if name not in {f["filename"] for f in manifest.files}:
        disks = sorted(f["filename"][len("drive-"):-len(".img.fidx")]
                       for f in manifest.files if f["filename"].endswith(".img.fidx"))
        raise DatastoreError(f"backup {backup_name(ref)} has no disk '{disk}' (it has: "
                             f"{', '.join(disks) or 'none'})")
    stats = restore_image(store, ref, name, output, crypt=store.crypt)
    return (f"restored {disk} of {backup_name(ref)} to {output}: {stats.size} bytes, "
            f"sha256 {stats.sha256}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    data_dir: Path = args.data_dir
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if args.command in ("serve", "init"):
            ensure_data_dir(data_dir)
            fingerprint = ensure_certificate(data_dir)
            print(f"fingerprint: {fingerprint}", flush=True)
            if args.command == "serve":
                with contextlib.suppress(KeyboardInterrupt):
                    asyncio.run(serve(data_dir, args.listen, args.port))
        elif args.command == "fingerprint":
            print(certificate_fingerprint(data_dir))
        elif args.command == "datastore-create":
            print(f"datastore '{args.name}' at {create_datastore(data_dir, args.name)}")
        elif args.command == "token-create":
            ensure_data_dir(data_dir)
            secret = TokenStore(data_dir).create(args.token_id)
            print(f"token: {args.token_id}")
            print(f"secret: {secret}")
            print("(the secret is shown only now: give it to the cluster as the storage's "
                  "'password')")
        elif args.command == "token-remove":
            if not TokenStore(data_dir).remove(args.token_id):
                raise ServerError(f"no token '{args.token_id}'")
        elif args.command == "list":
            store = open_datastore(data_dir, args.datastore)
            for ref in store.snapshots():
                entry = snapshot_entry(store, backup_name(ref))
                state = (entry["verification"] or {}).get("state", "-")
                disks = ",".join(f["filename"][len("drive-"):-len(".img.fidx")]
                                 for f in entry["files"]
                                 if f["filename"].endswith(".img.fidx"))
                encrypted = entry["crypt-fingerprint"] or "no"
                print(f"{entry['name']}  size={entry['size']}  disks={disks}  "
                      f"protected={entry['protected']}  verify={state}  "
                      f"encrypted={encrypted}")
        elif args.command == "restore-file":
            print(_restore_file(data_dir, args.datastore, args.backup, args.disk,
                                args.output, args.keyfile))
    except (ServerError, DatastoreError, RestoreError, CryptError, OSError) as error:
        print(f"binome-backup-server: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
