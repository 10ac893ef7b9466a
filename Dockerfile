# pgsched as an image: the wheel built from this checkout, installed into a slim Python, run as
# an unprivileged user. `docker build -t pgsched .`; otel/deploy/compose.yaml builds it.
# The package's subpackages are the repository's top-level folders, linked from pgsched/
# (ADR 0023): the build stage copies the links and what they point at.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pgsched pgsched
COPY app app
COPY workers workers
COPY otel otel
COPY alembic alembic
COPY sql sql
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM python:3.11-slim
COPY --from=build /dist/ /tmp/dist/
RUN pip install --no-cache-dir /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && useradd --system --uid 10001 --home-dir /var/lib/pgsched --create-home pgsched
USER pgsched
WORKDIR /var/lib/pgsched
# The API listens on every interface of the container; publish the port to choose who reaches it.
ENV PGSCHED_HTTP_HOST=0.0.0.0 PGSCHED_HTTP_PORT=8000
EXPOSE 8000
ENTRYPOINT ["pgsched"]
CMD ["run"]
