"""Storage faults: transient S3 failures are retried with backoff, answers about the data are not.

The S3 server is moto's, served by this module on a fixed loopback port so that a test
can stop it - listening socket closed and every open connection dropped, as when the
server process dies - and start it again: moto keeps its buckets in module globals of
this process, so the objects are still there after the restart. The server can also
answer chosen requests with a fault (an error status, a body cut short).

Unit tests: :func:`is_transient` and :func:`call_with_retries` on their own; the readers
of ``s3io`` and the S3 listing through throttling, 5xx, cut bodies and a few seconds of
outage, and 403/404/412 answered once, never retried. End to end: the job over photos
and a video segmented into several shards, with the server going down for 5 s as the
job writes its second output object, completes without a failed frame and with the same
tables as a run without the outage.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from pathlib import Path

import pytest
from werkzeug.serving import ThreadedWSGIServer

from openpose_ray.jobconfig import S3Config, SourcesConfig
from openpose_ray.retry import call_with_retries, is_transient
from openpose_ray.sources import AccessDenied, ObjectChanged, ObjectMissing, iter_objects, listing, s3io
from openpose_ray.sources.s3io import open_stream, open_uri, read_bytes

REPO_ROOT = Path(__file__).resolve().parent.parent
BUCKET = "outage-media"  # moto's buckets are global to the process: names no other module uses
OUTPUT_BUCKET = "outage-results"
OUTAGE_S = 3.0  # unit tests; the end-to-end test stops the server for 5 s

# A WSGI app answering in place of moto: (environ, start_response, moto's app) -> body chunks.
Fault = Callable[[dict, Callable, Callable], Iterator[bytes]]


class _Server(ThreadedWSGIServer):
    """werkzeug's threaded server, keeping the open connections so that they can be dropped."""

    def __init__(self, *args, **kwargs):
        self.connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        with self._lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._lock:
            connections = list(self.connections)
        for connection in connections:  # wakes the handler thread; the client reads EOF or gets a reset
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class RestartableS3Server:
    """moto's S3 API on 127.0.0.1:<port>: stop() takes it down with its connections, start() brings it back.

    ``requests`` logs every request as a dict (method, path, query, range, if_match);
    :meth:`fail_next` makes the next matching requests answer with a fault.
    """

    def __init__(self):
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        self._moto = DomainDispatcherApplication(create_backend_app)
        self._lock = threading.Lock()
        self._faults: list[tuple[Callable[[dict], bool], Fault]] = []
        self.requests: list[dict] = []
        self.port = 0
        self._server: _Server | None = None
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        from moto.moto_server.werkzeug_app import MotoRequestHandler

        assert self._server is None, "already running"
        self._server = _Server("127.0.0.1", self.port, self._app, handler=MotoRequestHandler)
        self.port = self._server.server_address[1]  # the same port on every restart
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        server.shutdown()  # serve_forever returns and closes the listening socket: connections are refused
        self._thread.join()
        server.drop_connections()

    def fail_next(self, count: int, fault: Fault, method: str = "GET") -> None:
        """Answer the next ``count`` requests with HTTP method ``method`` by ``fault`` instead of moto."""
        for _ in range(count):
            self.add_fault(lambda request: request["method"] == method, fault)

    def add_fault(self, matches: Callable[[dict], bool], fault: Fault) -> None:
        """Answer the first request (a dict as in ``requests``) that ``matches`` by ``fault`` instead of moto."""
        with self._lock:
            self._faults.append((matches, fault))

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self._faults.clear()

    def _app(self, environ: dict, start_response):
        request = {"method": environ["REQUEST_METHOD"], "path": environ["PATH_INFO"],
                   "query": environ.get("QUERY_STRING", ""), "range": environ.get("HTTP_RANGE"),
                   "if_match": environ.get("HTTP_IF_MATCH")}
        with self._lock:
            self.requests.append(request)
            fault = next((f for f in self._faults if f[0](request)), None)
            if fault is not None:
                self._faults.remove(fault)
        if fault is not None:
            return fault[1](environ, start_response, self._moto)
        return self._moto(environ, start_response)


def error_answer(status: int, code: str) -> Fault:
    """An S3 error document with HTTP ``status`` and error ``code`` (e.g. 503 SlowDown)."""
    def fault(environ, start_response, moto):
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>injected by the test</Message></Error>").encode()
        start_response(f"{status} {HTTPStatus(status).phrase}",
                       [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
        return [body]
    return fault


def cut_body(fraction: float = 0.5) -> Fault:
    """moto's answer with its full Content-Length, but the connection drops after ``fraction`` of the body."""
    def fault(environ, start_response, moto):
        answer = {}

        def keep(status, headers, exc_info=None):
            answer.update(status=status, headers=headers)

        body = b"".join(moto(environ, keep))
        start_response(answer["status"], answer["headers"])
        yield body[: int(len(body) * fraction)]
        environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
    return fault


@contextlib.contextmanager
def outage(server: RestartableS3Server, seconds: float = OUTAGE_S):
    """The server is down from now on for ``seconds``; leaving the block waits for it to be back."""
    server.stop()
    timer = threading.Timer(seconds, server.start)
    timer.start()
    try:
        yield
    finally:
        timer.join()


@pytest.fixture(scope="module")
def server() -> Iterator[RestartableS3Server]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")  # moto accepts any credentials
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.delenv("AWS_PROFILE", raising=False)
        server = RestartableS3Server()
        try:
            yield server
        finally:
            if server.running:
                server.stop()


@pytest.fixture
def s3(server) -> Iterator[S3Config]:
    """How to reach the server; its request log and faults are cleared before and after each test."""
    config = S3Config(endpoint_url=server.endpoint)
    client = s3io.s3_client(config)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    server.clear()
    yield config
    server.clear()


def put(s3: S3Config, key: str, data: bytes) -> str:
    s3io.s3_client(s3).put_object(Bucket=BUCKET, Key=key, Body=data)
    return f"s3://{BUCKET}/{key}"


def gets(server: RestartableS3Server, key: str) -> list[dict]:
    return [r for r in server.requests if r["method"] == "GET" and r["path"] == f"/{BUCKET}/{key}"]


# --- is_transient and call_with_retries -----------------------------------------------------


def client_error(code: str, status: int):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


def arrow_error(kind: str) -> OSError:
    """As pyarrow's S3 filesystem words it (arrow/filesystem/s3_internal.h ErrorToStatus)."""
    return OSError(f"When reading information for key 'k' in bucket 'b': AWS Error {kind} during HeadObject "
                   "operation: curlCode: 7, Could not connect to server")


def transient_errors() -> list:
    import botocore.exceptions as be
    import urllib3.exceptions as ue

    url = "http://127.0.0.1:1/b/k"
    return [
        client_error("SlowDown", 503), client_error("Throttling", 400), client_error("ThrottlingException", 400),
        client_error("RequestTimeout", 400), client_error("InternalError", 500), client_error("ServiceUnavailable", 503),
        client_error("502", 502), client_error("504", 504), client_error("TooManyRequests", 429),
        ConnectionResetError(104, "Connection reset by peer"), ConnectionRefusedError(111, "Connection refused"),
        BrokenPipeError(32, "Broken pipe"), TimeoutError("timed out"),
        be.EndpointConnectionError(endpoint_url=url), be.ConnectTimeoutError(endpoint_url=url),
        be.ReadTimeoutError(endpoint_url=url), be.ConnectionClosedError(endpoint_url=url),
        be.ResponseStreamingError(error=ue.ProtocolError("Connection broken: IncompleteRead")),
        be.IncompleteReadError(actual_bytes=10, expected_bytes=20),
        ue.ProtocolError("Connection aborted."),
        arrow_error("NETWORK_CONNECTION"), arrow_error("SLOW_DOWN"), arrow_error("SERVICE_UNAVAILABLE"),
        arrow_error("THROTTLING"), arrow_error("UNKNOWN (HTTP status 503)"), arrow_error("INTERNAL_FAILURE"),
    ]


def permanent_errors() -> list:
    return [
        client_error("NoSuchKey", 404), client_error("404", 404), client_error("AccessDenied", 403),
        client_error("403", 403), client_error("InvalidObjectState", 403), client_error("PreconditionFailed", 412),
        client_error("412", 412), client_error("NoSuchBucket", 404), client_error("InvalidRange", 416),
        client_error("NotImplemented", 501),
        arrow_error("ACCESS_DENIED"), arrow_error("NO_SUCH_KEY"), arrow_error("UNKNOWN (HTTP status 501)"),
        FileNotFoundError(2, "No such file or directory"), PermissionError(13, "Permission denied"),
        OSError("disk full"), ValueError("bad"), ObjectMissing("gone"), ObjectChanged("changed"), AccessDenied("no"),
    ]


@pytest.mark.parametrize("error", transient_errors(), ids=lambda e: f"{type(e).__name__}:{str(e)[:50]}")
def test_transient_errors(error):
    assert is_transient(error)


@pytest.mark.parametrize("error", permanent_errors(), ids=lambda e: f"{type(e).__name__}:{str(e)[:50]}")
def test_answers_about_the_data_are_not_transient(error):
    assert not is_transient(error)


def failing(errors: list[BaseException], result="done"):
    """A function raising ``errors`` one per call, then returning ``result``; ``.calls`` counts its calls."""
    def fn():
        fn.calls += 1
        if fn.calls <= len(errors):
            raise errors[fn.calls - 1]
        return result
    fn.calls = 0
    return fn


def test_retries_back_off_with_full_jitter_and_log_redacted(caplog):
    delays: list[float] = []
    errors = [ConnectionResetError("reset; X-Amz-Signature=deadbeef")] * 6
    fn = failing(errors)
    with caplog.at_level(logging.WARNING, logger="openpose_ray.retry"):
        assert call_with_retries(fn, what="GET s3://b/k?X-Amz-Credential=AKIAKEY", attempts=8, base_backoff_s=0.5,
                                 max_backoff_s=3.0, sleep=delays.append) == "done"
    assert fn.calls == 7
    caps = [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]  # base * 2**n, at most max_backoff_s
    assert len(delays) == 6 and all(0.0 <= d <= cap for d, cap in zip(delays, caps)), delays
    assert len(set(delays)) == 6  # jittered, not a fixed schedule
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 6 and all(r.levelno == logging.WARNING for r in caplog.records)
    assert "GET s3://b/k?X-Amz-Credential=<redacted> failed (attempt 1 of 8), retrying in" in messages[0]
    assert "ConnectionResetError: reset; X-Amz-Signature=<redacted>" in messages[0]
    assert not any("deadbeef" in m or "AKIAKEY" in m for m in messages)


def test_gives_up_after_the_attempts_with_the_last_error():
    delays: list[float] = []
    fn = failing([client_error("SlowDown", 503)] * 3 + [TimeoutError("the last")])
    with pytest.raises(TimeoutError, match="the last"):
        call_with_retries(fn, what="GET s3://b/k", attempts=4, sleep=delays.append)
    assert fn.calls == 4 and len(delays) == 3


def test_default_backoff_is_about_a_minute_at_most():
    """8 attempts (s3.max_attempts' default): at most ~52 s of waiting, half of it on average."""
    delays: list[float] = []
    with pytest.raises(ConnectionRefusedError):
        call_with_retries(failing([ConnectionRefusedError()] * 8), what="x", attempts=8, sleep=delays.append)
    assert len(delays) == 7 and sum(delays) <= 0.5 + 1 + 2 + 4 + 8 + 16 + 20


@pytest.mark.parametrize("error", [client_error("NoSuchKey", 404), client_error("AccessDenied", 403),
                                   client_error("PreconditionFailed", 412), ValueError("a bug")],
                         ids=lambda e: str(e)[:40])
def test_permanent_errors_are_raised_at_once(error):
    delays: list[float] = []
    fn = failing([error])
    with pytest.raises(type(error)):
        call_with_retries(fn, what="GET s3://b/k", attempts=8, sleep=delays.append)
    assert fn.calls == 1 and delays == []


# --- the readers and the listing against a faulty server -------------------------------------


def test_throttling_and_server_errors_are_retried(server, s3):
    data = os.urandom(10_000)
    uri = put(s3, "throttled.bin", data)
    server.fail_next(2, error_answer(503, "SlowDown"))
    server.fail_next(1, error_answer(500, "InternalError"))
    assert read_bytes(uri, s3) == data
    assert len(gets(server, "throttled.bin")) == 4

    server.clear()
    server.fail_next(1, error_answer(503, "SlowDown"), method="HEAD")
    server.fail_next(1, error_answer(502, "BadGateway"))
    with open_uri(uri, s3, block_size=4096) as reader:
        assert reader.read() == data
        assert reader.requests == 3
    assert [r["method"] for r in server.requests] == ["HEAD", "HEAD", "GET", "GET", "GET", "GET"]


@pytest.mark.parametrize("reader", ["read_bytes", "open_uri", "open_stream"])
def test_answers_about_the_data_are_not_retried(server, s3, reader):
    read = {"read_bytes": read_bytes, "open_uri": open_uri, "open_stream": open_stream}[reader]
    uri = put(s3, f"kept-{reader}.bin", b"content")
    server.clear()

    with pytest.raises(ObjectMissing):
        read(f"s3://{BUCKET}/never-there.bin", s3)
    with pytest.raises(ObjectChanged):
        read(uri, s3, expected_version="0123456789abcdef0123456789abcdef")  # 412 PreconditionFailed
    method = "HEAD" if reader == "open_uri" else "GET"
    server.fail_next(1, error_answer(403, "AccessDenied"), method=method)
    with pytest.raises(AccessDenied):
        read(uri, s3)
    assert [r["method"] for r in server.requests] == [method] * 3  # one request each: no retry


def test_a_body_cut_midway_is_asked_for_again(server, s3):
    data = os.urandom(300_000)
    uri = put(s3, "cut.bin", data)

    server.fail_next(1, cut_body(0.5))
    assert read_bytes(uri, s3) == data
    assert len(gets(server, "cut.bin")) == 2

    server.clear()
    server.fail_next(1, cut_body(0.5))
    with open_uri(uri, s3, block_size=128 * 1024) as reader:
        reader.seek(140_000)
        assert reader.read(100_000) == data[140_000:240_000]
    assert [r["range"] for r in gets(server, "cut.bin")] == ["bytes=131072-262143"] * 2

    # The sequential stream asks for the rest only, from the first byte it has not returned,
    # pinned to the ETag of its first answer.
    server.clear()
    server.fail_next(1, cut_body(0.5))
    with contextlib.closing(open_stream(uri, s3)) as stream:
        chunks = iter(functools.partial(stream.read, 16 * 1024), b"")
        assert b"".join(chunks) == data
        assert stream.requests == 2
    first, second = gets(server, "cut.bin")
    assert first["range"] is None and first["if_match"] is None
    resumed_at = int(second["range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= 150_000
    assert second["if_match"] == s3io.s3_client(s3).head_object(Bucket=BUCKET, Key="cut.bin")["ETag"]


def test_a_stream_resumed_on_a_replaced_object_raises_object_changed(server, s3):
    uri = put(s3, "replaced.bin", os.urandom(200_000))
    server.fail_next(1, cut_body(0.5))
    with contextlib.closing(open_stream(uri, s3)) as stream:
        assert len(stream.read(1000)) == 1000
        put(s3, "replaced.bin", os.urandom(200_000))
        with pytest.raises(ObjectChanged):
            stream.read()


def test_reads_survive_an_outage(server, s3):
    data = os.urandom(24 * 1024 * 1024)  # more than the socket buffers hold: the stream is cut mid-body
    uri = put(s3, "big.bin", data)
    stream = open_stream(uri, s3)
    reader = open_uri(uri, s3, block_size=1024 * 1024)
    assert stream.read(1000) == data[:1000] and reader.read(1000) == data[:1000]
    results = {}

    def run(name, fn):
        results[name] = fn()

    with outage(server):
        readers = [threading.Thread(target=run, args=args) for args in (
            ("whole", lambda: read_bytes(uri, s3)), ("stream", stream.read), ("blocks", reader.read))]
        for thread in readers:
            thread.start()
    for thread in readers:
        thread.join(60)
    assert results.get("whole") == data
    assert results.get("stream") == data[1000:]
    assert results.get("blocks") == data[1000:]
    assert stream.requests == 2  # the stream went on with a ranged GET of the rest
    stream.close()
    reader.close()


def test_listing_survives_an_outage_page_by_page(server, s3, monkeypatch):
    monkeypatch.setattr(listing, "_S3_PAGE_KEYS", 2)
    keys = [f"listed/{i:02d}.jpg" for i in range(7)]
    for key in keys:
        put(s3, key, key.encode())
    server.clear()
    objects = iter_objects(f"s3://{BUCKET}/listed/", SourcesConfig(), s3)
    first = [next(objects) for _ in range(3)]  # two pages listed
    with outage(server):
        rest = list(objects)  # the third page is asked for while the server is down
    assert [o.uri for o in first + rest] == [f"s3://{BUCKET}/{key}" for key in keys]
    pages = [r for r in server.requests if r["method"] == "GET" and "list-type=2" in r["query"]]
    assert len(pages) == 4  # 2, 2, 2, 1 keys: refused requests never reached the server
    assert sum("continuation-token" not in r["query"] for r in pages) == 1  # the listing did not start over


# --- end to end --------------------------------------------------------------------------


PHOTOS = 2
CLIP_FRAMES = 32


def short_clip(source: Path, target: Path, frames: int, size: tuple[int, int]) -> None:
    """The first ``frames`` frames of ``source`` at ``size`` (width, height), as MPEG-4 Part 2 in MP4.

    Re-encoded rather than cut: the street video has key frames at 0 and 150 only, and
    B-frames, so a cut copy would not end cleanly. The same scene, a fraction of the work.
    """
    import av

    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        stream = src.streams.video[0]
        out = dst.add_stream("mpeg4", rate=stream.average_rate)  # a key frame every 12 frames: segments seek
        out.width, out.height, out.pix_fmt = *size, "yuv420p"
        out.codec_context.bit_rate = 2_000_000
        for index, frame in enumerate(src.decode(stream)):
            if index == frames:
                break
            dst.mux(out.encode(frame.reformat(*size, "yuv420p")))
        dst.mux(out.encode(None))


@pytest.fixture
def job_inputs(server, s3, labelled_photos, data_dir, tmp_path) -> list[str]:
    """Under s3://outage-media/job/: 2 of the labelled photos and a 32-frame clip of the street video."""
    client = s3io.s3_client(s3)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=OUTPUT_BUCKET)
    files = {f"job/photos/{photo.name}": photo for photo in labelled_photos[:PHOTOS]}
    clip = tmp_path / "street_clip.mp4"
    short_clip(data_dir / "videos" / "street_720p_h264.avi", clip, CLIP_FRAMES, (640, 360))
    files[f"job/videos/{clip.name}"] = clip
    for key, path in files.items():
        client.upload_file(str(path), BUCKET, key)
    return sorted(files)


def run_annotation(s3: S3Config, output_prefix: str) -> dict:
    from openpose_ray.config_loader import load_config
    from openpose_ray.pipeline.runner import run_job

    return run_job(load_config(REPO_ROOT / "configs" / "s3.yaml", [
        f"input=[s3://{BUCKET}/job/]", f"output=s3://{OUTPUT_BUCKET}/{output_prefix}/",
        f"s3.endpoint_url={s3.endpoint_url}", "s3.region=us-east-1",
        "model.net_size=[216,184]", "model.resize_mode=stretch",  # a small input: the same work for both runs, faster
        f"sources.frames_per_segment={CLIP_FRAMES // 4}",  # 3 video shards: cut at the key frames 12 and 24
    ]))


class OutageAtSecondOutput:
    """A fault taking the server down for ``seconds`` once the first object under ``prefix`` is written.

    The first write request (PUT or POST) for another object under the prefix, in practice
    the frames file of the first shard just after its people file, meets the server going
    down: its connection drops unanswered, then connections are refused until the restart.
    Triggered by the server rather than by polling it, so that a write always meets the outage.
    """

    def __init__(self, server: RestartableS3Server, prefix: str, seconds: float):
        self.server, self.prefix, self.seconds = server, prefix, seconds
        self.first_object: str | None = None
        self.stopped_at = self.restarted_at = None
        self._down = threading.Event()
        self._thread: threading.Thread | None = None
        server.add_fault(self.matches, self)

    def matches(self, request: dict) -> bool:
        if request["method"] not in ("PUT", "POST") or not request["path"].startswith(self.prefix):
            return False
        self.first_object = self.first_object or request["path"]
        return request["path"] != self.first_object

    def __call__(self, environ, start_response, moto):
        self._thread = threading.Thread(target=self._outage)
        self._thread.start()
        self._down.wait()  # this request's connection is among those dropped
        raise ConnectionResetError("the S3 server went down")  # werkzeug: a dropped connection, nothing more

    def _outage(self) -> None:
        self.stopped_at = time.monotonic()
        with outage(self.server, self.seconds):
            self._down.set()
        self.restarted_at = time.monotonic()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()


def read_rows(s3: S3Config, prefix: str, table: str) -> list[dict]:
    """Rows of one output table, sorted, without the columns that name the run or shard."""
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    filesystem = pafs.S3FileSystem(endpoint_override=s3.endpoint_url.removeprefix("http://"), scheme="http",
                                   region="us-east-1", access_key="testing", secret_key="testing")
    rows = ds.dataset(f"{OUTPUT_BUCKET}/{prefix}/{table}", filesystem=filesystem, format="parquet",
                      partitioning="hive").to_table().to_pylist()
    for row in rows:
        del row["run_id"], row["shard_id"]

    def key(row: dict) -> tuple:
        return row["source"], row["member"] or "", row["frame_index"], row.get("person_index", -1)

    return sorted(rows, key=key)


def test_job_completes_through_an_outage_with_complete_output(server, s3, job_inputs, ray_session):
    calm = run_annotation(s3, "calm")
    assert calm["frames_failed"] == 0 and calm["frames"] == PHOTOS + CLIP_FRAMES and calm["shards"] == 1 + 3

    trigger = OutageAtSecondOutput(server, f"/{OUTPUT_BUCKET}/stormy/", seconds=5.0)
    try:
        stormy = run_annotation(s3, "stormy")
    finally:
        trigger.join()
    assert trigger.stopped_at is not None, "the job ended before writing its second output object"
    assert trigger.restarted_at - trigger.stopped_at >= 5.0
    assert stormy["frames_failed"] == 0
    assert {k: stormy[k] for k in ("frames", "people", "shards", "inputs")} == \
        {k: calm[k] for k in ("frames", "people", "shards", "inputs")}
    listed = s3io.s3_client(s3).list_objects_v2(Bucket=OUTPUT_BUCKET, Prefix="stormy/")["Contents"]
    assert "stormy/summary.json" in [item["Key"] for item in listed]
    for table in ("frames", "people"):
        calm_rows, stormy_rows = read_rows(s3, "calm", table), read_rows(s3, "stormy", table)
        assert len(stormy_rows) == len(calm_rows) > 0
        assert stormy_rows == calm_rows, table


def test_a_tar_cut_by_an_outage_is_read_again_whole_by_the_next_run(server, s3, labelled_photos, tmp_path,
                                                                      ray_session):
    """Frames lost to storage (error_kind storage_unavailable) make their tar (or segment) not done:
    the next run reads it again although its first members were annotated, and keeps one row each."""
    import io
    import tarfile

    from openpose_ray.config_loader import load_config
    from openpose_ray.pipeline.runner import run_job
    from openpose_ray.tables import read_table

    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for index, photo in enumerate(labelled_photos[:4]):
            tar.add(str(photo), arcname=f"photo_{index}.jpg")
    put(s3, "retry/album.tar", archive.getvalue())
    client = s3io.s3_client(s3)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=OUTPUT_BUCKET)
    config = load_config(REPO_ROOT / "configs" / "s3.yaml", [
        f"input=[s3://{BUCKET}/retry/]", f"output=s3://{OUTPUT_BUCKET}/retried/", f"s3.endpoint_url={s3.endpoint_url}",
        "s3.region=us-east-1", "s3.max_attempts=2", "model.net_size=[216,184]", "model.resize_mode=stretch"])

    def reads_of_the_tar(request: dict) -> bool:
        return request["method"] == "GET" and request["path"] == f"/{BUCKET}/retry/album.tar"

    server.add_fault(reads_of_the_tar, cut_body(0.6))  # the stream breaks in the third photo ...
    for _ in range(30):  # ... and stays broken through the retries of this run (ours and the SDK's)
        server.add_fault(reads_of_the_tar, error_answer(503, "ServiceUnavailable"))
    cut = run_job(config)
    frames = read_table(config.output, "frames", s3).to_pylist()
    assert [(f["member"], f["status"], f["error_kind"]) for f in frames] == [
        ("photo_0.jpg", "ok", None), ("photo_1.jpg", "ok", None), ("photo_2.jpg", "error", "storage_unavailable")]
    assert cut["frames_failed"] == 1

    server.clear()
    again = run_job(config)
    assert again["frames_failed"] == 0 and again["frames"] == 4 and again["inputs"]["already_done"] == 0
    frames = read_table(config.output, "frames", s3).to_pylist()
    assert [(f["member"], f["status"], f["run_id"]) for f in frames] == [
        (f"photo_{i}.jpg", "ok", again["run_id"]) for i in range(4)]
    people = read_table(config.output, "people", s3).to_pylist()
    assert {p["run_id"] for p in people} == {again["run_id"]}
    assert run_job(config)["inputs"]["already_done"] == 1  # now done
