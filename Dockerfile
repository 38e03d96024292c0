# The paystream worker image (for docker-compose users; the machines here run no Docker).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams streams
COPY agents agents
COPY models models
COPY schemas schemas
COPY bench bench
RUN pip install --no-cache-dir .
ENV PAYSTREAM_STATE_DIR=/var/lib/paystream
ENTRYPOINT ["paystream"]
CMD ["worker"]
