"""Run llama-cpp-python's OpenAI-compatible server on a port the OS picks (a script, not a test).

`python llama_openai_server.py --model FILE.gguf` binds 127.0.0.1:0 itself and hands the bound socket
to uvicorn, so no other process can take the port between choosing and listening, then prints
`PORT <n>` once the model is loaded. `interrupt_requests` is off: by default this server ends a
running stream whenever another request arrives, which would hide whether a closed stream really
stopped decoding.
"""

from __future__ import annotations

import argparse
import socket

import uvicorn
from llama_cpp.server.app import create_app
from llama_cpp.server.settings import ModelSettings, ServerSettings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(
        server_settings=ServerSettings(host="127.0.0.1", port=port, interrupt_requests=False),
        model_settings=[ModelSettings(model=args.model, n_ctx=args.n_ctx, n_threads=args.threads,
                                      n_threads_batch=args.threads, logits_all=False, verbose=False)],
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    print(f"PORT {port}", flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
