"""Bad input: thousands of malformed, truncated, oversized and wrong-typed requests.

They go to one running service, concurrently, with well-formed requests in
between. The service must stay up, answer each with the code the OTLP/HTTP
specification asks for, and land every span of the well-formed ones.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
from dataclasses import dataclass, field

import aiohttp
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from wflo_otel.exporters import otlp
from wflo_otel.ingest import IngestService
from wflo_otel.ingest.synthetic import make_request, span_ids, to_json

from test_ingest import query

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
LIMIT = 64 * 1024
BAD_REQUESTS = 2400


@dataclass
class Case:
    kind: str
    body: bytes
    expected: int
    content_type: str | None = PROTOBUF
    encoding: str | None = None
    method: str = "POST"
    path: str = "/v1/traces"
    headers: dict = field(default_factory=dict)
    good_ids: set = field(default_factory=set)  # spans that must land
    may_land: set = field(default_factory=set)  # spans that may land (the decoder accepted them)
    rejected: int = 0


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _oracle(body: bytes, as_json: bool) -> tuple[int, set]:
    """What the spec asks for a body of unknown validity: 400 unless it decodes."""
    try:
        message = otlp.decode_json(body) if as_json else otlp.decode_protobuf(body)
    except otlp.OTLPDecodeError:
        return 400, set()
    return 200, {r.span_id for r in otlp.records_from_request(message).records}


def bad_cases(rng: random.Random, valid: bytes, valid_json: bytes) -> list[Case]:
    top_header = 1 + len(_varint(len(valid) - 1 - len(_varint(len(valid)))))  # tag + length of field 1
    makers = [
        lambda: Case(
            "length past the end", b"\x0a" + _varint(rng.randrange(50, 5000)) + rng.randbytes(rng.randrange(40)), 400
        ),
        lambda: Case("truncated protobuf", valid[: rng.randrange(top_header + 1, len(valid) - 1)], 400),
        lambda: Case("invalid wire type", bytes([0x0F]) + rng.randbytes(rng.randrange(1, 64)), 400),
        lambda: _oracle_case("random bytes", rng.randbytes(rng.randrange(1, 512)), False),
        lambda: Case("truncated json", valid_json[: rng.randrange(1, len(valid_json) - 1)], 400, JSON),
        lambda: Case("json of another type", json.dumps(rng.choice([[1], "spans", 3, None, True])).encode(), 400, JSON),
        lambda: Case("json with wrong field types", rng.choice(WRONG_TYPED_JSON), 400, JSON),
        lambda: Case("json not utf-8", b'{"resourceSpans": ["\xff\xfe"]}', 400, JSON),
        lambda: _oracle_case("random json", _random_json(rng), True),
        lambda: Case("protobuf sent as json", valid, 400, JSON),
        lambda: Case("over the limit", b"\x0a" * (LIMIT + 1 + rng.randrange(1000)), 413),
        lambda: Case("gzip bomb", BOMB, 413, encoding="gzip"),
        lambda: Case("not gzip", rng.randbytes(rng.randrange(1, 300)), 400, encoding="gzip"),
        lambda: Case("truncated gzip", gzip.compress(valid)[: rng.randrange(10, 60)], 400, encoding="gzip"),
        lambda: Case(
            "wrong content type", valid, 415, rng.choice(["text/plain", "application/xml", "multipart/form-data", None])
        ),
        lambda: Case("unsupported encoding", valid, 415, encoding=rng.choice(["br", "deflate", "compress", "zstd"])),
        lambda: Case("wrong method", b"", 405, method=rng.choice(["GET", "PUT", "DELETE"])),
        lambda: Case("unknown path", valid, 404, path=rng.choice(["/v1/logs", "/v1/metrics", "/v1/traces/x", "/v2/traces"])),
        lambda: Case("header too long", valid, 400, headers={"X-Junk": "a" * 10_000}),
        lambda: _invalid_ids_case(rng),
        lambda: Case("json id neither hex nor base64", JUNK_ID_JSON, 200, JSON, rejected=1),
    ]
    return [rng.choice(makers)() for _ in range(BAD_REQUESTS)]


def _oracle_case(kind: str, body: bytes, as_json: bool) -> Case:
    expected, ids = _oracle(body, as_json)
    return Case(kind, body, expected, JSON if as_json else PROTOBUF, may_land=ids)


WRONG_TYPED_JSON = [
    b'{"resourceSpans": 5}',
    b'{"resourceSpans": [{"scopeSpans": "x"}]}',
    b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 12}]}]}]}',
    b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}',
    b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": {"a": 1}}]}]}]}',
    b'{"resourceSpans": [{"resource": {"attributes": [{"key": "k", "value": {"intValue": "x"}}]}}]}',
    b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"attributes": [{"key": 1}]}]}]}]}',
]

JUNK_ID_JSON = json.dumps(
    {
        "resourceSpans": [
            {"scopeSpans": [{"spans": [{"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "no id!"}]}]}
        ]
    }
).encode()

BOMB = gzip.compress(b"\x00" * (32 * 1024 * 1024), compresslevel=9)


def _random_json(rng: random.Random) -> bytes:
    def value(depth: int):
        choice = rng.randrange(7 if depth < 3 else 4)
        if choice == 0:
            return rng.randrange(-(2**70), 2**70)
        if choice == 1:
            return rng.choice(["", "abc", "0af1", "\u00e9"])
        if choice == 2:
            return rng.choice([True, False, None, 1.5])
        if choice == 3:
            return rng.choice(["traceId", "spanId", "name"])
        if choice == 4:
            return [value(depth + 1) for _ in range(rng.randrange(3))]
        keys = ["resourceSpans", "scopeSpans", "spans", "traceId", "spanId", "name", "kind", "attributes", "x"]
        return {rng.choice(keys): value(depth + 1) for _ in range(rng.randrange(4))}

    return json.dumps({"resourceSpans": [value(1)]}).encode()


def _invalid_ids_case(rng: random.Random) -> Case:
    request = make_request(traces=2, spans_per_trace=3, seed=rng.randrange(10**9))
    spans = request.resource_spans[0].scope_spans[0].spans
    broken = rng.sample(range(len(spans)), 2)
    good = {spans[i].span_id.hex() for i in range(len(spans)) if i not in broken}
    for i in broken:
        if rng.random() < 0.5:
            spans[i].trace_id = rng.choice([b"", b"\x00" * 16, b"\x01" * 15])
        else:
            spans[i].span_id = rng.choice([b"", b"\x00" * 8, b"\x01" * 9])
    # Children of a broken parent still land (under a RUNNING execution); nothing else is lost.
    return Case("invalid ids", request.SerializeToString(), 200, good_ids=good, rejected=2)


def good_case(rng: random.Random, n: int) -> Case:
    request = make_request(traces=3, spans_per_trace=4, seed=10_000 + n)
    form = rng.randrange(3)
    if form == 0:
        return Case("good protobuf", request.SerializeToString(), 200, good_ids=span_ids(request))
    if form == 1:
        return Case("good json", to_json(request), 200, JSON, good_ids=span_ids(request))
    return Case(
        "good gzip", gzip.compress(request.SerializeToString()), 200, encoding="gzip", good_ids=span_ids(request)
    )


async def send_all(port: int, cases: list[Case]) -> list[tuple[Case, int, bytes]]:
    results: list[tuple[Case, int, bytes]] = []
    connector = aiohttp.TCPConnector(limit=8)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        semaphore = asyncio.Semaphore(8)

        async def one(case: Case) -> None:
            headers = dict(case.headers)
            if case.content_type:
                headers["Content-Type"] = case.content_type
            if case.encoding:
                headers["Content-Encoding"] = case.encoding
            async with semaphore:
                async with session.request(
                    case.method,
                    f"http://127.0.0.1:{port}{case.path}",
                    data=case.body,
                    headers=headers,
                    skip_auto_headers=["Content-Type"],
                ) as response:
                    results.append((case, response.status, await response.read()))

        await asyncio.gather(*(one(case) for case in cases))
    return results


def test_malformed_requests_get_the_right_answers_and_good_ones_between_them_land(database_url):
    rng = random.Random(1234)
    sample = make_request(traces=4, spans_per_trace=4, seed=99)
    cases = bad_cases(rng, sample.SerializeToString(), to_json(sample))
    goods = [good_case(rng, n) for n in range(BAD_REQUESTS // 12)]
    for n, good in enumerate(goods):  # good ones spread between the bad ones
        cases.insert((n * 12 + 5) % len(cases), good)

    with IngestService(database_url, port=0, max_body_bytes=LIMIT) as service:
        results = asyncio.run(send_all(service.port, cases))
        health = asyncio.run(_health(service.port))

    assert len(results) == len(cases) > 2500
    wrong = [(c.kind, c.expected, status, body[:80]) for c, status, body in results if status != c.expected]
    assert not wrong, wrong[:10]
    for case, _, body in results:
        if case.rejected and case.content_type == JSON:
            assert json.loads(body)["partialSuccess"]["rejectedSpans"] == str(case.rejected)
        elif case.rejected:
            response = ExportTraceServiceResponse()
            response.ParseFromString(body)
            assert response.partial_success.rejected_spans == case.rejected
        elif case.kind.startswith("good"):
            assert body in (b"", b"{}"), body
    assert health == 200

    must = set().union(*(c.good_ids for c in cases))
    may = set().union(*(c.may_land for c in cases))
    landed = {row[0] for row in query(database_url, "SELECT id FROM step_executions")}
    assert must <= landed
    assert landed <= must | may
    kinds = {c.kind for c in cases}
    assert len(kinds) >= 20  # every family of bad input was exercised


async def _health(port: int) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/health") as response:
            return response.status
