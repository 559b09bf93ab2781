"""Prompt alignment through an OpenAI-compatible judge: a fake local server answers, nothing leaves the machine."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

import pytest
from PIL import Image

from storycast.errors import SettingsError
from storycast.evaluation.vistory_judge import (
    PROMPT_FILES,
    PROMPT_SHA256,
    JudgeError,
    JudgeOptions,
    VisionJudge,
    chat_completions_url,
    load_prompt,
    parse_score,
    shot_aspect_means,
    single_character_scores,
)


class FakeJudge:
    """A chat-completions server in a thread: answers from a list (status, body), or from a function of the request
    body, and records every request."""

    def __init__(self, answers: list[tuple[int, object]] | Callable[[dict], tuple[int, object]]):
        self.answer = answers if callable(answers) else None
        self.answers = [] if callable(answers) else list(answers)
        self.requests: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                owner.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if owner.answer is not None:
                    status, payload = owner.answer(body)
                else:
                    status, payload = owner.answers.pop(0) if owner.answers else (500, {"error": "no answer left"})
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def chat(text: str) -> tuple[int, dict]:
    return 200, {"choices": [{"message": {"role": "assistant", "content": text}}]}


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """A proxy set in the environment would take the requests to 127.0.0.1 elsewhere."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake():
    servers = []

    def make(*answers):
        server = FakeJudge(list(answers))
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def _image(color=(200, 30, 30)) -> Image.Image:
    return Image.new("RGB", (96, 64), color)


def test_the_request_carries_model_prompt_text_and_image_and_the_score_is_parsed(fake, tmp_path):
    server = fake(chat("Analysis: the forest is there.\nScore: 3"))
    judge = VisionJudge(JudgeOptions(url=server.url, model="judge-1"), api_key="k-123", sleep=lambda s: None)
    result = judge.judge_shot("scene", "A misty forest at dawn.", _image())
    assert (result.score, result.parsed, result.attempts, result.cached) == (3, True, 1, False)

    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer k-123"
    body = request["body"]
    assert (body["model"], body["max_tokens"], body["temperature"], body["seed"]) == ("judge-1", 512, 0.0, 123)
    (message,) = body["messages"]
    assert message["role"] == "user"
    prompt, text, image = message["content"]
    assert prompt == {"type": "text", "text": load_prompt("scene")}
    assert "background" in prompt["text"]  # the environment prompt judges the scene
    assert text == {"type": "text", "text": "A misty forest at dawn."}
    url = image["image_url"]["url"]
    assert image["type"] == "image_url" and "detail" not in image["image_url"]
    assert url.startswith("data:image/jpeg;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.format == "JPEG" and sent.size == (512, 512)


def test_an_answer_without_a_score_is_asked_again_warmer_and_ten_failures_count_zero(fake):
    server = fake(chat("I cannot tell."), chat("Score: Good 4"))
    judge = VisionJudge(JudgeOptions(url=server.url), api_key="", sleep=lambda s: None)
    result = judge.judge_shot("camera", "Close-up, eye level.", _image())
    assert (result.score, result.attempts) == (4, 2)
    assert [r["body"]["temperature"] for r in server.requests] == [0.0, 0.1]
    assert "Authorization" not in server.requests[0]["headers"]  # no key: a local server needs none

    server = fake(*[chat("no number")] * 10)
    result = VisionJudge(JudgeOptions(url=server.url), sleep=lambda s: None).judge_shot("camera", "x", _image())
    assert (result.score, result.parsed, result.attempts) == (0, False, 10)
    assert server.requests[-1]["body"]["temperature"] == pytest.approx(0.9)


def test_transport_errors_are_retried_with_backoff_and_refusals_name_the_url_and_fix(fake):
    waits: list[float] = []
    server = fake((503, {"error": "busy"}), (429, {"error": "slow down"}), chat("Score: 2"))
    judge = VisionJudge(JudgeOptions(url=server.url, backoff=0.5), sleep=waits.append)
    assert judge.judge_shot("scene", "x", _image()).score == 2
    assert waits == [0.5, 1.0]
    assert [r["body"]["temperature"] for r in server.requests] == [0.0, 0.0, 0.0]

    server = fake((401, {"error": "bad key"}))
    with pytest.raises(JudgeError, match=r"127\.0\.0\.1.*HTTP 401.*STORYCAST_JUDGE_API_KEY"):
        VisionJudge(JudgeOptions(url=server.url), sleep=lambda s: None).judge_shot("scene", "x", _image())
    assert len(server.requests) == 1  # a refusal is not retried

    server = fake()
    dead = server.url
    server.close()
    judge = VisionJudge(JudgeOptions(url=dead, retries=2, timeout=600), sleep=waits.append)  # refused at once
    with pytest.raises(JudgeError, match=r"did not answer after 3 tries.*Fix"):
        judge.judge_shot("scene", "x", _image())


def test_answers_are_cached_by_model_prompt_and_image(fake, tmp_path):
    server = fake(chat("Score: 1"), chat("Score: 4"), chat("Score: 0"))
    options = JudgeOptions(url=server.url, cache_dir=str(tmp_path / "judge"))
    first = VisionJudge(options, sleep=lambda s: None).judge_shot("scene", "A beach.", _image())
    again = VisionJudge(options, sleep=lambda s: None).judge_shot("scene", "A beach.", _image())
    assert (again.score, again.cached, again.attempts) == (first.score, True, 0)
    assert len(server.requests) == 1
    VisionJudge(options, sleep=lambda s: None).judge_shot("scene", "A beach.", _image((0, 0, 255)))  # other image
    other_model = JudgeOptions(url=server.url, model="other", cache_dir=options.cache_dir)
    VisionJudge(other_model, sleep=lambda s: None).judge_shot("scene", "A beach.", _image())
    assert len(server.requests) == 3


def test_single_character_puts_the_prompt_in_the_system_message_with_the_name_and_a_low_detail_crop(fake):
    server = fake(chat("Analysis: waving.\nScore: 4"))
    judge = VisionJudge(JudgeOptions(url=server.url), sleep=lambda s: None)
    assert judge.judge_character("Bob waves; Ann sits.", "Bob", _image()).score == 4
    system, user = server.requests[0]["body"]["messages"]
    assert system == {"role": "system", "content": [{"type": "text", "text": load_prompt("single_character_action")}]}
    assert [part.get("text") for part in user["content"][:2]] == [
        "Bob waves; Ann sits.",
        "Evaluated Character Name is Bob",
    ]
    assert user["content"][2]["image_url"]["detail"] == "low"


def test_judge_shots_asks_each_aspect_with_its_own_field(fake):
    server = fake(*[chat(f"Score: {i}") for i in (1, 2, 3, 4, 0, 2)])
    judge = VisionJudge(JudgeOptions(url=server.url), sleep=lambda s: None)
    texts = {"scene": "SCENE", "script": "SCRIPT", "camera": "CAMERA", "plot": "PLOT"}
    out = judge.judge_shots({1: (_image(), texts), 2: (_image((0, 90, 0)), texts)})
    assert {i: {a: j.score for a, j in aspects.items()} for i, aspects in out.items()} == {
        1: {"scene": 1, "character_action": 2, "camera": 3},
        2: {"scene": 4, "character_action": 0, "camera": 2},
    }
    sent = [
        (r["body"]["messages"][0]["content"][0]["text"], r["body"]["messages"][0]["content"][1]["text"])
        for r in server.requests
    ]
    assert sent[:3] == [
        (load_prompt("scene"), "SCENE"),
        (load_prompt("character_action"), "SCRIPT"),
        (load_prompt("camera"), "CAMERA"),
    ]


def test_aggregation_follows_their_means_and_rounding():
    per_shot = {1: {"scene": 4, "character_action": 2, "camera": 1}, 2: {"scene": 3, "character_action": 3}, 3: {}}
    assert shot_aspect_means(per_shot) == {"scene": 3.5, "character_action": 2.5, "camera": 1.0}
    assert shot_aspect_means({}) == {"scene": 0, "character_action": 0, "camera": 0}
    # int(round()) rounds halves to even: shot 1 (2+3)/2 = 2.5 -> 2, shot 2 3.5 -> 4; no character found -> 0
    shots, story = single_character_scores({1: {"Bob": 2, "Ann": 3}, 2: {"Bob": 4, "Ann": 3}, 3: {}})
    assert shots == {1: 2, 2: 4, 3: 0}
    assert story == 2  # (2 + 4 + 0) / 3 = 2.0
    assert single_character_scores({}) == ({}, None)


def test_prompts_urls_parsing_and_options():
    for aspect, name in PROMPT_FILES.items():
        data = resources.files("storycast.evaluation").joinpath("judge_prompts", name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == PROMPT_SHA256[aspect], name
    assert parse_score("Analysis: fine.\nScore: 3") == 3
    assert parse_score("score:Excellent 4 then Score: 1") == 4
    assert parse_score("Score: [3]") is None
    assert parse_score("SCORE: 3") is None
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("https://api.example.com") == "https://api.example.com/v1/chat/completions"
    assert "--judge-url" in JudgeOptions().skip_reason()
    assert JudgeOptions(url="http://x/v1").skip_reason() is None
    with pytest.raises(SettingsError, match="--judge-url"):
        VisionJudge(JudgeOptions())
    with pytest.raises(SettingsError, match="http"):
        JudgeOptions(url="localhost:8000").validate()
    with pytest.raises(SettingsError, match="workers"):
        JudgeOptions(url="http://x", workers=0).validate()
    with pytest.raises(SettingsError, match="aspect"):
        load_prompt("style")


def test_the_prompt_align_average_is_the_leaderboard_s_on_every_published_row():
    from storycast.evaluation.published import VISTORYBENCH_ROWS
    from storycast.evaluation.vistory_judge import prompt_align_average

    keys = ("prompt_align_scene", "prompt_align_camera", "prompt_align_character_action", "single_character_action")
    for row in VISTORYBENCH_ROWS:  # printed to 3 decimals: single_character_action counts twice
        assert prompt_align_average(*(row.values[k] for k in keys)) == pytest.approx(
            row.values["prompt_align"], abs=6e-4
        )
    uno = next(r for r in VISTORYBENCH_ROWS if r.method == "UNO" and r.split == "full").values
    assert sum(uno[k] for k in keys) / 4 == pytest.approx(3.006, abs=6e-4)  # the plain mean is not the column
    assert prompt_align_average(4.0, 2.0, 3.0, None) == 3.0  # no single-character value: the three present
    assert prompt_align_average(None, None, None, None) is None
