"""A wasi:http/proxy component in Python that answers with what it fetched from the
container beside it in its pod: each request GETs the same path from
`http://localhost:8081` (the sidecar) and returns `front got: <the sidecar's body>`.

Outgoing requests from a Wasm guest are denied by Skiff except to its pod's own
localhost (and to hosts the pod lists in the `skiff.dev/allowed-outgoing-hosts`
annotation); the node makes them from inside the pod's network namespace.

Built by scripts/build-guests.sh like hello-http-py.
"""

from wit_world import exports
from wit_world.imports import outgoing_handler
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Get,
    OutgoingBody,
    OutgoingRequest,
    OutgoingResponse,
    ResponseOutparam,
    Scheme_Http,
)
from componentize_py_types import Err, Ok

SIDECAR = "localhost:8081"


def unwrap(value):
    """Strips Ok wrappers; an Err becomes an exception."""
    while isinstance(value, (Ok, Err)):
        if isinstance(value, Err):
            raise RuntimeError(f"{value.value}")
        value = value.value
    return value


def fetch(path: str) -> tuple[int, bytes]:
    request = OutgoingRequest(Fields())
    request.set_method(Method_Get())
    request.set_scheme(Scheme_Http())
    request.set_authority(SIDECAR)
    request.set_path_with_query(path)
    future = outgoing_handler.handle(request, None)
    future.subscribe().block()
    response = unwrap(future.get())
    status = response.status()
    body = response.consume()
    stream = body.stream()
    data = b""
    while True:
        stream.subscribe().block()
        try:
            data += stream.read(65536)
        except Exception:
            break
    return status, data


def reply(response_out: ResponseOutparam, status: int, text: bytes) -> None:
    headers = Fields.from_list(
        [("content-type", b"text/plain"), ("content-length", str(len(text)).encode())]
    )
    response = OutgoingResponse(headers)
    response.set_status_code(status)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    with body.write() as stream:
        stream.blocking_write_and_flush(text)
    OutgoingBody.finish(body, None)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = request.path_with_query() or "/"
        try:
            status, data = fetch(path)
        except Exception as e:  # the sidecar is down, or the request was denied
            reply(response_out, 502, f"front: sidecar unreachable: {e}\n".encode())
            return
        reply(response_out, 200 if status == 200 else 502, b"front got: " + data)
