"""``neuralcodes serve``: the local web app of a trained run (gallery, search, results, API)."""

from __future__ import annotations

import argparse
import os
import re
import secrets

from neuralcodes.cli.common import add_config_options, console_logging, run_config
from neuralcodes.config import DEFAULT_MAX_MEGAPIXELS, DEFAULT_MAX_UPLOAD_MB
from neuralcodes.errors import NeuralCodesError

#: The environment variable that gives the access token (else one is generated).
TOKEN_ENV = "NEURALCODES_TOKEN"


def register(p: argparse.ArgumentParser) -> None:
    """The ``serve`` command's description and arguments (its summary: ``cli.COMMANDS``)."""
    p.description = (
        "Start a web app for a trained run: a gallery of the out-of-domain images "
        "with their top-k results per layer, search with an uploaded image, the run's results, "
        "and a JSON API (interactive docs at /docs). Binds 127.0.0.1 unless --host says "
        "otherwise; on any other address every request needs an access token (printed in the "
        f"address at start; ${TOKEN_ENV} sets it) and a Host named by --allowed-host. "
        "Retrieval settings (retrieval.k, retrieval.relu, retrieval.layers) and the server's "
        "limits (serve.*, e.g. serve.decode_timeout_s) may be changed with --set.")
    p.add_argument("run", help="run directory (runs/<name>)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, "
                   "this machine only; 0.0.0.0 exposes the app to the network, which needs "
                   "--allowed-host and then an access token for every request)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name (or address) the app is reached by, checked against each "
                   "request's Host header (repeatable; same as --set serve.allowed_hosts=[...])")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--index", metavar="NAME", help="an index built by `neuralcodes index` "
                   "(its name, or its folder), searchable with uploaded images besides the ood set")
    p.add_argument("--max-upload-mb", type=float, metavar="MB",
                   help=f"largest accepted upload in MiB (default: {DEFAULT_MAX_UPLOAD_MB:g}; "
                   "same as --set serve.max_upload_mb=MB)")
    p.add_argument("--max-megapixels", type=float, metavar="MP",
                   help="largest accepted upload in megapixels (default: "
                   f"{DEFAULT_MAX_MEGAPIXELS:g}; same as --set serve.max_megapixels=MP)")
    add_config_options(p, "--device", "--precision")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import uvicorn

    from neuralcodes.retrieval.search import open_index
    from neuralcodes.runs import RunDir, TrainedRun
    from neuralcodes.web import LOCAL_HOSTS, create_app, is_loopback
    from neuralcodes.web.protocol import protocol_with_header_timeout

    if not 0 < args.port < 65536:
        raise NeuralCodesError(f"--port must be between 1 and 65535 (got {args.port})")
    for flag, key in (("max_upload_mb", "max_upload_mb"), ("max_megapixels", "max_megapixels")):
        if getattr(args, flag) is not None:
            args.overrides.append(f"serve.{key}={getattr(args, flag)}")
    saved = RunDir.existing(args.run).read_config()
    if args.allowed_host:
        hosts = list(saved.serve.allowed_hosts) + args.allowed_host
        args.overrides.insert(0, "serve.allowed_hosts=" + _json_list(hosts))
    cfg = run_config(args, saved)
    local = is_loopback(args.host)
    token = _token(local)
    if local:
        allowed = LOCAL_HOSTS + list(cfg.serve.allowed_hosts)
    elif not cfg.serve.allowed_hosts:
        raise NeuralCodesError(f"--host {args.host} exposes the app to the network: name the "
                               "host names it is reached by with --allowed-host NAME (e.g. "
                               "this machine's name or address), so that no other name (DNS "
                               "rebinding) reaches it")
    else:
        allowed = list(cfg.serve.allowed_hosts)
    _check_can_listen(args.host, args.port)  # before the (slow) loading, not after
    run = TrainedRun.open(args.run, cfg, reader=True)  # opened once, served
    if args.index:  # a wrong index: its one line before the ood codes are computed
        open_index(args.index, run)
    print(f"neuralcodes: loading {args.run} ...", flush=True)
    with console_logging():
        app = create_app(run, args.index, allowed_hosts=allowed, serve=cfg.serve, token=token,
                         warm=True)
    refused = app.state.retrieval.index_error
    if refused:  # `serve --index` with an index it may not use: one line, nothing served
        raise NeuralCodesError(refused)
    where = allowed[0] if not local else args.host
    if ":" in where and not where.startswith("["):
        where = f"[{where}]"
    url = f"http://{where}:{args.port}/" + (f"?token={token}" if token else "")
    if not local:
        print(f"neuralcodes: WARNING: --host {args.host} makes this app reachable from the "
              "network: the run's out-of-domain images, search with uploaded images, the "
              "run's results and report, and the JSON API (/docs). Every request needs the "
              f"access token in the address below; Host must be one of: {', '.join(allowed)}. "
              "Plain HTTP: use it on a network you trust.", flush=True)
    print(f"neuralcodes: serving {args.run} on {url} (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                http=protocol_with_header_timeout(cfg.serve.header_timeout_s),
                timeout_keep_alive=cfg.serve.keep_alive_s)  # type: ignore[arg-type]
    return 0


def _json_list(items: list[str]) -> str:
    import json

    return json.dumps(items)


def _token(local: bool) -> str | None:
    """The access token: ``$NEURALCODES_TOKEN`` if set, else a new one when not ``local``."""
    given = os.environ.get(TOKEN_ENV)
    if given is not None:
        if not re.fullmatch(r"[A-Za-z0-9_.~-]{16,}", given):
            raise NeuralCodesError(f"${TOKEN_ENV} must be at least 16 characters among "
                                   "letters, digits and _ . ~ -")
        return given
    return None if local else secrets.token_urlsafe(24)


def _check_can_listen(host: str, port: int) -> None:
    """Fail with one clear line if ``host:port`` cannot be bound (in use, unknown address)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as e:
        raise NeuralCodesError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
