"""A moto S3 server on 127.0.0.1 for the tests that read or write `s3://` (run folders, Ray Data inputs,
LoRA adapters). Its address and dummy credentials go into the environment while it runs, set before any
Ray starts so Ray's workers (which inherit the driver's environment) reach it too; pyarrow's and boto3's
S3 clients read AWS_ENDPOINT_URL_S3."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def local_s3() -> Iterator[str]:
    """Run the server; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            yield env["AWS_ENDPOINT_URL_S3"]
    finally:
        server.stop()
