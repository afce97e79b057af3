#!/usr/bin/env python3
"""The shared nginx/wrk harness (peers.py) run on another app than its ``apps:hello``.

Usage::

    python bench/peers_apps.py [--peers DIR] APP [peers.py options and backends]

``APP`` is ``MODULE:ATTR`` or one of the short names below; ``--peers`` is the
folder of peers.py (default: ``$PEERS_DIR``, else the first ``shared/bench``
found beside the repository or a folder above it). Every backend peers.py
starts with ``apps:hello`` (aioscgi, trioscgi, fcgisgi, uvicorn-http,
hypercorn-trio-http…) gets ``APP`` instead;
bench/ is put on their PYTHONPATH. Three more backends run trioscgi with the
application's asyncio loop hosted one way whatever the app, to compare designs
(bench/apploop_probes.py): ``trioscgi-thread`` (a loop of its own in a second
thread), ``trioscgi-driven`` (a loop in the trio thread, run in passes by a
trio task) and ``trioscgi-trio-asyncio`` (trio-asyncio's loop). With
``TRIOSCGI_BASE`` set to another source tree of trioscgi (e.g. ``git archive``
of the commit before a change), ``trioscgi-base`` runs that one, for a
before/after in one run.

Example::

    python bench/peers_apps.py django --rounds 3 aioscgi trioscgi uvicorn-http
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
APPS = {
    "django": "asyncio_apps.django_hello:application",
    "quart": "asyncio_apps.quart_hello:app",
    "starlette": "asyncio_apps.starlette_hello:app",
    "hello": "apps:hello",
}


def main() -> None:
    args = sys.argv[1:]
    peers_dir = os.environ.get("PEERS_DIR", "")
    if not peers_dir:
        folder = os.path.dirname(HERE)
        while not os.path.exists(os.path.join(folder, "shared", "bench", "peers.py")):
            if os.path.dirname(folder) == folder:
                sys.exit("peers.py not found: pass --peers DIR or set PEERS_DIR")
            folder = os.path.dirname(folder)
        peers_dir = os.path.join(folder, "shared", "bench")
    if args[:1] == ["--peers"]:
        peers_dir, args = args[1], args[2:]
    if not args or args[0].startswith("-"):
        sys.exit(__doc__)
    spec = APPS.get(args[0], args[0])
    module, _, attr = spec.partition(":")
    sys.path.insert(0, os.path.abspath(peers_dir))
    import peers  # the shared harness, unchanged

    python = peers.PY
    original = peers.backend_cmds

    def backend_cmds(d: str) -> dict[str, tuple[str, str | None, list[str] | None]]:
        cmds = original(d)
        out = {}
        for name, (location, sock, given) in cmds.items():
            argv = given
            if given is not None:
                argv = [
                    a.replace("apps:hello", spec).replace(
                        "apps.hello", f"__import__({module!r}, fromlist=['_']).{attr}"
                    )
                    for a in given
                ]
            out[name] = (location, sock, argv)
        trio_cmd = [python, "-m", "trioscgi", "--bind", f"unix:{d}/scgi.sock", "--app-loop"]
        out["trioscgi-thread"] = (
            "/scgi/",
            "scgi.sock",
            [*trio_cmd, "trio", "--lifespan", "on", "apploop_probes:thread_app"],
        )
        out["trioscgi-driven"] = (
            "/scgi/",
            "scgi.sock",
            [*trio_cmd, "trio", "--lifespan", "on", "apploop_probes:driven_app"],
        )
        out["trioscgi-trio-asyncio"] = (
            "/scgi/",
            "scgi.sock",
            [*trio_cmd, "trio", "--lifespan", "on", "apploop_probes:trio_asyncio_app"],
        )
        base = os.environ.get("TRIOSCGI_BASE")
        if base:
            run_base = (
                f"import sys, runpy; sys.path.insert(0, {base!r});"
                " runpy.run_module('trioscgi', run_name='__main__', alter_sys=True)"
            )
            out["trioscgi-base"] = (
                "/scgi/",
                "scgi.sock",
                [python, "-c", run_base, "--bind", f"unix:{d}/scgi.sock", spec],
            )
        return out

    peers.backend_cmds = backend_cmds
    os.environ["PROBE_APP"] = spec
    os.environ["PYTHONPATH"] = HERE + os.pathsep + os.environ.get("PYTHONPATH", "")
    sys.argv = [peers.__file__, *args[1:]]
    peers.main()


if __name__ == "__main__":
    main()
