"""A pytest plugin for llama.cpp's server test suite, run without a network.

Loaded with ``-p suite_plugin`` (``run_suite.py`` does this), before the suite's own
``conftest.py``, it changes the suite's ``utils`` module in memory (no file is edited):

* ``ServerPreset.load_all`` (which downloads every preset's model) does nothing;
* every server that would download its model (``--hf-repo``, ``--hf-file``,
  ``--model-url``) loads the local file named by ``SUITE_MODEL_FILE`` instead (run_suite.py
  sets it to the project's default model, Gemma 3 270M Q4_K_M), so llama-server and ours
  run the same tests on the same model;
* ``download_file`` (LoRA adapters, draft models, images) fails at once with a clear
  message instead of trying the network;
* ``wget``, which the suite imports and this machine lacks, is a stub.
"""

from __future__ import annotations

import os
import sys
import types


def _install() -> None:
    suite_dir = os.environ["SUITE_DIR"]
    model_file = os.environ["SUITE_MODEL_FILE"]
    if "wget" not in sys.modules:
        sys.modules["wget"] = types.ModuleType("wget")
    if suite_dir not in sys.path:
        sys.path.insert(0, suite_dir)
    import utils  # the suite's own module; its conftest.py imports the same one

    original_start = utils.ServerProcess.start

    def start(self, *args, **kwargs):
        if self.model_hf_repo or self.model_hf_file or self.model_url:
            self.model_hf_repo = None
            self.model_hf_file = None
            self.model_url = None
            self.model_file = model_file
        return original_start(self, *args, **kwargs)

    def download_file(url: str, output_file_path: str | None = None) -> str:
        raise RuntimeError(f"no network: the suite wanted to download {url}")

    utils.ServerProcess.start = start
    utils.ServerPreset.load_all = staticmethod(lambda: None)
    utils.download_file = download_file


_install()
