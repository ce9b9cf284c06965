"""The README's first command: the demo runs end to end, offline, on the default model."""

from __future__ import annotations

import pytest

from llamacpp_integrations.demo import main


def test_the_demo_shows_every_step_with_speeds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--max-tokens", "16"]) == 0
    output = capsys.readouterr().out
    for section in ("prompt | LlamaCpp", "bind_tools", "with_structured_output", "query engine"):
        assert f"=== {'LangChain' if section != 'query engine' else 'LlamaIndex'}" in output
        assert section in output
    assert "tool call: get_weather(" in output
    assert "structured output: Person(" in output
    assert output.count("tokens/s]") == 2
    assert "source (" in output
