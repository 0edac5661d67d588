"""``famflow deploy``: certificates, SuperNode keys and the ``flwr run`` connection."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_certs(args: argparse.Namespace) -> None:
    from famflow.server.deployment.certificates import make_server_certificates

    paths = make_server_certificates(args.out, args.host)
    print(f"CA certificate: {paths.ca_cert} (give it to every SuperNode and to flwr run)")
    print(f"SuperLink certificate for {', '.join(args.host)}: {paths.server_cert}")
    print(f"SuperLink key: {paths.server_key}")


def cmd_node_key(args: argparse.Namespace) -> None:
    from famflow.server.deployment.certificates import make_node_key

    for name in args.name:
        paths = make_node_key(args.out, name)
        print(f"{name}: private {paths.private_key} (stays on the box), public {paths.public_key}")


def cmd_connection(args: argparse.Namespace) -> None:
    from famflow.server.deployment.connection import write_connection

    path = write_connection(args.name, args.address, None if args.insecure else args.ca)
    print(f"connection {args.name} -> {args.address} written to {path}: flwr run . {args.name}")


def cmd_app(args: argparse.Namespace) -> None:
    from famflow.server.deployment.app import write_app

    path = write_app(args.directory)
    print(f"Flower app written to {path}: flwr run {args.directory} [CONNECTION]")


def add_deploy_parser(sub: argparse._SubParsersAction) -> None:
    deploy = sub.add_parser(
        "deploy", help="TLS certificates, SuperNode keys and the connection for edge boxes"
    )
    steps = deploy.add_subparsers(dest="deploy_command", required=True)

    certs = steps.add_parser("certs", help="a CA and a SuperLink certificate for its hosts")
    certs.add_argument(
        "--host",
        action="append",
        required=True,
        help="name or IP address the SuperLink is reached at (repeatable)",
    )
    certs.add_argument("--out", type=Path, default=Path("deploy/certs"))
    certs.set_defaults(run=cmd_certs)

    keys = steps.add_parser("node-key", help="an ECDSA key pair per SuperNode (OpenSSH format)")
    keys.add_argument("name", nargs="+", help="one key per name, e.g. device-1 edge-1")
    keys.add_argument("--out", type=Path, default=Path("deploy/keys"))
    keys.set_defaults(run=cmd_node_key)

    connection = steps.add_parser(
        "connection", help="write [superlink.NAME] into $FLWR_HOME/config.toml"
    )
    connection.add_argument("name", help="connection name, then: flwr run . NAME")
    connection.add_argument("--address", required=True, help="SuperLink HOST:PORT")
    secure = connection.add_mutually_exclusive_group(required=True)
    secure.add_argument("--ca", type=Path, help="CA certificate the SuperLink's is signed by")
    secure.add_argument("--insecure", action="store_true", help="no TLS (loopback trials only)")
    connection.set_defaults(run=cmd_connection)

    app = steps.add_parser(
        "app", help="a Flower app directory (pyproject.toml) that runs the installed famflow"
    )
    app.add_argument("directory", type=Path, help="where to write pyproject.toml")
    app.set_defaults(run=cmd_app)
