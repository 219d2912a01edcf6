"""An optional LLM judge for the answers the rules cannot read, over any OpenAI-compatible server.

VLMEvalKit falls back to a judge model (GPT by default) when `can_infer` finds no option in a
multiple-choice answer, or when a yes/no answer says neither or both. Offline there is none and such
answers count as wrong (its `exact_matching` mode); `--judge-url` points at any server speaking
`POST /v1/chat/completions` (`internvl serve` included) and the judge is then asked about those answers
only. As upstream: a choice is asked up to 3 times (each reply read with the same rules), then an option
(or 'Z') is drawn at random, seeded by the row so reruns agree; a yes/no is asked up to 5 times at
temperatures 0, 0.5, 1, ... and stays Unknown after that. The prompts are our own wording.
"""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections.abc import Mapping

from ..errors import ConfigError
from .choice import REFUSAL, can_infer
from .yorn import UNKNOWN, extract_yes_no

CHOICE_PROMPT = (
    "Decide which option of a multiple-choice question a given answer picks.\n"
    "Question: {question}\nOptions:\n{options}\nAnswer: {answer}\n"
    "Reply with the letter of the option the answer picks, or Z if it picks none of them. Reply with the "
    "letter only.")
YES_NO_PROMPT = (
    "Decide whether a given answer to a yes/no question means Yes or No.\n"
    "Question: {question}\nAnswer: {answer}\n"
    "Reply with one word: Yes, No, or Unknown if the answer means neither.")


class Judge:
    """A client for one judge model; counts its calls."""

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None, timeout: float = 60.0,
                 choice_tries: int = 3, yes_no_tries: int = 5) -> None:
        base = url.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.choice_tries, self.yes_no_tries = choice_tries, yes_no_tries
        self.calls = 0

    def _request(self, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method="POST" if data else "GET")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return json.loads(resp.read())

    def connect(self) -> str:
        """Check the server answers and pick its first model when none was named; returns the model id.

        Raises:
            ConfigError: The server cannot be reached or does not list models in the OpenAI format.
        """
        try:
            listed = self._request("/models")
            ids = [m["id"] for m in listed.get("data", [])]
        except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            reason = getattr(e, "reason", None) or e
            raise ConfigError(f"--judge-url {self.base}: cannot list the judge's models at {self.base}/models "
                              f"({reason})") from None
        if self.model is None:
            if not ids:
                raise ConfigError(f"--judge-url {self.base}: the server lists no models; pass --judge-model")
            self.model = ids[0]
        return self.model

    def complete(self, prompt: str, temperature: float = 0.0) -> str | None:
        """The judge's reply to one user message, or None when the call fails (a failed try)."""
        if self.model is None:
            self.connect()
        self.calls += 1
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}], "temperature": temperature,
                "max_tokens": 16}
        try:
            reply = self._request("/chat/completions", body)
            return str(reply["choices"][0]["message"]["content"] or "")
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError):
            return None

    def choose(self, question: str, choices: Mapping[str, str], prediction: str, seed: str = "") -> str:
        """The option letter (or 'Z') the prediction picks, by the judge; random after failed tries."""
        options = "\n".join(f"{k}. {v}" for k, v in choices.items())
        prompt = CHOICE_PROMPT.format(question=question, options=options, answer=prediction)
        for _ in range(self.choice_tries):
            reply = self.complete(prompt)
            if reply is not None and (letter := can_infer(reply, choices)):
                return letter
        return random.Random(f"choice:{seed}").choice([*choices] + ([] if REFUSAL in choices else [REFUSAL]))

    def yes_no(self, question: str, prediction: str) -> str:
        """'Yes', 'No' or 'Unknown' for the prediction, by the judge."""
        prompt = YES_NO_PROMPT.format(question=question, answer=prediction)
        for i in range(self.yes_no_tries):
            reply = self.complete(prompt, temperature=0.5 * i)
            if reply is not None and (said := extract_yes_no(reply)) != UNKNOWN:
                return said
        return UNKNOWN
