"""`wm evidence text` / `wm evidence check`: a report a third party re-checks from the revealed key,
that fails on a wrong key, an edited figure or a changed input, and whose HTML renders in a real
headless Chromium without a single request leaving the page."""

import hashlib
import json
import os
import shutil
import subprocess
import time

import pytest
from typer.testing import CliRunner

from helpers import marked_text
from wmkit.cli.main import app
from wmkit.keys import SecretKey, read_key_file
from wmkit.watermark.text import KGW

runner = CliRunner()


@pytest.fixture
def case(tmp_path, tokenizer):
    keyfile = tmp_path / "wm.key"
    assert runner.invoke(app, ["keygen", "-o", str(keyfile)]).exit_code == 0
    key = read_key_file(keyfile)
    human = marked_text(KGW(SecretKey.generate()), tokenizer, 300, seed=5)
    (tmp_path / "mixed.txt").write_text(human[:800] + marked_text(KGW(key), tokenizer, 120, seed=1) + human[800:])
    (tmp_path / "plain.txt").write_text(marked_text(KGW(SecretKey.generate()), tokenizer, 150, seed=2))
    r = runner.invoke(app, ["evidence", "text", str(tmp_path / "mixed.txt"), str(tmp_path / "plain.txt"), "-k", str(keyfile),
                            "-o", str(tmp_path / "report")])
    assert r.exit_code == 0, r.stderr
    return tmp_path, keyfile, key


def test_the_report_records_what_a_third_party_needs_and_checks_out(case):
    tmp_path, keyfile, key = case
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["format"] == "wmkit-evidence/1" and report["key"] == {"id": key.fingerprint(), "commitment": key.commitment()}
    assert report["key"]["commitment"] == (tmp_path / "wm.key.commitment").read_text().split()[0]
    assert [i["path"] for i in report["inputs"]] == ["../mixed.txt", "../plain.txt"]
    assert report["inputs"][0]["sha256"] == hashlib.sha256((tmp_path / "mixed.txt").read_bytes()).hexdigest()
    assert {"wmkit", "torch", "transformers", "tokenizers", "python"} <= report["versions"].keys()
    assert report["command"][:3] == ["wm", "evidence", "text"] and report["scheme"]["scheme"] == "kgw"
    mixed, plain = report["results"]
    assert mixed["watermarked"] and mixed["window"]["watermarked"] and not plain["watermarked"]
    assert mixed["window"]["token_start"] > 100  # the marked passage sits after 800 characters of other text
    assert "secret" not in json.dumps(report).lower() and key.secret.hex() not in json.dumps(report)
    r = runner.invoke(app, ["evidence", "check", str(tmp_path / "report" / "report.json"), "-k", str(keyfile)])
    assert r.exit_code == 0 and "every figure matches" in r.stderr
    again = [a if a != "NEW_FOLDER" else str(tmp_path / "again") for a in report["command"][1:]]
    assert runner.invoke(app, again).exit_code == 0  # the recorded command reproduces the figures
    assert json.loads((tmp_path / "again" / "report.json").read_text())["results"] == report["results"]


def test_a_wrong_key_an_edited_figure_or_a_changed_input_fails_the_check(case):
    tmp_path, keyfile, _ = case
    report_file = tmp_path / "report" / "report.json"
    other = tmp_path / "other.key"
    runner.invoke(app, ["keygen", "-o", str(other)])
    r = runner.invoke(app, ["evidence", "check", str(report_file), "-k", str(other)])
    assert r.exit_code == 1 and "does not open the report's commitment" in r.stderr
    report = json.loads(report_file.read_text())
    report["results"][1]["p_value"] = 1e-9  # a forged verdict
    report["results"][0]["window"]["token_start"] += 1
    forged = tmp_path / "report" / "forged.json"
    forged.write_text(json.dumps(report))
    r = runner.invoke(app, ["evidence", "check", str(forged), "-k", str(keyfile)])
    assert r.exit_code == 1 and "plain.txt: p_value is" in r.stderr and "mixed.txt: window is" in r.stderr
    (tmp_path / "plain.txt").write_text((tmp_path / "plain.txt").read_text() + " ")
    r = runner.invoke(app, ["evidence", "check", str(report_file), "-k", str(keyfile)])
    assert r.exit_code == 2 and "plain.txt: changed since the report was written" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "plain.txt").unlink()
    r = runner.invoke(app, ["evidence", "check", str(report_file), "-k", str(keyfile)])
    assert r.exit_code == 2 and "the report's input is missing" in r.stderr
    r = runner.invoke(app, ["evidence", "check", str(keyfile), "-k", str(keyfile)])
    assert r.exit_code == 2 and "not JSON" in r.stderr


@pytest.mark.parametrize("drop", ["results", "key", "inputs", "scheme"])
def test_a_report_missing_a_field_is_a_one_line_error(case, drop):
    """Issue 39: a report without 'results' or 'key' was a KeyError traceback with exit 1."""
    tmp_path, keyfile, _ = case
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    del report[drop]
    broken = tmp_path / "report" / "broken.json"
    broken.write_text(json.dumps(report))
    r = runner.invoke(app, ["evidence", "check", str(broken), "-k", str(keyfile)])
    assert r.exit_code == 2 and f"'{drop}' is missing" in r.stderr and "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1


def test_an_edited_html_page_fails_the_check(case):
    """Issue 33: report.html is what a reader sees; an edit there (a forged verdict) fails the check."""
    tmp_path, keyfile, _ = case
    page = tmp_path / "report" / "report.html"
    html = page.read_text()
    assert "not watermarked" in html
    page.write_text(html.replace("not watermarked", "WATERMARKED (p = 1e-12)", 1))
    r = runner.invoke(app, ["evidence", "check", str(tmp_path / "report" / "report.json"), "-k", str(keyfile)])
    assert r.exit_code == 1 and "report.html does not show what report.json holds" in r.stderr
    page.write_text(html)
    r = runner.invoke(app, ["evidence", "check", str(tmp_path / "report" / "report.json"), "-k", str(keyfile)])
    assert r.exit_code == 0, r.stderr


def test_bad_evidence_requests_fail_before_any_work(case):
    tmp_path, keyfile, _ = case
    r = runner.invoke(app, ["evidence", "text", str(tmp_path / "plain.txt"), "-k", str(keyfile), "-o", str(tmp_path / "report")])
    assert r.exit_code == 2 and "already exists" in r.stderr
    r = runner.invoke(app, ["evidence", "text", str(tmp_path / "plain.txt"), "-s", "vllm-gumbel", "--vllm-key", "42", "-o",
                            str(tmp_path / "r2")])
    assert r.exit_code == 2 and "needs a wmkit key file" in r.stderr and not (tmp_path / "r2").exists()
    r = runner.invoke(app, ["evidence", "text", str(tmp_path / "nope.txt"), "-k", str(keyfile), "-o", str(tmp_path / "r3")])
    assert r.exit_code == 2 and "no such file" in r.stderr and not (tmp_path / "r3").exists()
    (tmp_path / "short.txt").write_text("Too short to score.")
    r = runner.invoke(app, ["evidence", "text", str(tmp_path / "plain.txt"), str(tmp_path / "short.txt"), "-k", str(keyfile),
                            "-o", str(tmp_path / "r4")])
    assert r.exit_code == 2 and "short.txt: only" in r.stderr and "can be scored" in r.stderr and not (tmp_path / "r4").exists()


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
    messages separated by NUL on fds 3 and 4), so the test sees the page's own network requests (not
    the browser's background traffic) and can ask the rendered DOM."""

    def __init__(self) -> None:
        path = shutil.which("chromium") or shutil.which("chromium-browser")
        assert path, "Chromium is needed for this test: make install installs it (apt-get install chromium)"
        to_browser, self._send = os.pipe()
        self._recv, from_browser = os.pipe()
        self.proc = subprocess.Popen([path, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                      "--remote-debugging-pipe", "about:blank"], close_fds=False,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=lambda: (os.dup2(to_browser, 3), os.dup2(from_browser, 4)))
        os.close(to_browser)
        os.close(from_browser)
        self._buf, self._id, self.events = b"", 0, []

    def _read(self) -> dict:
        while b"\0" not in self._buf:
            chunk = os.read(self._recv, 1 << 16)
            assert chunk, "Chromium closed the DevTools pipe"
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._send, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._read()
            if m.get("id") == self._id:
                assert "error" not in m, m
                return m.get("result", {})
            self.events.append(m)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            assert time.monotonic() < deadline, f"no {method} within {timeout} s"
            self.events.append(self._read())

    def open(self, url: str) -> tuple[list[str], str]:
        """Load ``url``; the URLs of the requests it made (the document itself excluded) and a session."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Network.enable", session)
        self.call("Page.enable", session)
        self.events.clear()
        self.call("Page.navigate", session, url=url)
        self.wait_for("Page.loadEventFired")
        self.call("Runtime.evaluate", session, expression="new Promise(r => setTimeout(r, 500))", awaitPromise=True)
        urls = [e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent" and e.get("sessionId") == session]
        return [u for u in urls if u != url], session

    def evaluate(self, session: str, expression: str):
        return self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        try:
            self.call("Browser.close")
        finally:
            self.proc.wait(30)


def test_the_html_renders_in_headless_chromium_with_no_request_leaving_the_page(case):
    tmp_path, *_ = case
    control = tmp_path / "control.html"  # the harness sees a request when a page makes one
    control.write_text('<!doctype html><html><body><img src="http://example.invalid/x.png">hi</body></html>')
    browser = Chromium()
    try:
        requests, _ = browser.open(control.as_uri())
        assert requests == ["http://example.invalid/x.png"]
        requests, page = browser.open((tmp_path / "report" / "report.html").as_uri())
        assert requests == []  # not one request left the report
        assert browser.evaluate(page, "document.querySelectorAll('svg.plot').length") == 6  # per input: null, tokens, scan
        assert browser.evaluate(page, "document.querySelector('svg.plot').getBoundingClientRect().width") > 100
        assert "watermarked" in browser.evaluate(page, "document.body.innerText")
        assert browser.evaluate(page, "document.scripts.length") == 0
    finally:
        browser.close()


@pytest.fixture
def eaas_case(tmp_path):
    """An EaaS report on a marked (ESpeW) suspect and one on an unrelated model, from toy encoders."""
    from test_eaas import ToyEncoder

    from wmkit.evidence import eaas_report, render_html
    from wmkit.watermark.embedding import ESpeW, WatermarkedEncoder, ownership_queries, verify_ownership

    keyfile = tmp_path / "wm.key"
    assert runner.invoke(app, ["keygen", "-o", str(keyfile)]).exit_code == 0
    scheme = ESpeW(read_key_file(keyfile))
    clean = ToyEncoder()
    target = clean.encode([scheme.target_text()])[0]
    folders = {}
    for name, suspect in (("marked", WatermarkedEncoder(clean, scheme)), ("other", ToyEncoder(seed=7))):
        folder = tmp_path / name
        folder.mkdir()
        report = eaas_report(folder, suspect.encode(ownership_queries(scheme, 32, 20)), target, scheme, suspect=name,
                             mode="target", n_texts=32, n_decoys=20, fpr=1e-3, key_id=scheme.key.fingerprint(),
                             commitment=scheme.key.commitment(), command=["test"])
        (folder / "report.json").write_text(json.dumps(report))
        (folder / "report.html").write_text(render_html(report))
        direct = verify_ownership(suspect, scheme, target, "target", n_texts=32, n_decoys=20, fpr=1e-3)
        assert report["results"][0]["p_value"] == pytest.approx(direct.p_value, rel=1e-3, abs=1e-12)  # float32 answers
        folders[name] = folder
    return tmp_path, keyfile, folders


def test_an_eaas_report_is_rechecked_from_the_key_and_the_recorded_answers(eaas_case):
    tmp_path, keyfile, folders = eaas_case
    marked = json.loads((folders["marked"] / "report.json").read_text())
    other = json.loads((folders["other"] / "report.json").read_text())
    assert marked["results"][0]["watermarked"] and not other["results"][0]["watermarked"]
    assert len(marked["results"][0]["null"]) == 20 and marked["inputs"][0]["path"] == "responses.npz"
    for folder in folders.values():
        r = runner.invoke(app, ["evidence", "check", str(folder / "report.json"), "-k", str(keyfile)])
        assert r.exit_code == 0, r.stderr
    forged = dict(other, results=[dict(other["results"][0], watermarked=True, p_value=1e-6)])
    (folders["other"] / "forged.json").write_text(json.dumps(forged))
    r = runner.invoke(app, ["evidence", "check", str(folders["other"] / "forged.json"), "-k", str(keyfile)])
    assert r.exit_code == 1 and "watermarked is false, the report says true" in r.stderr
    with open(folders["marked"] / "responses.npz", "ab") as f:
        f.write(b"\0")
    r = runner.invoke(app, ["evidence", "check", str(folders["marked"] / "report.json"), "-k", str(keyfile)])
    assert r.exit_code == 2 and "responses.npz: changed since the report was written" in r.stderr


def test_the_eaas_html_renders_with_its_decoy_distribution_and_no_request(eaas_case):
    _, _, folders = eaas_case
    browser = Chromium()
    try:
        requests, page = browser.open((folders["marked"] / "report.html").as_uri())
        assert requests == []
        assert browser.evaluate(page, "document.querySelectorAll('svg.plot').length") == 1
        assert "Decoy distribution" in browser.evaluate(page, "document.body.innerText")
    finally:
        browser.close()


@pytest.mark.slow
def test_wm_evidence_eaas_on_the_real_model(tmp_path):
    """The command end to end: the provider's own clean model as the suspect is not derived; the folder re-checks."""
    from wmkit.models import default_embedder_path

    keyfile = tmp_path / "wm.key"
    runner.invoke(app, ["keygen", "-o", str(keyfile)])
    out = tmp_path / "ev"
    r = runner.invoke(app, ["evidence", "eaas", "--suspect", str(default_embedder_path()), "-k", str(keyfile), "--texts",
                            "32", "--decoys", "10", "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert not report["results"][0]["watermarked"] and report["command"][:3] == ["wm", "evidence", "eaas"]
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "responses.npz"]
    r = runner.invoke(app, ["evidence", "check", str(out / "report.json"), "-k", str(keyfile)])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(app, ["evidence", "eaas", "--suspect", "x", "-k", str(keyfile), "--mode", "positions", "-o", str(tmp_path / "e2")])
    assert r.exit_code == 2 and "--mode must be" in r.stderr and not (tmp_path / "e2").exists()
    r = runner.invoke(app, ["evidence", "eaas", "--suspect", "x", "-k", str(keyfile), "-s", "wet", "-o", str(tmp_path / "e3")])
    assert r.exit_code == 2 and "use wm eaas verify --json" in r.stderr and not (tmp_path / "e3").exists()


@pytest.fixture
def fingerprint_case(tmp_path):
    """Fingerprint reports (tiny models): the signed model in bfloat16 (derived) and an unrelated one."""
    import torch
    from test_fingerprint import tiny

    from wmkit.evidence import fingerprint_report, render_html
    from wmkit.fingerprint import ModelAccess, enroll, suspect_vectors, verify_fingerprint

    victim = tiny(0)
    sig = enroll(victim, unrelated=[tiny(100), tiny(101)], queries=16)
    sig_path = tmp_path / "victim.sig.safetensors"
    sig.save(sig_path)
    folders = {}
    for name, model in (("bf16", victim.to(torch.bfloat16)), ("unrelated", tiny(7))):
        access = ModelAccess(model, "logits")
        folder = tmp_path / name
        folder.mkdir()
        report = fingerprint_report(folder, sig_path, suspect_vectors(sig, access, 24), suspect=name, access="logits",
                                    restricted=False, fpr=1e-3, command=["test"])
        (folder / "report.json").write_text(json.dumps(report))
        (folder / "report.html").write_text(render_html(report))
        direct = verify_fingerprint(sig, ModelAccess(model, "logits"), queries=24, fpr=1e-3)
        assert report["results"][0]["watermarked"] == direct.derived and report["results"][0]["contained"] == direct.to_dict()["contained"]
        folders[name] = folder
    return tmp_path, sig_path, folders


def test_a_fingerprint_report_is_rechecked_without_a_key(fingerprint_case):
    tmp_path, sig_path, folders = fingerprint_case
    derived = json.loads((folders["bf16"] / "report.json").read_text())
    unrelated = json.loads((folders["unrelated"] / "report.json").read_text())
    assert derived["results"][0]["watermarked"] and not unrelated["results"][0]["watermarked"]
    assert derived["key"] is None and derived["signature_sha256"] == hashlib.sha256(sig_path.read_bytes()).hexdigest()
    assert derived["inputs"][0]["path"] == "../victim.sig.safetensors" and len(derived["results"][0]["residuals"]) == 24
    for folder in folders.values():
        r = runner.invoke(app, ["evidence", "check", str(folder / "report.json")])
        assert r.exit_code == 0, r.stderr
    forged = dict(unrelated, results=[dict(unrelated["results"][0], contained=24)])
    (folders["unrelated"] / "forged.json").write_text(json.dumps(forged))
    r = runner.invoke(app, ["evidence", "check", str(folders["unrelated"] / "forged.json")])
    assert r.exit_code == 1 and "contained is" in r.stderr
    with open(sig_path, "ab") as f:
        f.write(b"\0")
    r = runner.invoke(app, ["evidence", "check", str(folders["bf16"] / "report.json")])
    assert r.exit_code == 2 and "victim.sig.safetensors: changed since the report was written" in r.stderr


def test_the_fingerprint_html_renders_its_residuals_and_null_with_no_request(fingerprint_case):
    _, _, folders = fingerprint_case
    browser = Chromium()
    try:
        requests, page = browser.open((folders["bf16"] / "report.html").as_uri())
        assert requests == []
        assert browser.evaluate(page, "document.querySelectorAll('svg.plot').length") == 2
        text = browser.evaluate(page, "document.body.innerText")
        assert "derived from the signed model" in text and "Residuals" in text
    finally:
        browser.close()


def test_wm_evidence_fingerprint_on_a_model_folder(fingerprint_case, tokenizer):
    from test_fingerprint import tiny

    tmp_path, sig_path, _ = fingerprint_case
    (tmp_path / "unrelated_model").mkdir()
    tiny(7).save_pretrained(tmp_path / "unrelated_model")
    tokenizer.save_pretrained(tmp_path / "unrelated_model")  # load_lm wants one; the fingerprint reads only logits
    out = tmp_path / "fp-evidence"
    r = runner.invoke(app, ["evidence", "fingerprint", "--signature", str(sig_path), "--suspect", str(tmp_path / "unrelated_model"),
                            "--queries", "12", "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert not report["results"][0]["watermarked"] and report["results"][0]["queries"] == 12
    assert runner.invoke(app, ["evidence", "check", str(out / "report.json")]).exit_code == 0
    # top-1 is asked as wm fingerprint verify asks it, one query at a time: an unrelated model stops
    # at the first look (4 of at most 8), and the check replays the looks on the recorded vectors
    out = tmp_path / "fp-top1"
    r = runner.invoke(app, ["evidence", "fingerprint", "--signature", str(sig_path), "--suspect", str(tmp_path / "unrelated_model"),
                            "--access", "top1", "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["test"]["sequential"] == {"max_queries": 8, "first_look": 4}
    assert not report["results"][0]["watermarked"] and report["results"][0]["queries"] == 4
    assert runner.invoke(app, ["evidence", "check", str(out / "report.json")]).exit_code == 0
    r = runner.invoke(app, ["evidence", "fingerprint", "--signature", str(sig_path), "--suspect", str(tmp_path / "nope"),
                            "-o", str(tmp_path / "fp2")])
    assert r.exit_code == 2 and "no such model folder" in r.stderr and not (tmp_path / "fp2").exists()
