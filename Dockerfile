# The image of every fleetgate process: `python -m gateway` by default; docker-compose.yml also
# runs it as `python -m gateway migrate`, `python -m http_api`, `python -m gateway.broker_sync`
# and the simulator. It runs unprivileged; database rights come from each service's login.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# gateway/schema.sql is a link to ../schema.sql: the schema has to be copied beside the packages.
COPY pyproject.toml constraints.txt README.md schema.sql ./
COPY gateway ./gateway
COPY http_api ./http_api
RUN pip install -c constraints.txt . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin fleetgate

USER fleetgate
EXPOSE 8080 9464
CMD ["python", "-m", "gateway"]
