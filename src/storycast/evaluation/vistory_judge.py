"""ViStoryBench's prompt alignment: a vision-language model judges each image against a shot's text, 0 to 4.

Any OpenAI-compatible ``/chat/completions`` endpoint serves as the judge (``JudgeOptions.url`` / ``--judge-url``;
the model ``--judge-model``; the key from ``STORYCAST_JUDGE_API_KEY`` or ``OPENAI_API_KEY``). Without a URL the metric
is skipped, with :meth:`JudgeOptions.skip_reason` saying why. Only the standard library is used (``urllib``).

What follows ``ViStoryBench/vistorybench`` @ 514cc31 (``vistorybench/bench/prompt_align/prompt_align_evaluator.py``,
``gptv_utils.py``, and the single-character part of ``bench/content/cids_evaluator.py``):

- Aspects of a shot (``SHOT_ASPECTS``): ``scene`` (the shot's Setting Description, judged with
  ``user_prompt_environment_text_align.txt``), ``character_action`` (its Static Shot Description, "script", with
  ``user_prompt_character_text_align.txt``), ``camera`` (its Shot Perspective Design with
  ``user_prompt_camera_text_align.txt``). One user message: the judge prompt, the shot text, the image.
- ``single_character_action``: each character found in a shot (CIDS's crop of it) against the shot's script: the
  judge prompt ``user_prompt_single_character_text_align.txt`` as the *system* message; the user message holds the
  script, ``"Evaluated Character Name is <name>"`` and the crop (``"detail": "low"``).
- The image is resized to 512 x 512 (PIL's default filter, before the RGB conversion), saved as JPEG (quality 75)
  and sent as a ``data:image/jpeg;base64,`` URL.
- Request body: ``model``, ``max_tokens`` 512, ``temperature``, ``messages``, ``seed`` 123 (their ``top_p=0.2``
  argument never reaches the body, so it is not sent).
- The score is the first match of ``(score|Score):\\s*[a-zA-Z]*\\s*(\\d+)`` in the answer, as an int (not clipped).
  An answer without one is asked again with the temperature raised by 0.1, from 0.0, up to 10 times; after that the
  score is 0 (theirs; we also count it as ``unparsed``).
- Aggregation: per story, each shot aspect is the mean over the shots judged (0 when none); the single-character
  score of a shot is ``int(round(mean over its characters))`` (0 when no character was found) and of the story
  ``int(round(mean over its shots))``; across stories the unweighted mean (their ``ResultManager`` summary).

Ours (docs/metrics-vistorybench.md): bounded transport retries with exponential backoff, where theirs loops forever
(and raises the temperature by 0.2 on each HTTP error; we keep the sampling unchanged on transport errors); errors
name the URL and the fix; answers are cached on disk by ``sha256(model, messages)`` (the messages carry the image's
bytes and the prompt), so a rerun asks nothing already answered.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storycast.errors import SettingsError, StorycastError
from storycast.settings import setting
from storycast.utils.io import atomic_write_json, sha256_json

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

SOURCE = "ViStoryBench/vistorybench@514cc31f2a7130550b48b8f2c66d18b6b6880a9c"
PROMPT_FILES: dict[str, str] = {
    "scene": "user_prompt_environment_text_align.txt",
    "character_action": "user_prompt_character_text_align.txt",
    "camera": "user_prompt_camera_text_align.txt",
    "single_character_action": "user_prompt_single_character_text_align.txt",
}
"""Aspect -> judge prompt file (``prompt_align_evaluator.py`` lines 33-37; ``cids_evaluator.py`` line 161)."""
PROMPT_SHA256: dict[str, str] = {
    "scene": "261d80b0d4eb7f796a8654c1a1c128ec7704a10b5e3f7ac8eb27110d21cad4de",
    "character_action": "ac9c248a2bd8018c3091f516d4af0dca3c1c65ca1de93130d0efae49d1b2bc19",
    "camera": "ff0ae56cfbb37247832898280eb63912139b4e22c9ca9c51268b2245ab0ca0e9",
    "single_character_action": "6466c6c9c7622a8b5ecdde41fdd19d066626bc9bbafff546186da4a12c02a02c",
}
"""SHA-256 of each prompt file's bytes at :data:`SOURCE`."""
SHOT_ASPECTS = ("scene", "character_action", "camera")
SHOT_FIELDS: dict[str, str] = {"scene": "scene", "character_action": "script", "camera": "camera"}
"""Aspect -> the ViStory shot field judged (``prompt_align_evaluator.py`` lines 120-124; story/vistory.py names)."""
SCORE_PATTERN = re.compile(r"(score|Score):\s*[a-zA-Z]*\s*(\d+)")
DEFAULT_MODEL = "gpt-4.1"
"""``prompt_align_evaluator.py`` line 24: ``self.get_model_id() or 'gpt-4.1'``."""
API_KEY_VARIABLES = ("STORYCAST_JUDGE_API_KEY", "OPENAI_API_KEY")
MAX_TOKENS = 512
SEED = 123
PARSE_ATTEMPTS = 10
TEMPERATURE_STEP = 0.1
IMAGE_SIZE = (512, 512)
"""``gptv_utils.py``: ``max_tokens=512``, ``seed=123``, ``resize_to=(512, 512)``; the evaluator's ``max_retry = 10``
and ``temp_start += 0.1``."""


class JudgeError(StorycastError):
    """The judge endpoint could not be reached or refused the request."""


@dataclass(frozen=True)
class JudgeOptions:
    """Where prompt alignment is judged (``--judge-url``, ``--judge-model``)."""

    url: str | None = setting(
        None,
        "OpenAI-compatible endpoint of the vision-language judge (e.g. https://api.openai.com/v1 or "
        "http://localhost:8000/v1); '/chat/completions' is appended as ViStoryBench's gptv_utils does. None: prompt "
        "alignment is skipped.",
    )
    model: str = setting(DEFAULT_MODEL, "Judge model name; ViStoryBench's default is gpt-4.1.")
    timeout: float = setting(120.0, "Seconds to wait for one answer.")
    retries: int = setting(5, "Transport retries per request (connection errors, timeouts, HTTP 429 and 5xx).")
    backoff: float = setting(2.0, "Seconds before the first transport retry; doubled after each.")
    workers: int = setting(1, "Requests in flight at once (ViStoryBench's config.yaml uses 16).")
    cache_dir: str | None = setting(None, "Folder of cached answers (None: no cache).")

    def validate(self) -> None:
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise SettingsError(
                f"judge url '{self.url}' is not an http(s) URL. Fix: pass --judge-url http(s)://.../v1."
            )
        if not self.model.strip():
            raise SettingsError("judge model is empty. Fix: pass --judge-model NAME (e.g. gpt-4.1).")
        for name in ("timeout", "backoff"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"judge {name} must be positive, got {getattr(self, name)}.")
        for name in ("retries", "workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "retries" else 1):
                raise SettingsError(
                    f"judge {name} must be an integer >= {0 if name == 'retries' else 1}, got {value!r}."
                )

    def skip_reason(self) -> str | None:
        """Why prompt alignment cannot run with these options (None: it can)."""
        if self.url is None:
            return (
                "prompt alignment needs a vision-language judge: pass --judge-url (an OpenAI-compatible endpoint) "
                f"and --judge-model, with its key in {' or '.join(API_KEY_VARIABLES)}"
            )
        return None


def api_key_from_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """The first of :data:`API_KEY_VARIABLES` that is set and not empty."""
    environ = os.environ if environ is None else environ
    return next((environ[name] for name in API_KEY_VARIABLES if environ.get(name)), None)


def load_prompt(aspect: str) -> str:
    """The judge prompt of ``aspect`` (one of :data:`PROMPT_FILES`), as their files hold it."""
    if aspect not in PROMPT_FILES:
        raise SettingsError(f"prompt-alignment aspect '{aspect}' is not known. Fix: use one of {tuple(PROMPT_FILES)}.")
    return resources.files("storycast.evaluation").joinpath("judge_prompts", PROMPT_FILES[aspect]).read_text("utf-8")


def parse_score(answer: str) -> int | None:
    """The first ``Score: <n>`` of a judge's answer (``Score: Good 3`` too), as theirs reads it; None if absent."""
    found = SCORE_PATTERN.search(answer)
    return int(found.group(2)) if found else None


def chat_completions_url(base_url: str) -> str:
    """``<base>/chat/completions`` when the base ends in ``/v1``, else ``<base>/v1/chat/completions`` (gptv_utils)."""
    base = base_url[:-1] if base_url.endswith("/") else base_url
    return f"{base}/chat/completions" if base.endswith("/v1") else f"{base}/v1/chat/completions"


def image_data_url(image: Image.Image, size: tuple[int, int] = IMAGE_SIZE) -> str:
    """The image as their ``encode_image`` sends it: resized (PIL's default filter), then RGB, JPEG, base64."""
    resized = image.resize(size)
    if resized.mode != "RGB":
        resized = resized.convert("RGB")
    buffer = io.BytesIO()
    resized.save(buffer, format="JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _image_part(data_url: str, detail: str | None = None) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "image_url", "image_url": {"url": data_url}}
    if detail is not None:
        part["image_url"]["detail"] = detail
    return part


def shot_messages(aspect: str, text: str, data_url: str) -> list[dict[str, Any]]:
    """The transcript of a shot aspect: one user message with the judge prompt, the shot's text and the image."""
    if aspect not in SHOT_ASPECTS:
        raise SettingsError(f"shot aspect '{aspect}' is not known. Fix: use one of {SHOT_ASPECTS}.")
    content = [{"type": "text", "text": load_prompt(aspect)}, {"type": "text", "text": text}, _image_part(data_url)]
    return [{"role": "user", "content": content}]


def single_character_messages(script: str, name: str, data_url: str) -> list[dict[str, Any]]:
    """The transcript of one character's action: the judge prompt as system message; script, name and crop."""
    content = [
        {"type": "text", "text": script},
        {"type": "text", "text": f"Evaluated Character Name is {name}"},
        _image_part(data_url, detail="low"),
    ]
    system = {"role": "system", "content": [{"type": "text", "text": load_prompt("single_character_action")}]}
    return [system, {"role": "user", "content": content}]


@dataclass(frozen=True)
class Judgement:
    """One judged image.

    Attributes:
        score: The parsed score (0 when no answer held one, as theirs).
        parsed: Whether an answer held a score.
        answer: The last answer.
        attempts: Answers asked for (0 when served from the cache).
        cached: Served from the cache.
    """

    score: int
    parsed: bool
    answer: str
    attempts: int
    cached: bool = False


class VisionJudge:
    """Asks an OpenAI-compatible endpoint to judge images; answers cached on disk by model and messages.

    Args:
        options: Endpoint, model, timeouts, retries, cache.
        api_key: The bearer key (default: :func:`api_key_from_environment`; none: no Authorization header).
        sleep: Waits between transport retries (tests pass a recorder).
    """

    def __init__(
        self,
        options: JudgeOptions,
        *,
        api_key: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        options.validate()
        reason = options.skip_reason()
        if reason is not None:
            raise SettingsError(f"{reason}.")
        self.options = options
        self.url = chat_completions_url(str(options.url))
        self.api_key = api_key if api_key is not None else api_key_from_environment()
        self.sleep = sleep
        self.cache_dir = Path(options.cache_dir).expanduser() if options.cache_dir else None
        self.requests = 0

    @property
    def info(self) -> dict[str, Any]:
        """What judged: recorded next to the numbers."""
        return {"judge_url": self.url, "judge_model": self.options.model, "prompts": SOURCE}

    # -- transport ---------------------------------------------------------------------------------------------

    def _post(self, body: dict[str, Any]) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode("utf-8")
        problem = ""
        for attempt in range(self.options.retries + 1):
            if attempt:
                delay = self.options.backoff * 2 ** (attempt - 1)
                logger.warning("judge %s: %s; retry %d in %.0f s", self.url, problem, attempt, delay)
                self.sleep(delay)
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            self.requests += 1
            try:
                with urllib.request.urlopen(request, timeout=self.options.timeout) as response:
                    payload = json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as err:
                detail = err.read().decode("utf-8", "replace")[:300]
                if err.code == 429 or err.code >= 500:
                    problem = f"HTTP {err.code} {detail}"
                    continue
                raise JudgeError(self._refused(err.code, detail)) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as err:
                problem = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
                continue
            try:
                return str(payload["choices"][0]["message"]["content"] or "")
            except (KeyError, IndexError, TypeError):
                problem = f"an answer without choices[0].message.content: {json.dumps(payload)[:200]}"
        raise JudgeError(
            f"judge {self.url} did not answer after {self.options.retries + 1} tries (last: {problem}). Fix: check "
            "that the server is up and the URL is its OpenAI-compatible base (ending in /v1), or raise the judge "
            "timeout/retries."
        )

    def _refused(self, code: int, detail: str) -> str:
        if code in (401, 403):
            fix = f"set {API_KEY_VARIABLES[0]} (or {API_KEY_VARIABLES[1]}) to a key this endpoint accepts"
        elif code == 404:
            fix = (
                "pass --judge-url the API base (e.g. https://api.openai.com/v1) and a model it serves (--judge-model)"
            )
        else:
            fix = f"check that model '{self.options.model}' accepts images through /chat/completions"
        return f"judge {self.url} refused the request (HTTP {code}: {detail}). Fix: {fix}."

    # -- cache -------------------------------------------------------------------------------------------------

    def _cache_path(self, messages: list[dict[str, Any]]) -> Path | None:
        if self.cache_dir is None:
            return None
        key = sha256_json({"model": self.options.model, "messages": messages})
        return self.cache_dir / key[:2] / f"{key}.json"

    @staticmethod
    def _cached(path: Path | None) -> Judgement | None:
        if path is None or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text("utf-8"))
            return Judgement(int(entry["score"]), True, str(entry["answer"]), 0, cached=True)
        except (OSError, ValueError, KeyError, TypeError) as err:  # unreadable: ask again and rewrite it
            logger.warning("ignoring unreadable cached judgement %s (%s)", path, err)
            return None

    # -- judging -----------------------------------------------------------------------------------------------

    def ask(self, messages: list[dict[str, Any]]) -> Judgement:
        """Ask until an answer holds a score (temperature 0.0, +0.1 per unparsable answer, 10 answers at most)."""
        path = self._cache_path(messages)
        cached = self._cached(path)
        if cached is not None:
            return cached
        answer = ""
        for attempt in range(PARSE_ATTEMPTS):
            body = {
                "model": self.options.model,
                "max_tokens": MAX_TOKENS,
                "temperature": round(attempt * TEMPERATURE_STEP, 10),
                "messages": messages,
                "seed": SEED,
            }
            answer = self._post(body)
            score = parse_score(answer)
            if score is not None:
                if path is not None:  # only scored answers are kept: an unparsed one is asked again next run
                    entry = {"model": self.options.model, "url": self.url, "score": score, "answer": answer}
                    atomic_write_json(path, entry)
                return Judgement(score, True, answer, attempt + 1)
        logger.warning(
            "judge %s gave no score in %d answers; counting 0 as ViStoryBench does", self.url, PARSE_ATTEMPTS
        )
        return Judgement(0, False, answer, PARSE_ATTEMPTS)

    def judge_shot(self, aspect: str, text: str, image: Image.Image) -> Judgement:
        """Judge one aspect (``scene``, ``character_action``, ``camera``) of a shot's image against its text."""
        return self.ask(shot_messages(aspect, text, image_data_url(image)))

    def judge_character(self, script: str, name: str, crop: Image.Image) -> Judgement:
        """Judge one character's action: its crop against the shot's script (``single_character_action``)."""
        return self.ask(single_character_messages(script, name, image_data_url(crop)))

    def judge_shots(
        self, shots: Mapping[int, tuple[Image.Image, Mapping[str, str]]]
    ) -> dict[int, dict[str, Judgement]]:
        """Judge every shot aspect of a story.

        Args:
            shots: Shot index -> (generated image, ``{'scene': ..., 'script': ..., 'camera': ...}`` the shot's texts).

        Returns:
            Shot index -> aspect -> judgement, with ``options.workers`` requests in flight.
        """
        jobs = [
            (index, aspect, image, texts[SHOT_FIELDS[aspect]])
            for index, (image, texts) in shots.items()
            for aspect in SHOT_ASPECTS
        ]
        with ThreadPoolExecutor(max_workers=self.options.workers) as pool:
            results = list(pool.map(lambda job: self.judge_shot(job[1], job[3], job[2]), jobs))
        out: dict[int, dict[str, Judgement]] = {}
        for (index, aspect, _, _), judgement in zip(jobs, results, strict=True):
            out.setdefault(index, {})[aspect] = judgement
        return out


# ----------------------------------------------------------------------------------------------
# Aggregation (pure)


def shot_aspect_means(per_shot: Mapping[int, Mapping[str, float]]) -> dict[str, float]:
    """Per aspect, the mean score over the shots judged for it (0 when none), as their ``avg_scores``."""
    means = {}
    for aspect in SHOT_ASPECTS:
        values = [scores[aspect] for scores in per_shot.values() if aspect in scores]
        means[aspect] = sum(values) / len(values) if values else 0
    return means


def single_character_scores(per_shot: Mapping[int, Mapping[str, int]]) -> tuple[dict[int, int], int | None]:
    """Their ``single_character_action``: per shot ``int(round(mean over its characters))`` (0 with none), per story
    ``int(round(mean over shots))`` (None when no shot: the metric is absent).

    Args:
        per_shot: Shot index -> character name -> score, for every shot judged (an empty mapping when no character
            was found in it).
    """
    shots = {index: round(sum(chars.values()) / len(chars)) if chars else 0 for index, chars in per_shot.items()}
    story = round(sum(shots.values()) / len(shots)) if shots else None  # halves to even, as theirs
    return shots, story


def unparsed_count(judgements: Sequence[Judgement]) -> int:
    """How many judgements held no score (each counted as 0)."""
    return sum(not j.parsed for j in judgements)


def prompt_align_average(
    scene: float | None, camera: float | None, character_action: float | None, single_character_action: float | None
) -> float | None:
    """The leaderboard's Prompt Align Avg of one row (``utils/summarize_leaderboard.py`` ``_compute_pa_avg_from_row``,
    lines 439-470): the mean of the four prompt-alignment values present, plus a fifth term, the row's "character
    existence" value, which falls back to ``single_character_action`` when the row has no existence metric (none of
    the benchmark's evaluators at 514cc31 writes one). So the single-character action counts twice:
    ``(scene + camera + character_action + 2 * single) / 5``. None when no value is present.
    """
    values = [v for v in (scene, camera, character_action, single_character_action) if v is not None]
    if single_character_action is not None:
        values.append(single_character_action)
    return sum(values) / len(values) if values else None
