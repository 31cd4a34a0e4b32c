# The onhand image: every `onhand` command (docker-compose.yml picks one per service).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the wheel is built from (pyproject.toml: src/onhand plus lua/, README as readme),
# installed with the versions the test suite passed with (.ci/constraints.txt).
WORKDIR /build
COPY pyproject.toml README.md ./
COPY .ci/constraints.txt .ci/
COPY lua/ lua/
COPY src/ src/
RUN pip install -c .ci/constraints.txt . \
    && rm -rf /build \
    && useradd --system --uid 10001 --user-group --home-dir /app --create-home \
        --shell /usr/sbin/nologin onhand

WORKDIR /app
USER 10001:10001
EXPOSE 8000
CMD ["onhand", "--help"]
