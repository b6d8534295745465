"""Loaded by a test server process whose PYTHONPATH starts with this folder
(tests/test_server_cycles.py). It turns the cyclic collector off, so that every reference
cycle the server makes stays until asked for; when ``$SERVER_PROBE_DIR/collect`` appears, a
thread runs a full collection with ``gc.DEBUG_SAVEALL`` and writes to
``$SERVER_PROBE_DIR/garbage.json`` the types of the cyclic garbage found and how many
objects of the server's WebSocket connections are still alive."""

import os

if os.environ.get("SERVER_PROBE_DIR"):
    import collections
    import gc
    import json
    import threading
    import time
    from pathlib import Path

    # What a server keeps per WebSocket connection (daphne: the TCP transport, the HTTP
    # channel that stays its producer, the WebSocket protocol).
    CONNECTION_OBJECTS = {
        "twisted.internet.tcp.Server",
        "twisted.web.http.HTTPChannel",
        "daphne.ws_protocol.WebSocketProtocol",
        "uvicorn.protocols.websockets.websockets_impl.WebSocketProtocol",
        "uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol",
    }

    def _name(o: object) -> str:
        return f"{type(o).__module__}.{type(o).__qualname__}"

    def _probe(folder: Path) -> None:
        request = folder / "collect"
        while True:
            time.sleep(0.02)
            if not request.exists():
                continue
            request.unlink()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                gc.collect()
                garbage = collections.Counter(_name(o) for o in gc.garbage)
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
            gc.collect()  # free what DEBUG_SAVEALL kept
            alive = sum(_name(o) in CONNECTION_OBJECTS for o in gc.get_objects())
            partial = folder / "garbage.json.part"
            partial.write_text(json.dumps({"garbage": garbage, "alive": alive}))
            partial.rename(folder / "garbage.json")

    gc.disable()
    threading.Thread(
        target=_probe, args=(Path(os.environ["SERVER_PROBE_DIR"]),), daemon=True
    ).start()
