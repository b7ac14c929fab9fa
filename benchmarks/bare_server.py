"""The floor under `bench_inference`'s HTTP figure: the service's own `/infer` work (validation,
replay, the batcher and its forward thread, orjson) behind the least HTTP server that can carry
it, an asyncio protocol over httptools that writes each answer in one send.

A measuring instrument, not a server to deploy: keep-alive HTTP/1.1 with Content-Length bodies,
`POST /infer` and `GET /healthz` only, no auth, limits or metrics. What uvicorn and the ASGI
stack add is the difference between its figure and the real server's.

    python benchmarks/bare_server.py --model M --port P [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import cast

import httptools
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance import settings  # noqa: E402
from appliance.inference.__main__ import GIL_SWITCH_S  # noqa: E402
from appliance.inference.app import Service  # noqa: E402
from appliance.inference.schemas import InferRequest  # noqa: E402


class Connection(asyncio.Protocol):
    def __init__(self, service: Service) -> None:
        self.service = service
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.answer(400, b'{"error":"bad request"}')
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        url, body = self.url, b"".join(self.body)
        self.url, self.body = b"", []
        asyncio.get_running_loop().create_task(self.handle(url, body))

    async def handle(self, url: bytes, body: bytes) -> None:
        service = self.service
        if url == b"/healthz":
            self.answer(200, b'{"status":"ok"}')
        elif url == b"/infer":
            try:
                req = InferRequest.model_validate_json(body)
                assert service.state.predictor is not None
                self.answer(200, orjson.dumps(await service.infer(service.state.predictor, req)))
            except Exception as exc:  # noqa: BLE001 - the benchmark reads the status
                self.answer(500, orjson.dumps({"error": str(exc)}))
        else:
            self.answer(404, b'{"error":"not found"}')

    def answer(self, status: int, body: bytes) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 %d -\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (status, len(body), body))


async def serve(service: Service, port: int) -> None:
    service.batcher.start()
    server = await asyncio.get_running_loop().create_server(
        lambda: Connection(service), "127.0.0.1", port)
    await server.serve_forever()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    service = Service(settings.load(settings.InferenceSettings), args.model, Path.cwd(),
                      args.device)
    if not service.load_once():
        print(f"error: {service.state.reason}", file=sys.stderr)
        return 1
    sys.setswitchinterval(GIL_SWITCH_S)
    uvloop.run(serve(service, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
