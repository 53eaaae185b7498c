# tokenstile gateway image: python:3.11-slim, runs as an unprivileged user, healthcheck on
# /healthz. Configure it with a YAML file mounted at $TOKENSTILE_CONFIG and secrets in the
# environment (see docs/deployment.md and docker-compose.yml).
#
#   docker build -t tokenstile .
#   docker run -p 8700:8700 -e OPENAI_API_KEY=sk-... tokenstile
#   docker run --rm -v ./tokenstile.yaml:/etc/tokenstile/tokenstile.yaml:ro \
#       -e TOKENSTILE_CONFIG=/etc/tokenstile/tokenstile.yaml tokenstile keys create -p web

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps -w /wheels .

FROM python:3.11-slim
# Optional extras to install; "otel" brings the OpenTelemetry SDK and OTLP exporter (traces
# stay off until OTEL_* variables ask for them), "bedrock" botocore for AWS Bedrock. Build
# with --build-arg EXTRAS= for none.
ARG EXTRAS=otel,bedrock
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TOKENSTILE_SPOOL_DIR=/var/lib/tokenstile/spool
RUN useradd --system --uid 10001 --user-group --create-home \
        --home-dir /var/lib/tokenstile --shell /usr/sbin/nologin tokenstile \
    && mkdir -p /etc/tokenstile /var/lib/tokenstile/spool \
    && chown tokenstile:tokenstile /var/lib/tokenstile/spool
COPY --from=build /wheels /wheels
RUN wheel="$(ls /wheels/tokenstile-*.whl)" \
    && pip install --no-cache-dir "${wheel}${EXTRAS:+[$EXTRAS]}" \
    && rm -rf /wheels
USER tokenstile
WORKDIR /var/lib/tokenstile
VOLUME ["/var/lib/tokenstile/spool"]
EXPOSE 8700
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8700/healthz', timeout=2)"]
ENTRYPOINT ["tokenstile"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8700", "--log-format", "json"]
