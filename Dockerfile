# The images of fleetgate, in stages. The default (last) stage is the product: `python -m
# gateway` by default; docker-compose.yml also runs it as `python -m gateway migrate`,
# `python -m http_api` and `python -m gateway.broker_sync`. `--target simulator` is the same
# installation with the simulated fleet (scripts/fleetgate_tools, `fleetgate-sim`), which the
# product's image does not ship. Both run unprivileged; database rights come from each
# service's login.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# gateway/schema.sql is a link to ../schema.sql: the schema has to be copied beside the packages.
COPY pyproject.toml constraints.txt README.md schema.sql ./
COPY gateway ./gateway
COPY http_api ./http_api
# Without scripts/ the installation has no fleetgate_tools: its console script would only fail.
RUN pip install -c constraints.txt . \
    && rm /usr/local/bin/fleetgate-sim \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin fleetgate

FROM base AS simulator
COPY scripts/fleetgate_tools ./scripts/fleetgate_tools
RUN pip install --no-deps -c constraints.txt .
USER fleetgate
CMD ["fleetgate-sim", "--help"]

FROM base AS product
USER fleetgate
EXPOSE 8080 9464
CMD ["python", "-m", "gateway"]
