# One image for the API and the worker; docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /srv

# Dependencies first, so code edits do not reinstall qiskit.
COPY pyproject.toml README.md ./
RUN mkdir -p qtasks app && touch qtasks/__init__.py app/__init__.py \
    && pip install ".[service]" && pip uninstall -y qtasks

COPY qtasks ./qtasks
COPY app ./app
COPY config.toml ./
RUN pip install --no-deps . && useradd --system --uid 10001 qtasks
USER qtasks

EXPOSE 8000
CMD ["uvicorn", "app.api:api", "--host", "0.0.0.0", "--port", "8000"]
