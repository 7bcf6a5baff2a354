"""``vhtool serve``: a real server process on a free port, called as OpenRLHF's and verl's own clients call it.

Three servers: ``main`` (tiny-llama value head, left padding; bad-input limits), ``guarded`` (a seq-cls reward
model behind an API key, JSON logs), and one per test for backpressure, disconnects and SIGTERM (its worker
waits for batches to fill, so queued requests stay queued until the test says otherwise). No wall-clock asserts:
where a test must wait for the server, it polls ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from tests.test_score_seqcls import make_classifier
from vhtool.cli.app import app
from vhtool.serve.batcher import Batcher, Entry

ROOT = Path(__file__).resolve().parent.parent
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards", "hex"]
API_KEY = "s3cret-key-for-tests"
MAX_LENGTH = 64  # texts() stay under it (at most ~60 tokens); LONG is over it


def texts(n: int, seed: int = 0, hi: int = 20) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, hi))) for _ in range(n)]


# ---------------------------------------------------------------------------------------------- the server process
@dataclass
class Server:
    proc: subprocess.Popen[str]
    url: str
    ready: dict[str, Any]
    log: Path

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def start_server(
    checkpoint: Path, log: Path, *args: str, env: dict[str, str] | None = None, gate: Path | None = None
) -> Server:
    """``vhtool serve CHECKPOINT --port 0 --json ARGS``: waits for the ready line and returns the bound address.

    With ``gate``, the same command through ``tests/serve_gated.py``: every forward waits until ``gate`` exists.
    """
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    full_env.pop("VHTOOL_API_KEY", None)
    full_env.update(env or {})
    launcher = ["-m", "vhtool"] if gate is None else [str(ROOT / "tests" / "serve_gated.py"), str(gate)]
    cmd = [sys.executable, *launcher, "serve", str(checkpoint), "--port", "0", "--json", "--device", "cpu", *args]
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=full_env)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the one JSON line; EOF if the server failed to start
    if not line:
        proc.wait()
        raise AssertionError(f"vhtool serve did not start (exit {proc.returncode}):\n{log.read_text()}")
    ready = json.loads(line)
    return Server(proc=proc, url=ready["url"], ready=ready, log=log)


@pytest.fixture(scope="module")
def policy(initialised: Callable[..., Path]) -> Path:
    return initialised("builtin:tiny-llama")  # pads left: position ids from the mask, as score does


@pytest.fixture(scope="module")
def main_server(policy: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("serve") / "main.log"
    server = start_server(
        policy,
        log,
        "--max-length", str(MAX_LENGTH), "--on-overlong", "reject",
        "--max-texts-per-request", "8", "--max-request-bytes", "4096", "--max-batch-size", "16",
    )  # fmt: skip
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def seqcls_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_classifier("tiny-gpt2", tmp_path_factory.mktemp("rm") / "rm")


@pytest.fixture(scope="module")
def guarded_server(seqcls_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("serve") / "guarded.log"
    server = start_server(
        seqcls_model, log, "--log-format", "json", "--max-length", str(MAX_LENGTH), env={"VHTOOL_API_KEY": API_KEY}
    )
    yield server
    assert server.stop() == 0


def score_cli(checkpoint: Path, items: list[Any], tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    """What ``vhtool score --json`` gives for these records (texts or record objects), in order."""
    path = tmp_path / f"in-{random.random()}.jsonl"
    path.write_text("".join(json.dumps({"text": x} if isinstance(x, str) else x) + "\n" for x in items))
    res = CliRunner().invoke(app, ["score", str(checkpoint), "-i", str(path), "--json", "--device", "cpu", *args])
    assert res.exit_code == 0, res.stderr
    records: list[dict[str, Any]] = json.loads(res.stdout)["records"]
    return records


def close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-5 * max(1.0, abs(b))


# ---------------------------------------------------------------------------------------------- clients, as shipped
async def openrlhf_post(url: str, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    """OpenRLHF's remote-RM call: a new session per request, 180 s total timeout, raise_for_status, json()."""
    timeout = aiohttp.ClientTimeout(total=180)
    async with aiohttp.ClientSession(timeout=timeout) as session:  # noqa: SIM117 (written as OpenRLHF writes it)
        async with session.post(url, json=payload, headers=headers) as response:
            response.raise_for_status()
            return await response.json()


async def verl_classify(url: str, model: str, text: str, **extra: Any) -> float:
    """verl's reward loop (DisRM on vLLM): POST /classify, read data[-1]["probs"][-1]."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        payload = {"model": model, "input": text, "activation": False, **extra}
        async with session.post(f"{url}/classify", json=payload) as resp:
            resp.raise_for_status()
            output = await resp.json()
    score: float = output["data"][-1]["probs"][-1]
    return score


async def raw(url: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    """``(status, headers, text)`` of one request, whatever its status."""
    async with aiohttp.ClientSession() as session:
        method = "POST" if body is not None else "GET"
        async with session.request(method, url + path, data=body, headers=headers) as resp:
            return resp.status, dict(resp.headers), await resp.text()


def metrics(url: str, headers: dict[str, str] | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` parsed with prometheus_client's own parser: ``{(sample name, labels): value}``."""
    status, _, text = asyncio.run(raw(url, "/metrics", headers=headers))
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def counter(m: dict[Any, float], name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(url: str, name: str, value: float, headers: dict[str, str] | None = None) -> None:
    """Polls /metrics until ``name`` (no labels) equals ``value`` (a hang here fails by the test's own timeout)."""
    for _ in range(6000):
        if counter(metrics(url, headers), name) == value:
            return
        time.sleep(0.02)
    raise AssertionError(f"{name} never reached {value}")


# ---------------------------------------------------------------------------------------------- the trainers' calls
def test_openrlhf_200_concurrent_one_text_requests_equal_score(
    main_server: Server, policy: Path, tmp_path: Path
) -> None:
    batch = texts(200, seed=1)

    async def go() -> list[Any]:
        url = main_server.url + "/get_reward"
        return await asyncio.gather(
            *(openrlhf_post(url, {"query": [t], "prompts": ["p"], "labels": ["l"]}) for t in batch)
        )

    answers = asyncio.run(go())
    expected = score_cli(policy, batch, tmp_path, "--max-length", str(MAX_LENGTH))
    for answer, want in zip(answers, expected):
        assert set(answer) == {"rewards", "scores", "extra_logs"}
        assert len(answer["rewards"]) == 1 and answer["scores"] == answer["rewards"]
        assert close(answer["rewards"][0], want["score"])
    # several texts in one request: same order and length as query
    many = asyncio.run(openrlhf_post(main_server.url + "/get_reward", {"query": batch[:5]}))
    assert all(close(a, w["score"]) for a, w in zip(many["rewards"], expected[:5])) and len(many["rewards"]) == 5
    # OpenRLHF shards one sample over its replicas: the others get an empty query and must answer 200
    empty = asyncio.run(openrlhf_post(main_server.url + "/get_reward", {"query": [], "prompts": [], "labels": []}))
    assert empty == {"rewards": [], "scores": [], "extra_logs": {}}


def test_verl_classify_reads_data_probs(main_server: Server, policy: Path, tmp_path: Path) -> None:
    batch = texts(12, seed=2)

    async def go(**extra: Any) -> list[float]:
        return list(await asyncio.gather(*(verl_classify(main_server.url, "any/name", t, **extra) for t in batch)))

    expected = [r["score"] for r in score_cli(policy, batch, tmp_path, "--max-length", str(MAX_LENGTH))]
    assert all(close(a, b) for a, b in zip(asyncio.run(go()), expected))
    sig = asyncio.run(go(use_activation=True))  # newer vLLM's spelling; true applies the sigmoid
    assert all(close(a, 1 / (1 + math.exp(-b))) for a, b in zip(sig, expected))
    status, _, text = asyncio.run(raw(main_server.url, "/v1/classify", json.dumps({"input": batch[:3]}).encode()))
    doc = json.loads(text)
    assert status == 200 and doc["object"] == "list" and doc["id"].startswith("classify-")
    assert [d["index"] for d in doc["data"]] == [0, 1, 2] and all(d["num_classes"] == 1 for d in doc["data"])
    assert doc["usage"]["prompt_tokens"] == doc["usage"]["total_tokens"] > 0


def test_score_route_returns_what_score_prints(main_server: Server, policy: Path, tmp_path: Path) -> None:
    records: list[dict[str, Any]] = [
        {"text": "Hello there."},
        {"prompt": "Hi.", "completion": " Hello!"},
        {"input_ids": [5, 6, 7, 8]},
        {"text": texts(1, seed=3)[0]},
    ]
    body = json.dumps({"records": records, "per_token": True}).encode()
    status, _, text = asyncio.run(raw(main_server.url, "/score", body))
    assert status == 200, text
    got = json.loads(text)["records"]
    want = score_cli(policy, records, tmp_path, "--max-length", str(MAX_LENGTH), "--per-token")
    assert [set(g) for g in got] == [set(w) for w in want]
    for g, w in zip(got, want):
        assert (g["index"], g["tokens"]) == (w["index"], w["tokens"]) and close(g["score"], w["score"])
        assert all(close(a, b) for a, b in zip(g["values"], w["values"]))
    one = asyncio.run(raw(main_server.url, "/score", json.dumps({"text": "Hello there."}).encode()))
    assert json.loads(one[2])["records"][0]["score"] == got[0]["score"]


def test_health_info_and_metrics_counters(main_server: Server) -> None:
    status, _, text = asyncio.run(raw(main_server.url, "/health"))
    assert status == 200 and json.loads(text) == {"status": "ok"}
    info = json.loads(asyncio.run(raw(main_server.url, "/info"))[2])
    assert info["head"] == "value" and info["dtype"] == "float32" and info["device"] == "cpu"
    assert info["max_length"] == MAX_LENGTH and info["limits"]["max_texts_per_request"] == 8
    assert isinstance(info["head_sha256"], str) and len(info["head_sha256"]) == 64

    before = metrics(main_server.url)

    async def traffic() -> None:
        await asyncio.gather(
            *(openrlhf_post(main_server.url + "/get_reward", {"query": ["a b", "c"]}) for _ in range(7))
        )
        await asyncio.gather(*(verl_classify(main_server.url, "m", "hello") for _ in range(3)))
        await raw(main_server.url, "/get_reward", b"{not json")
        await raw(main_server.url, "/get_reward", json.dumps({"query": ["x"] * 9}).encode())  # 413, 9 texts
        await raw(main_server.url, "/get_reward", json.dumps({"query": ["fine", ""]}).encode())  # 400, 2 texts
        await raw(main_server.url, "/classify", json.dumps({"input": ["ok", "  "]}).encode())  # 400, 2 texts

    asyncio.run(traffic())
    after = metrics(main_server.url)

    def delta(name: str, **labels: str) -> float:
        return counter(after, name, **labels) - counter(before, name, **labels)

    assert delta("vhtool_serve_requests_total", route="/get_reward", status="200") == 7
    assert delta("vhtool_serve_texts_total", route="/get_reward", status="200") == 14
    assert delta("vhtool_serve_requests_total", route="/classify", status="200") == 3
    assert delta("vhtool_serve_texts_total", route="/classify", status="200") == 3
    # rejected requests are counted too, with their status: requests, and texts when the body could be read
    assert delta("vhtool_serve_requests_total", route="/get_reward", status="400") == 2
    assert delta("vhtool_serve_texts_total", route="/get_reward", status="400") == 2
    assert delta("vhtool_serve_requests_total", route="/get_reward", status="413") == 1
    assert delta("vhtool_serve_texts_total", route="/get_reward", status="413") == 9
    assert delta("vhtool_serve_requests_total", route="/classify", status="400") == 1
    assert delta("vhtool_serve_texts_total", route="/classify", status="400") == 2
    assert delta("vhtool_serve_batch_texts_count") >= 1 and delta("vhtool_serve_batch_texts_sum") == 17
    assert delta("vhtool_serve_queue_seconds_count") == 17 and delta("vhtool_serve_tokens_total") > 0
    assert counter(after, "vhtool_serve_queue_texts") == 0


# ---------------------------------------------------------------------------------------------- bad input
LONG = " ".join(["seven wizards"] * 60)
BAD = [
    ("/get_reward", b'{"query": ["unterminated', 400, "invalid_json"),
    ("/get_reward", b'\xff\xfe{"query": ["x"]}', 400, "invalid_json"),
    ("/get_reward", b'["not", "an", "object"]', 400, "invalid_request"),
    ("/get_reward", b'{"prompts": ["no query"]}', 400, "invalid_request"),
    ("/get_reward", b'{"query": [1, 2]}', 400, "invalid_request"),
    ("/get_reward", b'{"query": ["fine", ""]}', 400, "invalid_text"),
    ("/get_reward", b'{"query": ["   "]}', 400, "invalid_text"),
    ("/classify", b'{"input": []}', 400, "invalid_request"),
    ("/classify", b'{"input": 5}', 400, "invalid_request"),
    ("/classify", b'{"input": "x", "activation": "yes"}', 400, "invalid_request"),
    ("/score", b'{"records": []}', 400, "invalid_request"),
    ("/score", b'{"records": "text"}', 400, "invalid_request"),
    ("/score", b'{"records": [{"input_ids": [1, 999999]}]}', 400, "invalid_text"),
    ("/score", b'{"records": [{"text": "a", "input_ids": [1]}]}', 400, "invalid_text"),
    ("/get_reward", json.dumps({"query": [LONG]}).encode(), 400, "text_too_long"),
    ("/get_reward", json.dumps({"query": ["x"] * 9}).encode(), 413, "too_many_texts"),
    ("/get_reward", json.dumps({"query": ["x" * 5000]}).encode(), 413, "body_too_large"),
    ("/nowhere", b"{}", 404, "not_found"),
    ("/health", b"{}", 405, "method_not_allowed"),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "kind"), BAD, ids=[f"{b[0]}-{b[3]}-{i}" for i, b in enumerate(BAD)]
)
def test_bad_input_gets_one_json_error_and_the_server_goes_on(
    main_server: Server, path: str, body: bytes, status: int, kind: str
) -> None:
    got, headers, text = asyncio.run(raw(main_server.url, path, body))
    assert got == status, text
    assert headers["Content-Type"].startswith("application/json")
    doc = json.loads(text)
    assert list(doc) == ["error"] and doc["error"]["type"] == kind and doc["error"]["message"]
    assert "Traceback" not in text
    ok = asyncio.run(openrlhf_post(main_server.url + "/get_reward", {"query": ["still here"]}))
    assert len(ok["rewards"]) == 1 and isinstance(ok["rewards"][0], float)


def test_no_traceback_in_the_logs(main_server: Server) -> None:
    asyncio.run(raw(main_server.url, "/get_reward", b"{bad"))
    log = main_server.log.read_text()
    assert "Traceback" not in log and "POST /get_reward" in log


# ---------------------------------------------------------------------------------------------- seq-cls + API key
def test_api_key_and_seqcls_reward_model(guarded_server: Server, seqcls_model: Path, tmp_path: Path) -> None:
    url = guarded_server.url
    body = json.dumps({"query": ["a secret text nobody logs", LONG]}).encode()
    assert asyncio.run(raw(url, "/health"))[0] == 200  # open, for load balancers
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        status, got_headers, text = asyncio.run(raw(url, "/get_reward", body, headers))
        assert status == 401 and json.loads(text)["error"]["type"] == "unauthorized"
        assert got_headers.get("WWW-Authenticate") == "Bearer"
    assert asyncio.run(raw(url, "/metrics"))[0] == 401
    auth = {"Authorization": f"Bearer {API_KEY}"}
    answer = asyncio.run(openrlhf_post(url + "/get_reward", json.loads(body), auth))
    # a plain seq-cls reward model, read where transformers reads it; the long text truncated as score does
    want = score_cli(seqcls_model, json.loads(body)["query"], tmp_path, "--max-length", str(MAX_LENGTH))
    assert all(close(a, w["score"]) for a, w in zip(answer["rewards"], want))
    status, _, text = asyncio.run(raw(url, "/score", json.dumps({"records": [{"text": LONG}]}).encode(), auth))
    assert status == 200 and json.loads(text)["records"][0]["truncated"] is True
    info = json.loads(asyncio.run(raw(url, "/info", headers=auth))[2])
    assert info["model_kind"] == "seq-cls" and info["head"] == "reward" and info["auth"] is True
    log = guarded_server.log.read_text()
    assert API_KEY not in log and "secret text" not in log
    access = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert {"route": "/get_reward", "status": 401} in [{k: a.get(k) for k in ("route", "status")} for a in access]
    assert any(a.get("route") == "/get_reward" and a.get("status") == 200 and a.get("texts") == 2 for a in access)


# ---------------------------------------------------------------------------------------------- backpressure, drain
def _send_and_hang_up(url: str, text: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"query": [text]}).encode()
    sock = socket.create_connection((host, int(port)))
    head = f"POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body)
    return sock


def test_queue_limit_disconnect_and_sigterm_drain(policy: Path, tmp_path: Path) -> None:
    # the worker waits (up to 10 min) for a batch of 64 to fill: queued texts stay queued until SIGTERM
    server = start_server(
        policy, tmp_path / "drain.log",
        "--max-wait-ms", "600000", "--max-batch-size", "64", "--max-queued-texts", "6", "--max-texts-per-request", "6",
    )  # fmt: skip
    try:
        url = server.url
        # a client that goes away: its text is dropped before compute
        sock = _send_and_hang_up(url, "nobody waits for me")
        wait_for(url, "vhtool_serve_queue_texts", 1)
        sock.close()
        wait_for(url, "vhtool_serve_texts_dropped_total", 1)
        wait_for(url, "vhtool_serve_queue_texts", 0)

        first, second = texts(4, seed=5), texts(2, seed=6)
        results: dict[str, Any] = {}

        def client(name: str, batch: list[str]) -> None:
            results[name] = asyncio.run(openrlhf_post(url + "/get_reward", {"query": batch}))

        t1 = threading.Thread(target=client, args=("first", first))
        t1.start()
        wait_for(url, "vhtool_serve_queue_texts", 4)
        # 4 queued + 3 > 6: refused at once, with Retry-After, nothing queued
        status, headers, text = asyncio.run(raw(url, "/get_reward", json.dumps({"query": ["a", "b", "c"]}).encode()))
        assert status == 503 and int(headers["Retry-After"]) >= 1
        assert json.loads(text)["error"]["type"] == "overloaded"
        refused = metrics(url)
        assert counter(refused, "vhtool_serve_requests_total", route="/get_reward", status="503") == 1
        assert counter(refused, "vhtool_serve_texts_total", route="/get_reward", status="503") == 3
        assert counter(refused, "vhtool_serve_queue_texts") == 4  # nothing of the refused request was queued
        t2 = threading.Thread(target=client, args=("second", second))
        t2.start()
        wait_for(url, "vhtool_serve_queue_texts", 6)
        assert "first" not in results and "second" not in results  # still waiting for a batch to fill

        # SIGTERM with 6 texts in flight: all answered, exit 0
        server.proc.send_signal(signal.SIGTERM)
        t1.join()
        t2.join()
        assert server.proc.wait(timeout=120) == 0
        want = score_cli(policy, first + second, tmp_path)
        got = results["first"]["rewards"] + results["second"]["rewards"]
        assert len(got) == 6 and all(close(a, w["score"]) for a, w in zip(got, want))
        log = server.log.read_text()
        assert "Traceback" not in log
        with pytest.raises(OSError):  # no longer accepting
            socket.create_connection(tuple(server.url.removeprefix("http://").rsplit(":", 1)), timeout=5)  # type: ignore[arg-type]
    finally:
        server.stop()


def _wait_for_file(path: Path, proc: subprocess.Popen[str]) -> None:
    """Polls until ``path`` exists (the gated forward has started); fails if the server died first."""
    for _ in range(60000):
        if path.exists():
            return
        assert proc.poll() is None, "the server exited"
        time.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _post_on(conn: Any, text: str) -> tuple[int, dict[str, Any]] | None:
    """POST /get_reward on an open ``http.client`` connection: ``(status, body)``, or None if the server closed it."""
    import http.client

    try:
        conn.request("POST", "/get_reward", body=json.dumps({"query": [text]}), headers={"Content-Type": "x"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    except (OSError, http.client.HTTPException):
        return None


def test_drain_refuses_new_requests_and_answers_the_running_one(policy: Path, tmp_path: Path) -> None:
    """SIGTERM while a request is computing: new connections are refused, a request on a connection already open
    gets 503 (or the connection is closed), and the running request is answered; exit 0."""
    import http.client

    gate = tmp_path / "gate"
    server = start_server(policy, tmp_path / "drain-new.log", gate=gate)
    try:
        url, text = server.url, texts(1, seed=7)[0]
        results: dict[str, Any] = {}
        running = threading.Thread(
            target=lambda: results.update(a=asyncio.run(openrlhf_post(url + "/get_reward", {"query": [text]})))
        )
        running.start()
        _wait_for_file(gate.with_name("gate.entered"), server.proc)  # its batch is in the forward now
        kept = http.client.HTTPConnection(*_address(url), timeout=60)  # a keep-alive connection, open before SIGTERM
        kept.request("GET", "/health")
        health = kept.getresponse()
        assert health.status == 200 and json.loads(health.read()) == {"status": "ok"}

        server.proc.send_signal(signal.SIGTERM)
        late = _post_on(kept, "sent after SIGTERM")
        if late is not None:  # the server read it before closing the idle connection: refused with 503
            status, doc = late
            assert status == 503 and doc["error"]["type"] == "shutting_down"
        # the listening socket closes while the first request still computes (the gate is shut)
        for _ in range(60000):
            try:
                socket.create_connection(_address(url), timeout=5).close()
            except ConnectionRefusedError:
                break
            time.sleep(0.01)
        else:
            raise AssertionError("the server kept accepting connections while draining")
        assert server.proc.poll() is None and "a" not in results  # still draining, the first one not answered
        with pytest.raises(aiohttp.ClientConnectionError):
            asyncio.run(openrlhf_post(url + "/get_reward", {"query": ["new connection after SIGTERM"]}))

        gate.touch()  # the forward finishes: the request received before SIGTERM is answered, then exit 0
        running.join()
        assert server.proc.wait(timeout=120) == 0
        want = score_cli(policy, [text], tmp_path)
        assert len(results["a"]["rewards"]) == 1 and close(results["a"]["rewards"][0], want[0]["score"])
        log = server.log.read_text()
        assert "Traceback" not in log and "POST /get_reward 1 texts 200" in log
    finally:
        gate.touch()
        server.stop()


def test_drain_timeout_answers_what_is_left_with_503_and_exits_0(policy: Path, tmp_path: Path) -> None:
    """The forward never finishes: at --drain-timeout the computing and the queued request both get 503 JSON,
    the command warns how many texts were not scored and exits 0."""
    gate = tmp_path / "gate"
    server = start_server(
        policy, tmp_path / "drain-timeout.log", "--drain-timeout", "1", "--max-batch-size", "1", gate=gate
    )
    try:
        url = server.url
        answers: dict[str, Any] = {}

        def client(name: str, text: str) -> None:
            answers[name] = asyncio.run(raw(url, "/get_reward", json.dumps({"query": [text]}).encode()))

        computing = threading.Thread(target=client, args=("computing", "held in the forward"))
        computing.start()
        _wait_for_file(gate.with_name("gate.entered"), server.proc)
        queued = threading.Thread(target=client, args=("queued", "waits behind it"))
        queued.start()
        wait_for(url, "vhtool_serve_queue_texts", 2)

        server.proc.send_signal(signal.SIGTERM)  # the gate stays shut: the forward never returns
        computing.join()
        queued.join()
        assert server.proc.wait(timeout=120) == 0
        for name in ("computing", "queued"):
            status, headers, text = answers[name]
            assert status == 503 and int(headers["Retry-After"]) >= 1, (name, text)
            assert json.loads(text)["error"]["type"] == "shutting_down"
        log = server.log.read_text()
        assert "--drain-timeout 1 s ran out: 2 queued texts were not scored." in log
        assert "Traceback" not in log
    finally:
        gate.touch()
        server.stop()


def test_a_failing_forward_fails_only_its_requests_on_a_real_server(policy: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.touch()  # no holding: every forward runs at once; the poisoned one raises
    server = start_server(policy, tmp_path / "poison.log", env={"SERVE_GATED_POISON": "77"}, gate=gate)
    try:
        bad = json.dumps({"records": [{"input_ids": [5, 77, 9]}]}).encode()
        status, headers, text = asyncio.run(raw(server.url, "/score", bad))
        assert status == 500 and headers["Content-Type"].startswith("application/json")
        doc = json.loads(text)
        assert list(doc) == ["error"] and doc["error"]["type"] == "internal_error"
        assert "poisoned batch" in doc["error"]["message"]
        ok = asyncio.run(openrlhf_post(server.url + "/get_reward", {"query": ["the server goes on"]}))
        assert len(ok["rewards"]) == 1 and isinstance(ok["rewards"][0], float)
        m = metrics(server.url)
        assert counter(m, "vhtool_serve_batch_failures_total") == 1
        assert counter(m, "vhtool_serve_requests_total", route="/score", status="500") == 1
        assert server.stop() == 0
        assert "Traceback" not in server.log.read_text()
    finally:
        server.stop()


def test_sigint_on_an_idle_server_exits_0(policy: Path, tmp_path: Path) -> None:
    server = start_server(policy, tmp_path / "idle.log")
    assert asyncio.run(raw(server.url, "/health"))[0] == 200
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(timeout=120) == 0


# ---------------------------------------------------------------------------------------------- the worker alone
def test_a_failing_batch_fails_only_its_own_entries() -> None:
    """Entries are batched by length; the batch holding the poisoned text fails, the other batch is scored."""

    def score(seqs: Any) -> tuple[list[float], None]:
        if any(99 in s for s in seqs):
            raise RuntimeError("boom")
        return [float(len(s)) for s in seqs], None

    results: dict[Any, Any] = {}

    def deliver(entry: Entry, result: Any, error: BaseException | None) -> None:
        results[entry.tag] = error if error is not None else result

    batcher = Batcher(score, max_batch_tokens=1000, max_batch_size=8, max_queued=10, max_wait_s=600)
    assert batcher.reserve(5) and not batcher.reserve(6)
    short = [Entry(ids=[1, 2], deliver=deliver, tag=f"short{k}") for k in range(2)]
    poisoned = [
        Entry(ids=[99] + [1] * 29, deliver=deliver, tag="long0"),
        Entry(ids=[1] * 30, deliver=deliver, tag="long1"),
    ]
    gone = Entry(ids=[1, 2, 3], deliver=deliver, tag="gone")
    batcher.submit([*short, *poisoned, gone])
    batcher.cancel([gone])
    batcher.start()
    batcher.flush()  # stop waiting for the batch to fill
    for _ in range(6000):  # 4 entries are delivered; the cancelled one never is
        if len(results) == 4:
            break
        time.sleep(0.01)
    assert batcher.stop(timeout=60) == []
    assert set(results) == {"short0", "short1", "long0", "long1"}
    assert results["short0"] == (2.0, None) and results["short1"] == (2.0, None)
    assert isinstance(results["long0"], RuntimeError) and isinstance(results["long1"], RuntimeError)
    assert batcher.reserved == 0


def test_the_next_batch_is_prepared_while_one_runs_and_never_on_the_model_thread() -> None:
    """Batch 1's forward waits until batch 2 has been prepared: with no preparing ahead this would never finish."""
    seen: dict[str, set[str]] = {"prepare": set(), "forward": set()}
    second_ready = threading.Event()
    overlapped: list[bool] = []

    def prepare(seqs: Any) -> list[list[int]]:
        seen["prepare"].add(threading.current_thread().name)
        if seqs[0][0] == 2:
            second_ready.set()
        return [list(s) for s in seqs]

    def forward(prepared: Any) -> tuple[list[float], None]:
        seen["forward"].add(threading.current_thread().name)
        if prepared[0][0] == 1:
            overlapped.append(second_ready.wait(120))
        return [float(s[0]) for s in prepared], None

    results: dict[Any, Any] = {}
    done = threading.Event()

    def deliver(entry: Entry, result: Any, error: BaseException | None) -> None:
        results[entry.tag] = error if error is not None else result
        if len(results) == 3:
            done.set()

    batcher = Batcher(forward, prepare=prepare, max_batch_tokens=100, max_batch_size=1, max_queued=10)
    assert batcher.reserve(3)
    batcher.submit([Entry(ids=[k, 5, 6], deliver=deliver, tag=k) for k in (1, 2, 3)])
    batcher.start()
    assert done.wait(120)
    assert batcher.stop(timeout=60) == []
    assert overlapped == [True]  # batch 2 was prepared while batch 1 was in its forward
    assert results == {1: (1.0, None), 2: (2.0, None), 3: (3.0, None)}
    assert seen["forward"] == {"vhtool-serve-model"} and "vhtool-serve-model" not in seen["prepare"]
    assert batcher.reserved == 0


def test_a_client_gone_after_its_batch_was_prepared_is_dropped_before_compute() -> None:
    """Batch 2 (two texts) is prepared while batch 1 computes; one of its clients leaves: only the other is run."""
    prepared_batches: list[list[int]] = []
    forwarded: list[list[int]] = []
    in_first, release, second_prepared = threading.Event(), threading.Event(), threading.Event()

    def prepare(seqs: Any) -> list[list[int]]:
        prepared_batches.append([s[0] for s in seqs])
        if len(prepared_batches) == 2:
            second_prepared.set()
        return [list(s) for s in seqs]

    def forward(prepared: Any) -> tuple[list[float], None]:
        forwarded.append([s[0] for s in prepared])
        if prepared[0][0] == 1:
            in_first.set()
            assert release.wait(120)
        return [float(s[0]) for s in prepared], None

    results: dict[Any, Any] = {}
    dropped: list[int] = []
    batcher = Batcher(
        forward, prepare=prepare, max_batch_tokens=100, max_batch_size=2, max_queued=10, on_drop=dropped.append
    )
    assert batcher.reserve(3)
    first = Entry(ids=[1] * 9, deliver=lambda e, r, x: results.update({e.tag: r}), tag=1)
    batcher.submit([first])
    batcher.start()
    assert in_first.wait(120)
    leaving, staying = (Entry(ids=[k, 0], deliver=lambda e, r, x: results.update({e.tag: r}), tag=k) for k in (2, 3))
    batcher.submit([leaving, staying])
    assert second_prepared.wait(120)  # batch 2 is prepared and waits in the slot
    batcher.cancel([leaving])
    release.set()
    for _ in range(12000):
        if 3 in results:
            break
        time.sleep(0.01)
    assert batcher.stop(timeout=60) == []
    assert results == {1: (1.0, None), 3: (3.0, None)} and dropped == [1]
    assert forwarded == [[1], [3]] and prepared_batches == [[1], [2, 3], [3]]
    assert batcher.reserved == 0
