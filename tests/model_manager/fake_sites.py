"""A local imitation of Hugging Face's and Civitai's download routes, for download tests.

One `http.server` on 127.0.0.1 answers both sites' routes:
- Hugging Face: `/<owner>/<repo>/resolve|blob/<rev>/<file>`: HEAD and GET redirect (302)
  to `/cdn/<file>` with `X-Linked-Etag` (the sha256) and `X-Linked-Size`;
- Civitai: `/api/v1/model-versions/<v>`, `/api/v1/models/<id>`,
  `/api/v1/model-versions/by-hash/<sha256>`, `/api/download/models/<v>` (302 to the CDN;
  version 7 is gated: 401 without `Authorization: Bearer KEY`);
- `/cdn/<name>`: the file, with Range requests (206). Names starting with `drop-` send
  half the body and close the connection on the first full GET; `huge-` states a 10 GB
  Content-Length; `evil-` answers with a Content-Disposition of `../../evil.safetensors`; `slow-` sends
  64 KB every 50 ms.
Every request is recorded (`requests`: method, path, Range, Authorization).
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = "secret-key"
TEN_GB = 10 << 30


def safetensors_bytes(
    shapes: dict[str, list[int]], metadata: dict[str, str] | None = None
) -> bytes:
    """A valid safetensors file of F32 zeros with these tensor shapes."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, shape in shapes.items():
        n = 4
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


SDXL_LORA = safetensors_bytes(
    {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": [4, 2048],
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_up.weight": [640, 4],
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": [4, 1280],
    },
    {"ss_base_model_version": "sdxl_base_v1-0", "ss_tag_frequency": '{"a": {"zzstyle": 9}}'},
)
SD1_EMBEDDING = safetensors_bytes({"emb_params": [2, 768]})
BIG_BLOB = bytes(range(256)) * 4096  # 1 MB, not a safetensors file


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeSites:
    """The server; `files` maps CDN names to bytes. Use as a context manager."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {
            "style.safetensors": SDXL_LORA,
            "drop-style.safetensors": SDXL_LORA + bytes(200_000),
            "emb.safetensors": SD1_EMBEDDING,
            "huge-model.safetensors": SDXL_LORA,
            "evil-x.safetensors": SDXL_LORA,
            "4x-upscaler.pth": BIG_BLOB,
            "slow-model.safetensors": SDXL_LORA + bytes(8 << 20),
        }
        self.requests: list[tuple[str, str, str | None, str | None]] = []
        self.dropped: set[str] = set()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeSites:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def version(self, v: int) -> dict:
        name, sha256, kind = {
            5: ("style.safetensors", sha(SDXL_LORA), "LORA"),
            6: ("style.safetensors", "0" * 64, "LORA"),  # the site states a wrong hash
            7: ("emb.safetensors", sha(SD1_EMBEDDING), "TextualInversion"),
        }[v]
        return {
            "id": v, "modelId": 100 + v, "name": f"v{v}", "baseModel": "SDXL 1.0",
            "trainedWords": ["zzstyle"], "model": {"name": "Zz Style", "type": kind},
            "images": [{"url": f"{self.url}/cdn/preview.png", "type": "image"}],
            "files": [{"name": name, "primary": True, "sizeKB": len(self.files[name]) / 1024,
                       "hashes": {"SHA256": sha256.upper()}, "type": "Model",
                       "downloadUrl": f"{self.url}/api/download/models/{v}"}],
        }  # fmt: skip

    def _handler(self):
        sites = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self._route(body=False)

            def do_GET(self) -> None:
                self._route(body=True)

            def _route(self, body: bool) -> None:
                path = self.path.split("?")[0]
                auth = self.headers.get("Authorization")
                sites.requests.append((self.command, path, self.headers.get("Range"), auth))
                parts = path.strip("/").split("/")
                if len(parts) >= 5 and parts[2] in ("resolve", "blob"):
                    name = parts[-1]
                    data = sites.files.get(name)
                    if data is None:
                        return self._send(404, b"")
                    return self._send(302, b"", {"Location": f"/cdn/{name}",
                                                 "X-Linked-Etag": f'"{sha(data)}"',
                                                 "X-Linked-Size": str(len(data))})  # fmt: skip
                if path.startswith("/api/v1/model-versions/by-hash/"):
                    wanted = parts[-1].lower()
                    for v in (5, 7):
                        if sites.version(v)["files"][0]["hashes"]["SHA256"].lower() == wanted:
                            return self._json(sites.version(v))
                    return self._send(404, b'{"error": "not found"}')
                if path.startswith("/api/v1/model-versions/"):
                    return self._json(sites.version(int(parts[-1])))
                if path.startswith("/api/v1/models/"):
                    return self._json({"id": 105, "modelVersions": [sites.version(5)]})
                if path.startswith("/api/download/models/"):
                    v = int(parts[-1])
                    if v == 7 and auth != f"Bearer {KEY}":
                        return self._send(401, b'{"error": "login required"}')
                    name = sites.version(v)["files"][0]["name"]
                    return self._send(302, b"", {"Location": f"/cdn/{name}"})
                if path == "/cdn/preview.png":
                    return self._send(200, b"\x89PNG fake", {"Content-Type": "image/png"})
                if path.startswith("/cdn/") and parts[-1] in sites.files:
                    return self._file(parts[-1], body)
                self._send(404, b"")

            def _json(self, data: dict) -> None:
                self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

            def _send(self, status: int, data: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _file(self, name: str, body: bool) -> None:
                data = sites.files[name]
                start = 0
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes="):
                    start = int(ranged[6:].split("-")[0])
                    if start >= len(data):
                        return self._send(416, b"")
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                if name.startswith("evil-"):
                    self.send_header("Content-Disposition",
                                     'attachment; filename="../../evil.safetensors"')  # fmt: skip
                length = TEN_GB if name.startswith("huge-") else len(data) - start
                self.send_header("Content-Length", str(length))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if not body:
                    return
                if name.startswith("drop-") and not ranged and name not in sites.dropped:
                    sites.dropped.add(name)
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if name.startswith("huge-"):
                    self.close_connection = True
                    self.wfile.write(data)
                    return
                if name.startswith("slow-"):  # 64 KB every 50 ms: about 1.3 MB/s
                    for at in range(start, len(data), 1 << 16):
                        self.wfile.write(data[at : at + (1 << 16)])
                        time.sleep(0.05)
                    return
                self.wfile.write(data[start:])

        return Handler
