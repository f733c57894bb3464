"""``neuralcodes serve``: the local web app of a trained run (gallery, search, results, API)."""

from __future__ import annotations

import argparse

from neuralcodes.cli.common import add_config_options, console_logging, run_config
from neuralcodes.errors import NeuralCodesError
from neuralcodes.web.uploads import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_BYTES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="a local web app: browse the ood images and search with your own",
        description="Start a web app for a trained run: a gallery of the out-of-domain images "
        "with their top-k results per layer, search with an uploaded image, the run's results, "
        "and a JSON API (interactive docs at /docs). Binds 127.0.0.1 unless --host says "
        "otherwise. Retrieval settings (retrieval.k, retrieval.relu, retrieval.layers) may be "
        "changed with --set.")
    p.add_argument("run", help="run directory (runs/<name>)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, "
                   "this machine only; 0.0.0.0 exposes the app to the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--index", metavar="PATH", help="an index built by `neuralcodes index`, "
                   "searchable with uploaded images besides the ood set")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_BYTES / 2**20,
                   help="largest accepted upload in MiB (default: %(default)g)")
    p.add_argument("--max-megapixels", type=float, default=DEFAULT_MAX_PIXELS / 1e6,
                   help="largest accepted upload in megapixels (default: %(default)g)")
    add_config_options(p, "--device", "--precision")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import uvicorn

    from neuralcodes.retrieval import RunData
    from neuralcodes.retrieval.search import open_index
    from neuralcodes.runs import RunDir
    from neuralcodes.web import LOCAL_HOSTS, create_app, is_loopback

    if not 0 < args.port < 65536:
        raise NeuralCodesError(f"--port must be between 1 and 65535 (got {args.port})")
    if args.max_upload_mb <= 0 or args.max_megapixels <= 0:
        raise NeuralCodesError("--max-upload-mb and --max-megapixels must be positive")
    cfg = run_config(args, RunDir.existing(args.run).read_config())
    _check_can_listen(args.host, args.port)  # before the (slow) loading, not after
    if args.index:  # a wrong index: its one line before the ood codes are computed
        open_index(args.index, RunData.open(args.run, precision=cfg.train.precision,
                                            reader=True))
    print(f"neuralcodes: loading {args.run} ...", flush=True)
    with console_logging():
        app = create_app(args.run, args.index, device=cfg.train.device,
                         precision=cfg.train.precision,
                         max_upload_bytes=int(args.max_upload_mb * 2**20),
                         max_pixels=int(args.max_megapixels * 1e6),
                         allowed_hosts=LOCAL_HOSTS if is_loopback(args.host) else None,
                         settings=cfg.retrieval, progress=True)
    refused = app.state.retrieval.index_error
    if refused:  # `serve --index` with an index it may not use: one line, nothing served
        raise NeuralCodesError(refused)
    print(f"neuralcodes: serving {args.run} on http://{args.host}:{args.port}/ (Ctrl-C stops)",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


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
