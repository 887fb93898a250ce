"""Shared fixtures: tiny random models built from configs, isolated caches, the real built-ins."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Nothing in the tests may touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

WORDS = ("the a of and to in is was it that cat dog sat on mat paris france capital city river "
         "model layer token text data one two three four five red blue green big small").split()


def make_word_tokenizer(folder: Path, bos: str = "<s>", eos: str = "</s>", extra: tuple[str, ...] = ()):
    """A whitespace WordLevel tokenizer over a small vocabulary, saved as a transformers tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<unk>", "<pad>", bos, eos, *extra, *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token=bos,
                                   eos_token=eos)
    fast.save_pretrained(folder)
    return fast


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A random-init 2-layer Llama causal LM folder (d=32, 4 heads) with a word tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_llama")
    tok = make_word_tokenizer(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    cfg.architectures = ["LlamaForCausalLM"]
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A random-init 2-layer BERT encoder folder (d=32) with a word tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_bert")
    tok = make_word_tokenizer(folder, bos="[CLS]", eos="[SEP]")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=64, pad_token_id=tok.pad_token_id)
    BertModel(cfg).save_pretrained(folder)
    return folder


@pytest.fixture()
def store(tmp_path):
    from workbench.store import ActivationStore

    return ActivationStore(root=tmp_path / "activations")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matrices: extra OpenMP threads only spin on a shared 2-core CPU. Use per module with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- the served app and a real browser (tests/test_browser*.py) --------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# One server per browser test. Its output goes to a file: a pipe nobody reads fills up (64 KiB of
# warnings and progress bars) and the server then blocks on its next write. That was the "shared
# server that stopped answering by the fourth test", and a Layer quality run that froze mid-run.
@pytest.fixture()
def served_app(tmp_path):
    port = _free_port()
    log_path = tmp_path / "streamlit.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        log.close()
        pytest.fail("the app did not start: " + log_path.read_text(errors="replace")[-2000:])
    yield url, port
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # a loaded machine: a server slow to stop is not a test failure
        proc.kill()
        proc.wait(timeout=30)
    log.close()



@contextmanager
def browser_page(width: int = 1400, height: int = 1000):
    """A page in headless Debian Chromium (Playwright), with the flags this sandbox needs."""
    if CHROMIUM is None:
        pytest.fail("headless Chromium is required for the browser tests: apt-get install chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync", "--disable-quic"])
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def settle(page, seconds: int = 600, required: bool = True) -> None:
    """Wait for the script run to end (the app root's ``data-test-script-state``), then 1.5 s for the browser to draw."""
    page.wait_for_timeout(500)
    try:
        page.locator("[data-testid='stApp'][data-test-script-state='notRunning']").wait_for(
            state="attached", timeout=seconds * 1000)
    except Exception:
        if required:
            raise
        print(f"the script run had not ended {seconds} s after the figure appeared")
    page.wait_for_timeout(1500)
