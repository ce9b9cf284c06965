"""The binding: the compiled cffi module, the library's lifetime and logging, and llama.cpp's handles
(model, vocabulary, context, LoRA adapters, samplers), each with one owner and a safe close."""
