"""A plain Flask (WSGI) app for the end-to-end tests: runs unmodified under any WSGI server.

Routes: hello, path/SCRIPT_NAME echo, forms, a streamed upload hashed as it is read,
a multipart file upload, a streaming response, a client-abort probe, send_file (which
goes through wsgi.file_wrapper), an exception the server must turn into a 500, and a
meeting point for concurrent views.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator

from flask import Flask, Response, jsonify, request, send_file, stream_with_context

app = Flask(__name__)
# Let exceptions reach the WSGI server: the server, not Flask, answers 500.
app.config["PROPAGATE_EXCEPTIONS"] = True

# A file for /file, written once per process.
FILE_PATH = os.path.join(os.environ.get("E2E_FILE_DIR", "/tmp"), f"flask-file-{os.getpid()}.bin")


@app.get("/")
def hello() -> str:
    return "hello from flask\n"


@app.route("/echo/<path:rest>", methods=["GET", "POST"])
def echo(rest: str) -> Response:
    env = request.environ
    return jsonify(
        rest=rest,
        path=request.path,
        script_root=request.script_root,
        script_name=env["SCRIPT_NAME"],
        path_info=env["PATH_INFO"],
        query=list(request.args.items(multi=True)),
        url=request.url,
        multithread=env["wsgi.multithread"],
    )


@app.post("/form")
def form() -> Response:
    return jsonify(fields=list(request.form.items(multi=True)))


@app.post("/upload")
def upload() -> Response:
    f = request.files["file"]
    digest = hashlib.sha256()
    size = 0
    while block := f.stream.read(1 << 16):
        digest.update(block)
        size += len(block)
    return jsonify(name=f.filename, size=size, sha256=digest.hexdigest(), fields=dict(request.form))


@app.post("/raw")
def raw() -> Response:
    # request.stream reads wsgi.input block by block: nothing is kept.
    digest = hashlib.sha256()
    size = 0
    while block := request.stream.read(1 << 16):
        digest.update(block)
        size += len(block)
    return jsonify(size=size, sha256=digest.hexdigest())


@app.get("/stream")
def stream() -> Response:
    n = int(request.args.get("n", "10"))

    def generate() -> Iterator[str]:
        for i in range(n):
            yield f"chunk {i}\n"

    return Response(
        stream_with_context(generate()), mimetype="text/plain", headers={"X-Accel-Buffering": "no"}
    )


@app.get("/endless")
def endless() -> Response:
    marker = request.args["marker"]

    def generate() -> Iterator[bytes]:
        try:
            for _ in range(1_000_000):  # bounded: about 1 GB
                yield b"x" * 1024
        finally:
            # Runs when the server closes the iterable after the client went away.
            with open(marker, "w") as f:
                f.write("closed\n")

    return Response(generate(), mimetype="application/octet-stream")


@app.get("/file")
def file() -> Response:
    if not os.path.exists(FILE_PATH):
        tmp = FILE_PATH + ".tmp"
        with open(tmp, "wb") as f:
            f.write(bytes(range(256)) * 4096)  # 1 MiB
        os.replace(tmp, FILE_PATH)
    return send_file(FILE_PATH, mimetype="application/octet-stream")


@app.get("/boom")
def boom() -> str:
    raise RuntimeError("boom from flask")


# /meet: each request waits until ``n`` requests with the same key are inside a
# view at once, so ``n`` requests answered "met" prove ``n`` views ran together.
_meetings: dict[str, threading.Barrier] = {}
_meetings_lock = threading.Lock()


@app.get("/meet")
def meet() -> tuple[str, int]:
    key, n = request.args["key"], int(request.args["n"])
    with _meetings_lock:
        barrier = _meetings.setdefault(key, threading.Barrier(n, timeout=10))
    try:
        barrier.wait()  # the timeout only bounds a failure
    except threading.BrokenBarrierError:
        return "fewer views ran at once than requested\n", 503
    return f"met in thread {threading.get_ident()}\n", 200
