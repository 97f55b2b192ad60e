"""A wasi:http/proxy component in Python, built with componentize-py.

Every request gets `200`, `content-type: text/plain` and the body `hello from skiff\n`.
The request's path (with query) comes back in the `x-skiff-path` header, so tests can tell
requests apart, and `x-skiff-guest: py` says which example answered.

This is the HEAVY example: the component carries a whole CPython (~18 MB), so a fresh
instance per request measures the host *and* CPython's start-up. Compare with
`hello-http-c`, which answers the same way for a tiny fraction of the cost.

Built by scripts/build-guests.sh:
    componentize-py -d WIT -w wasi:http/proxy@0.2.12 componentize app -o hello-http-py.wasm
where WIT is the `wit/` directory of the wasmtime-wasi-http 48.0.8 crate.
"""

from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)
from componentize_py_types import Ok

BODY = b"hello from skiff\n"


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = request.path_with_query() or "/"
        headers = Fields.from_list(
            [
                ("content-type", b"text/plain"),
                ("content-length", str(len(BODY)).encode()),
                ("x-skiff-guest", b"py"),
                ("x-skiff-path", path.encode()),
            ]
        )
        response = OutgoingResponse(headers)
        response.set_status_code(200)
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        # The stream must be dropped (end of `with`) before the body is finished.
        with body.write() as stream:
            stream.blocking_write_and_flush(BODY)
        OutgoingBody.finish(body, None)
