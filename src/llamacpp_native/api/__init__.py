"""The ``Llama`` facade and its llama-cpp-python / OpenAI shapes."""
