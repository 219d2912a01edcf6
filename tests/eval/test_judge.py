"""The optional judge: asked only about answers the rules cannot read, with upstream's retries and fallbacks, over
any OpenAI-compatible server (a scripted stub here, and our own `internvl serve`)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image

from internvl.cli import main
from internvl.errors import ConfigError
from internvl.eval.judge import Judge
from internvl.eval.scoring import ScoreOptions, score
from internvl.eval.tsv import encode_image, read_benchmark, write_tsv


@contextlib.contextmanager
def stub_server(reply):
    """An OpenAI-style server whose chat replies come from `reply(prompt, temperature)`; yields (url, requests)."""
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, body, status=200):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            requests.append(("GET", self.path, self.headers.get("Authorization"), None))
            self._send({"object": "list", "data": [{"id": "stub-judge", "object": "model"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append(("POST", self.path, self.headers.get("Authorization"), body))
            text = reply(body["messages"][0]["content"], body["temperature"])
            if text is None:
                return self._send({"error": {"message": "boom"}}, status=500)
            self._send({"choices": [{"message": {"role": "assistant", "content": text}}]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        thread.join(10)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connect_picks_the_first_model_and_sends_the_key():
    with stub_server(lambda p, t: "B") as (url, requests):
        judge = Judge(url + "/v1/", api_key="secret")
        assert judge.connect() == "stub-judge"
        assert requests[0][:3] == ("GET", "/v1/models", "Bearer secret")
        assert Judge(url).connect() == "stub-judge"  # /v1 is added when missing


def test_unreachable_judge_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"--judge-url http://127.0.0.1:\d+/v1: cannot list the judge's models"):
        Judge(f"http://127.0.0.1:{free_port()}").connect()


def test_choice_retries_then_draws_a_seeded_option():
    with stub_server(lambda p, t: "I cannot tell") as (url, requests):
        judge = Judge(url)
        first = judge.choose("Which?", {"A": "cat", "B": "dog"}, "a pet", seed="row 1")
        assert judge.calls == 3 and first in ("A", "B", "Z")
        assert judge.choose("Which?", {"A": "cat", "B": "dog"}, "a pet", seed="row 1") == first  # reproducible
    with stub_server(lambda p, t: None) as (url, requests):  # a failing server counts as failed tries
        judge = Judge(url)
        assert judge.choose("Which?", {"A": "cat", "B": "dog"}, "a pet") in ("A", "B", "Z") and judge.calls == 3


def test_yes_no_raises_the_temperature_then_gives_up():
    with stub_server(lambda p, t: "Unknown") as (url, requests):
        judge = Judge(url)
        assert judge.yes_no("Is it?", "hmm") == "Unknown"
        assert [r[3]["temperature"] for r in requests if r[0] == "POST"] == [0.0, 0.5, 1.0, 1.5, 2.0]
    with stub_server(lambda p, t: "Unknown" if t == 0 else "No.") as (url, requests):
        assert Judge(url).yes_no("Is it?", "hmm") == "No"


def _files(tmp_path):
    img = encode_image(Image.new("RGB", (8, 8)))
    mcq = write_tsv(tmp_path / "Pets.tsv", ["index", "image", "question", "A", "B", "answer"],
                    [{"index": i, "image": img, "question": "Which pet?", "A": "cat", "B": "dog", "answer": "B"}
                     for i in range(3)])
    yn = write_tsv(tmp_path / "Yes.tsv", ["index", "image", "question", "answer"],
                   [{"index": i, "image": img, "question": "Is it?", "answer": "Yes"} for i in range(3)])
    return mcq, yn


def test_the_judge_is_asked_only_when_the_rules_cannot_decide(tmp_path):
    mcq, yn = _files(tmp_path)

    def reply(prompt, temperature):
        return "B" if "multiple-choice" in prompt else "Yes"
    with stub_server(reply) as (url, requests):
        judge = Judge(url)
        result = score(read_benchmark(mcq), {"0": "B", "1": "cat", "2": "a fluffy animal"}, ScoreOptions(judge=judge))
        assert [(r["extracted"], r["decided_by"]) for r in result.records] == [("B", "rule"), ("A", "rule"),
                                                                              ("B", "judge")]
        assert result.judge_calls == 1 and result.table[0]["acc"] == pytest.approx(200 / 3)
        prompt = requests[-1][3]["messages"][0]["content"]
        assert "Which pet?" in prompt and "A. cat\nB. dog" in prompt and "a fluffy animal" in prompt
        result = score(read_benchmark(yn), {"0": "yes", "1": "no", "2": "perhaps"}, ScoreOptions(judge=judge))
        assert [r["extracted"] for r in result.records] == ["Yes", "No", "Yes"] and result.judge_calls == 1
        # without a judge the undecided rows count as wrong
        alone = score(read_benchmark(yn), {"0": "yes", "1": "no", "2": "perhaps"})
        assert alone.table[0]["acc"] == pytest.approx(100 / 3)


def test_cli_score_with_a_judge(tmp_path, capsys):
    mcq, _ = _files(tmp_path)
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps({"index": str(i), "prediction": p}) + "\n"
                                                 for i, p in enumerate(["B", "?", "?"])))
    with stub_server(lambda p, t: "B") as (url, requests):
        assert main(["eval", "score", "--data", str(mcq), "--predictions", str(tmp_path / "pred.jsonl"),
                     "--judge-url", url, "--judge-api-key", "k", "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["datasets"]["Pets"]["table"][0]["acc"] == 100.0 and summary["datasets"]["Pets"]["judge_calls"] == 2
    assert summary["config"]["judge_api_key"] == "***"  # no secret in the output
    assert main(["eval", "score", "--data", str(mcq), "--predictions", str(tmp_path / "pred.jsonl"),
                 "--judge-url", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "cannot list the judge's models" in capsys.readouterr().err


def test_internvl_serve_works_as_a_judge(tmp_path):
    pytest.importorskip("fastapi")
    import uvicorn

    from internvl.chat import from_pretrained
    from internvl.checkpoint.loader import save_checkpoint
    from internvl.models.internvl import InternVL
    from internvl.presets import PRESETS
    from internvl.processing.tokenizer import byte_tokenizer
    from internvl.serve.app import create_app
    from internvl.serve.config import ServeConfig

    torch.manual_seed(0)
    tok = byte_tokenizer()
    model = InternVL(PRESETS["tiny-random"].config.replace(image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>")))
    model.init_weights(std=0.5)
    path = save_checkpoint(model, tmp_path / "judge", "official")
    tok.save_pretrained(path)
    loaded, tokenizer = from_pretrained(path, dtype=torch.float32)
    app = create_app(loaded, tokenizer, ServeConfig(model=str(path), dtype="fp32", default_max_tokens=8), "tiny-judge")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the judge server did not start"
            time.sleep(0.02)
        judge = Judge(f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}")
        assert judge.connect() == "tiny-judge"
        assert isinstance(judge.complete("Is it? Answer yes or no."), str)  # a random model's text, well-formed
    finally:
        server.should_exit = True
        thread.join(30)
